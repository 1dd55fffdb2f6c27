"""Install the pack with the real ComfyUI-Manager (the `comfyui_manager` the host pins in manager_requirements.txt)
into a fresh copy of the host: its cm-cli clones the pack from a git URL, as Manager's "Install via Git URL" and its
nightly installs do (core.gitclone_install), and pip-installs requirements.txt in the host's Python. Then the host is
started as a user starts it with the Manager on (`--enable-manager`). The host's own start-up log must show the pack
imported, with no error, and the Manager must list it as installed; the pack's import time (as the host reports it)
is printed for the record (speed is measured, not asserted: see docs/benchmarks.md).
The Comfy Registry's zip route needs the internet (none here); tests/test_registry.py runs its publish check."""
import importlib.util
import os
import re
import shutil
import subprocess
import sys

import pytest

from generate_video_fp8 import PACK, HostServer

from comfy_host import REPO

TOP_LEVEL_SKIP = {"models", "output", "input", "temp", "user", "custom_nodes"}


def skip(folder, names):
    """A fresh host: the code, without the user folders of the laid-out one (top level only: comfy/ldm/models stays)."""
    top = os.path.basename(folder) == "ComfyUI" or os.path.exists(os.path.join(folder, "main.py"))
    return [n for n in names if n == "__pycache__" or n.endswith(".db") or (top and n in TOP_LEVEL_SKIP)]


def pack_files():
    """What a clone of the repository holds (tracked files), not this checkout's venv or caches."""
    out = subprocess.run(["git", "-C", REPO, "ls-files"], capture_output=True, text=True, check=True).stdout
    return out.splitlines()      # names may hold spaces (the blueprints in subgraphs/)


def pack_repo(folder):
    """A git repository of the pack's files as a clone has them (this checkout's uncommitted changes included)."""
    for name in pack_files():
        os.makedirs(folder / os.path.dirname(name), exist_ok=True)
        shutil.copy2(os.path.join(REPO, name), folder / name)
    git = ["git", "-C", str(folder), "-c", "user.name=test", "-c", "user.email=test@localhost"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "the pack"]):
        subprocess.run(git + args, check=True, capture_output=True)


def test_comfyui_manager_install_starts_clean(host, tmp_path):
    if not (importlib.util.find_spec("comfyui_manager") and importlib.util.find_spec("cm_cli")):
        pytest.skip("needs ComfyUI-Manager: pip install -r ComfyUI/manager_requirements.txt (.ci/run does)")
    fresh = tmp_path / "ComfyUI"
    shutil.copytree(host, fresh, ignore=skip)
    pack_repo(tmp_path / "remote" / PACK)
    # This machine has no internet: the Manager's offline mode keeps it from fetching its lists at start-up.
    os.makedirs(fresh / "custom_nodes")         # as a fresh clone of ComfyUI has it (skip() left the host's out)
    os.makedirs(fresh / "user" / "__manager")
    (fresh / "user" / "__manager" / "config.ini").write_text("[default]\nnetwork_mode = offline\n")
    url = "file://localhost" + (tmp_path / "remote" / PACK).as_posix()   # the Manager takes URLs with a host part
    install = subprocess.run([sys.executable, "-m", "cm_cli", "install", url], cwd=fresh, capture_output=True,
                             text=True, env={**os.environ, "COMFYUI_PATH": str(fresh)}, timeout=600)
    # Its output without GitPython's progress bars
    said = "\n".join(l for l in (install.stdout + install.stderr).replace("\r", "\n").splitlines() if "it/s]" not in l)
    assert install.returncode == 0 and "[INSTALLED]" in said, said[-3000:]
    assert "'install', 'safetensors>=0.4.2'" in said, said[-3000:]     # it ran pip on our requirements.txt
    assert "torch" not in open(fresh / "custom_nodes" / PACK / "requirements.txt").read().replace(
        "# torch comes with ComfyUI", "")

    # The copy is its own base folder: its custom_nodes/ holds the pack as the Manager left it.
    server = HostServer(str(fresh), str(fresh), ["--cpu", "--enable-manager"], install_pack=False).start()
    try:
        info = server.get("/object_info")
        blueprints = [v["name"] for v in server.get("/global_subgraphs").values()
                      if v["info"]["node_pack"] == f"custom_nodes.{PACK}"]
        installed = server.get("/v2/customnode/installed")
        log = server.read_log()
    finally:
        server.stop()
    assert "[START] ComfyUI-Manager" in log, log[-3000:]
    assert installed.get(PACK, {}).get("enabled") is True, installed
    assert "SkyReelsSampleVideo" in info
    assert len(blueprints) == 3, blueprints     # subgraphs/ is in the clone, where ComfyUI looks for them
    line = next((l for l in log.splitlines() if l.rstrip().endswith(os.path.join("custom_nodes", PACK))), None)
    assert line is not None, log[-3000:]
    assert "IMPORT FAILED" not in line and "Traceback" not in log, log[-3000:]
    seconds = float(re.search(r"([0-9.]+) seconds", line).group(1))
    print(f"\nhost-reported import time of the pack: {seconds:.1f} s   (goal <= 0.3 s)")
