import os
import sys

import pytest
import safetensors.torch
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from quant import tiny  # noqa: E402
from tests.host import describe, find_host  # noqa: E402

_HOST = find_host()


def pytest_report_header(config):
    if _HOST:
        return f"host tests: ran against {describe(_HOST)} at {_HOST}"
    return "host tests: SKIPPED — no ComfyUI host found (set COMFYUI_PATH)"


def pytest_terminal_summary(terminalreporter):
    # Said again at the end, where CI logs are read.
    line = pytest_report_header(None)
    host_tests = [r for k in ("passed", "failed", "error") for r in terminalreporter.stats.get(k, [])
                  if "tests/host/" in getattr(r, "nodeid", "")]
    if _HOST and not host_tests:
        line = "host tests: a host was found but no host test ran (deselected?)"
    terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def host():
    if not _HOST:
        pytest.skip("no ComfyUI host found (set COMFYUI_PATH)")
    return _HOST


def write_tiny(path, variant="T2V", seed=0, dtype=torch.bfloat16, prefix="", **dims):
    sd = tiny.state_dict(tiny.info(variant, **dims), seed=seed, dtype=dtype)
    safetensors.torch.save_file({prefix + k: v for k, v in sd.items()}, str(path))
    return sd


@pytest.fixture
def tiny_t2v(tmp_path):
    path = tmp_path / "tiny_t2v.safetensors"
    write_tiny(path, "T2V")
    return path
