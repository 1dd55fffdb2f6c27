"""Install the pack with the real ComfyUI-Manager (the `comfyui_manager` the host pins in manager_requirements.txt)
into a fresh copy of the host: its cm-cli clones the pack from a git URL, as Manager's "Install via Git URL" and its
nightly installs do (core.gitclone_install), and pip-installs requirements.txt in the host's Python. Then the host is
started as a user starts it with the Manager on (`--enable-manager`). The host's own start-up log must show the pack
imported, with no error, and the Manager must list it as installed; the pack's import time (as the host reports it)
is printed for the record (speed is measured, not asserted: see docs/benchmarks.md).
The Comfy Registry's route: its package, as comfy-cli makes it, unpacked as the Manager does (the download needs the
internet, none here); tests/test_registry.py runs the registry's publish check."""
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from generate_video_fp8 import PACK, HostServer

from comfy_host import comfy_cli, copy_pack

TOP_LEVEL_SKIP = {"models", "output", "input", "temp", "user", "custom_nodes"}


def skip(folder, names):
    """A fresh host: the code, without the user folders of the laid-out one (top level only: comfy/ldm/models stays)."""
    top = os.path.basename(folder) == "ComfyUI" or os.path.exists(os.path.join(folder, "main.py"))
    return [n for n in names if n == "__pycache__" or n.endswith(".db") or (top and n in TOP_LEVEL_SKIP)]


def pack_repo(folder):
    """A git repository of the pack's files as a clone has them (this checkout's uncommitted changes included)."""
    copy_pack(folder)
    git = ["git", "-C", str(folder), "-c", "user.name=test", "-c", "user.email=test@localhost"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "the pack"]):
        subprocess.run(git + args, check=True, capture_output=True)


def needs_manager():
    if not (importlib.util.find_spec("comfyui_manager") and importlib.util.find_spec("cm_cli")):
        pytest.skip("needs ComfyUI-Manager: pip install -r ComfyUI/manager_requirements.txt (.ci/run does)")


def fresh_host(host, tmp_path):
    """A copy of the host as a fresh clone has it, with the Manager set to offline: this machine has no internet,
    and offline mode keeps the Manager from fetching its lists at start-up."""
    fresh = tmp_path / "ComfyUI"
    shutil.copytree(host, fresh, ignore=skip)
    os.makedirs(fresh / "custom_nodes")         # skip() left the host's out
    os.makedirs(fresh / "user" / "__manager")
    (fresh / "user" / "__manager" / "config.ini").write_text("[default]\nnetwork_mode = offline\n")
    return fresh


def start_with_manager(fresh, folder):
    """Start the copy (its own base folder) with the Manager on; the pack in custom_nodes/<folder> must load with no
    error. Returns what the Manager lists as installed. Prints the pack's import time as the host reports it."""
    server = HostServer(str(fresh), str(fresh), ["--cpu", "--enable-manager"], install_pack=False).start()
    try:
        info = server.get("/object_info")
        blueprints = [v["name"] for v in server.get("/global_subgraphs").values()
                      if v["info"]["node_pack"] == f"custom_nodes.{folder}"]
        installed = server.get("/v2/customnode/installed")
        log = server.read_log()
    finally:
        server.stop()
    assert "[START] ComfyUI-Manager" in log, log[-3000:]
    assert "SkyReelsSampleVideo" in info
    assert len(blueprints) == 3, blueprints     # subgraphs/ is in the package, where ComfyUI looks for them
    line = next((l for l in log.splitlines() if l.rstrip().endswith(os.path.join("custom_nodes", folder))), None)
    assert line is not None, log[-3000:]
    assert "IMPORT FAILED" not in line and "Traceback" not in log, log[-3000:]
    seconds = float(re.search(r"([0-9.]+) seconds", line).group(1))
    print(f"\nhost-reported import time of the pack: {seconds:.1f} s   (goal <= 0.3 s)")
    return installed


def test_comfyui_manager_install_starts_clean(host, tmp_path):
    needs_manager()
    fresh = fresh_host(host, tmp_path)
    pack_repo(tmp_path / "remote" / PACK)
    url = "file://localhost" + (tmp_path / "remote" / PACK).as_posix()   # the Manager takes URLs with a host part
    # COLUMNS: its console (rich) wraps at 80 columns, which broke the pip command below at a place that varies
    # with the length of the Python's path (seen with a Python 3.13 venv in /tmp)
    install = subprocess.run([sys.executable, "-m", "cm_cli", "install", url], cwd=fresh, capture_output=True,
                             text=True, env={**os.environ, "COMFYUI_PATH": str(fresh), "COLUMNS": "1000"},
                             timeout=600)
    # Its output without GitPython's progress bars
    said = "\n".join(l for l in (install.stdout + install.stderr).replace("\r", "\n").splitlines() if "it/s]" not in l)
    assert install.returncode == 0 and "[INSTALLED]" in said, said[-3000:]
    assert "'install', 'safetensors>=0.4.2'" in said, said[-3000:]     # it ran pip on our requirements.txt
    assert "torch" not in open(fresh / "custom_nodes" / PACK / "requirements.txt").read().replace(
        "# torch comes with ComfyUI", "")
    installed = start_with_manager(fresh, PACK)
    assert installed.get(PACK, {}).get("enabled") is True, installed


def test_registry_package_installs_and_starts_clean(host, tmp_path):
    """What `comfy node publish` uploads to the Comfy Registry (comfy-cli's `comfy node pack`: the git-tracked
    files), unpacked as the Manager's registry install does (its own extract function, into custom_nodes/<the
    registry id, pyproject's name>, with its .tracking list). The download itself needs the registry (the
    internet): not here. The Manager must then list the pack under our registry id and version."""
    needs_manager()
    cli = comfy_cli()
    src = tmp_path / "src" / PACK
    pack_repo(src)
    packed = subprocess.run([cli, "--skip-prompt", "node", "pack"], cwd=src, capture_output=True, text=True,
                            timeout=600)
    assert packed.returncode == 0 and (src / "node.zip").is_file(), (packed.stdout + packed.stderr)[-3000:]
    import toml     # the Manager's own TOML reader (its requirement), on any Python the pack supports
    project = toml.load(src / "pyproject.toml")["project"]
    node_id = project["name"]
    fresh = fresh_host(host, tmp_path)
    target = fresh / "custom_nodes" / node_id
    unpack = ("import sys; sys.path.insert(0, sys.argv[1])\n"
              "from comfyui_manager.common.manager_util import extract_package_as_zip\n"
              "names = extract_package_as_zip(sys.argv[2], sys.argv[3])\n"
              "open(sys.argv[3] + '/.tracking', 'w', encoding='utf-8').write('\\n'.join(names))\n")
    os.makedirs(target)
    subprocess.run([sys.executable, "-c", unpack, str(fresh), str(src / "node.zip"), str(target)], check=True,
                   cwd=fresh, capture_output=True)
    installed = start_with_manager(fresh, node_id)
    assert installed.get(node_id, {}).get("cnr_id") == node_id, installed
    assert installed[node_id].get("ver") == project["version"] and installed[node_id]["enabled"], installed
    # The Manager's workflow-metadata.js copies these two into each node a user adds; the shipped workflows carry them
    with open(os.path.join(src, "workflows", "skyreels_t2v_fp8_sage.json"), encoding="utf-8") as f:
        ours = [n["properties"] for n in json.load(f)["nodes"] if n["type"].startswith("SkyReels")]
    assert {(p["cnr_id"], p["ver"]) for p in ours} == {(installed[node_id]["cnr_id"], installed[node_id]["ver"])}
