import os
import subprocess
import sys

import pytest
import torch
from comfy_host import describe, describe_pack, find_gguf_pack, find_host
from helpers import REPO, e4m3_neighbours, linear_case, write_tiny

from quant.fp8 import quantize_weight

_HOST = find_host()


def pytest_report_header(config):
    if _HOST:
        return f"ComfyUI host: {describe(_HOST)} at {_HOST}"
    return "host tests: SKIPPED — no ComfyUI host found (set COMFYUI_PATH)"


def pytest_terminal_summary(terminalreporter):
    # The verdict CI logs are read for: did the tests that need the real host run?
    stats = terminalreporter.stats
    ran = {k: sum("tests/host/" in getattr(r, "nodeid", "") for r in stats.get(k, []))
           for k in ("passed", "failed", "error")}
    if not _HOST:
        line = "host tests: SKIPPED — no ComfyUI host found (set COMFYUI_PATH)"
    elif sum(ran.values()) == 0:
        line = f"host tests: NOT RUN although a host was found at {_HOST} (deselected?)"
    else:
        line = (f"host tests: ran against {describe(_HOST)} ({ran['passed']} passed, "
                f"{ran['failed'] + ran['error']} failed)")
    terminalreporter.write_line(line)
    if _HOST:
        terminalreporter.write_line(_gguf_line(stats))


def _gguf_line(stats):
    """Did the tests with the real ComfyUI-GGUF run (tests/host/test_host_gguf.py)?"""
    counts = {k: [r for r in stats.get(k, []) if "test_host_gguf" in getattr(r, "nodeid", "")]
              for k in ("passed", "failed", "error", "skipped")}
    if counts["skipped"] and not counts["passed"]:
        reason = counts["skipped"][0].longrepr[-1] if isinstance(counts["skipped"][0].longrepr, tuple) else ""
        return f"ComfyUI-GGUF tests: SKIPPED — {reason.removeprefix('Skipped: ')}"
    ran = len(counts["passed"]) + len(counts["failed"]) + len(counts["error"])
    if not ran:
        return "ComfyUI-GGUF tests: NOT RUN (deselected?)"
    pack = find_gguf_pack(_HOST)
    return (f"ComfyUI-GGUF tests: ran against {describe_pack(pack) if pack else 'no ComfyUI-GGUF found'} "
            f"({len(counts['passed'])} passed, {len(counts['failed']) + len(counts['error'])} failed)")


@pytest.fixture(scope="session")
def host():
    if not _HOST:
        pytest.skip("no ComfyUI host found (set COMFYUI_PATH)")
    return _HOST


@pytest.fixture
def tiny_t2v(tmp_path):
    path = tmp_path / "tiny_t2v.safetensors"
    write_tiny(path, "T2V")
    return path


@pytest.fixture(scope="session")
def act_quant_kernel(tmp_path_factory):
    """(cases, outputs) of our Triton activation-quantization kernel run under the interpreter, in a subprocess
    (tests/act_quant_outputs.py): per-row and per-tensor quantizations, and fp8_linear with the kernel."""
    pytest.importorskip("triton", reason="the kernel comparisons need triton (sageattention brings it)")
    g = torch.Generator().manual_seed(5)
    zero_rows = torch.randn(37, 96, generator=g) * torch.logspace(-6, 3, 37)[:, None]
    zero_rows[[0, 9]] = 0
    zero_rows[4, :5] = -0.0
    wide = torch.randn(40, 200, generator=g).bfloat16()
    cases = {
        "37x96_bf16_zero_rows": dict(x=zero_rows.bfloat16(), scale=None, max_tile=16384),
        "37x96_bf16_tiles_of_64": dict(x=zero_rows.bfloat16(), scale=None, max_tile=64),  # rows read in 2 tiles
        "64x256_fp16": dict(x=torch.randn(64, 256, generator=g).half() * 30, scale=None, max_tile=16384),
        "33x80_fp32_tiny": dict(x=torch.randn(33, 80, generator=g) * 1e-30, scale=None, max_tile=32),
        "40x128_row_stride_200": dict(x=wide[:, 8:136], scale=None, max_tile=16384),
        "64x256_per_tensor": dict(x=torch.randn(64, 256, generator=g).bfloat16(), scale=torch.tensor([[0.004]]),
                                  max_tile=16384),
        "rounding_sweep": dict(x=e4m3_neighbours(), scale=torch.ones(1, 1), max_tile=16384),
    }
    x, w, b = linear_case()
    for granularity in ("tensor", "channel"):
        q, scale = quantize_weight(w, granularity=granularity)
        cases[f"linear_{granularity}"] = dict(x=x, qweight=q, weight_scale=scale, bias=b)
    folder = tmp_path_factory.mktemp("act_quant")
    torch.save(cases, folder / "cases.pt")
    subprocess.run([sys.executable, os.path.join(REPO, "tests", "act_quant_outputs.py"), str(folder / "cases.pt"),
                    str(folder / "out.pt")], check=True, timeout=300)
    return cases, torch.load(folder / "out.pt")
