"""bench/gpu_check.sh, the one command a lent GPU runs, as its CPU smoke run: every section completes on the real
host. Its figures are CPU ones and not asserted (docs/benchmarks.md holds the GPU's); a bench script that no longer
matches the nodes (a new output, a renamed widget) fails here rather than in the few minutes a GPU is lent."""
import os
import re
import subprocess
import sys

from comfy_host import REPO

SECTIONS = ["device", "Dynamic VRAM", "fp8 GEMM", "activation quantization", "attention backends", "noise drawn",
            "Sample Video", "TeaCache vs EasyCache"]


def test_gpu_check_runs_every_section_on_a_cpu(host, tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "COMFYUI_PATH": host, "OUT": str(tmp_path)}
    done = subprocess.run(["bash", os.path.join(REPO, "bench", "gpu_check.sh")], env=env, capture_output=True,
                          text=True, timeout=900)
    report = (tmp_path / "gpu_check.txt").read_text()
    assert done.returncode == 0 and "!!" not in report, done.stdout[-4000:] + done.stderr[-2000:]
    titles = re.findall(r"^== (.+) \(\d{4}-", report, flags=re.M)
    assert [next(s for s in SECTIONS if t.startswith(s)) for t in titles] == SECTIONS, titles
