import pytest
from comfy_host import describe, find_host
from helpers import write_tiny

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
