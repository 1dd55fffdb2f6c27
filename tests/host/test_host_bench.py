"""bench/gpu_check.sh, the one command a lent GPU runs, as its CPU smoke run: every section completes on the real
host. Its figures are CPU ones and not asserted (docs/benchmarks.md holds the GPU's); a bench script that no longer
matches the nodes (a new output, a renamed widget) fails here rather than in the few minutes a GPU is lent."""
import os
import re
import subprocess
import sys

import pytest
import torch
from comfy_host import REPO

SECTIONS = ["device", "Dynamic VRAM", "fp8 GEMM", "activation quantization", "attention backends", "noise drawn",
            "Sample Video (", "Sample Video, the 14B widths", "TeaCache vs EasyCache"]


def titles_of(report):
    return re.findall(r"^== (.+) \(\d{4}-", report, flags=re.M)


def test_gpu_check_runs_every_section_on_a_cpu(host, tmp_path):
    if torch.cuda.is_available():     # the script would run its full H100/H200 benchmark (the device tool's job)
        pytest.skip("gpu_check.sh on a GPU is the full benchmark, run by hand: see docs/benchmarks.md")
    env = {**os.environ, "PYTHON": sys.executable, "COMFYUI_PATH": host, "OUT": str(tmp_path),
           "GPU_CHECK_OWN_PACKAGES": "1"}
    done = subprocess.run(["bash", os.path.join(REPO, "bench", "gpu_check.sh")], env=env, capture_output=True,
                          text=True, timeout=1800)    # past the sections' own limits
    report = (tmp_path / "gpu_check.txt").read_text()
    assert done.returncode == 0 and "!!" not in report, done.stdout[-4000:] + done.stderr[-2000:]
    titles = titles_of(report)
    assert [next(s for s in SECTIONS if t.startswith(s)) for t in titles] == SECTIONS, titles


@pytest.mark.parametrize("only, expected", [
    # the sageattention 2.x run: what its kernels change (attention, the steps) and the Linears', in the full order
    ("sage2", ["device", "fp8 GEMM", "activation quantization", "attention backends", "Sample Video (",
               "Sample Video, the 14B widths"]),
    ("attention backends", ["device", "attention backends"]),
    ("noise|TeaCache", ["device", "noise drawn", "TeaCache vs EasyCache"]),
])
def test_gpu_check_only_runs_the_sections_asked_for(tmp_path, only, expected):
    env = {**os.environ, "OUT": str(tmp_path), "GPU_CHECK_ONLY": only, "GPU_CHECK_LIST": "1",
           "GPU_CHECK_OWN_PACKAGES": "1"}
    done = subprocess.run(["bash", os.path.join(REPO, "bench", "gpu_check.sh")], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    titles = titles_of((tmp_path / "gpu_check.txt").read_text())
    assert [next(s for s in SECTIONS if t.startswith(s)) for t in titles] == expected, titles
