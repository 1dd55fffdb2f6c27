"""Find a real ComfyUI host and run code inside it (a fresh Python process, CPU only).

Search order (first that looks like ComfyUI wins):
  1. $COMFYUI_PATH
  2. the ComfyUI folder this pack sits in, when cloned as ComfyUI/custom_nodes/<pack>
  3. ~/ComfyUI (the documented default)
A $COMFYUI_PATH that is set but is not a ComfyUI folder is an error, not a silent skip.
"""
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from generate_video_fp8 import DEFAULT_HOST as DEFAULT, find_host, is_host  # noqa: E402,F401  (one search, shared)


def describe(host):
    rev = ""
    rev_file = os.path.join(host, ".comfyui-host-rev")
    if os.path.exists(rev_file):
        rev = open(rev_file).read().strip()[:10]
    elif os.path.isdir(os.path.join(host, ".git")):
        rev = subprocess.run(["git", "-C", host, "rev-parse", "--short=10", "HEAD"], capture_output=True,
                             text=True).stdout.strip()
    return f"ComfyUI {host_version(host)} {rev}".strip()


def host_version(host):
    """comfyui_version.py's __version__, read as text (the file is one assignment; running it is not needed)."""
    with open(os.path.join(host, "comfyui_version.py"), encoding="utf-8") as f:
        found = re.search(r"""^__version__\s*=\s*["']([^"']+)["']""", f.read(), re.M)
    return found.group(1) if found else "?"


def host_release(host):
    """The host's version as (major, minor, patch)."""
    return tuple(int(n) for n in re.findall(r"\d+", host_version(host))[:3])


PRELUDE = """
import sys, json
sys.path[:0] = [{host!r}, {repo!r}]
sys.path.append({repo!r} + "/tests")
import comfy.cli_args
comfy.cli_args.args.cpu = True
"""


# Import this pack as ComfyUI does: a package (named skyreels_pack here) whose submodules use relative imports.
IMPORT_PACK = """
import importlib.util, os
_spec = importlib.util.spec_from_file_location("skyreels_pack", os.path.join({repo!r}, "__init__.py"),
                                               submodule_search_locations=[{repo!r}])
sys.modules["skyreels_pack"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sys.modules["skyreels_pack"])
"""


def import_pack():
    """IMPORT_PACK in this process: the pack as the package skyreels_pack."""
    spec = importlib.util.spec_from_file_location("skyreels_pack", os.path.join(REPO, "__init__.py"),
                                                  submodule_search_locations=[REPO])
    sys.modules["skyreels_pack"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sys.modules["skyreels_pack"])


def copy_pack(folder):
    """The pack's files as a clone of this checkout would hold them (the tracked files and the untracked ones git
    does not ignore: not a developer's venv, caches or outputs), copied into `folder`."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True,
                            check=True).stdout
    for name in filter(None, listed.decode().split("\0")):     # names may hold spaces (subgraphs/)
        if os.path.isfile(os.path.join(REPO, name)):
            os.makedirs(os.path.join(folder, os.path.dirname(name)), exist_ok=True)
            shutil.copy2(os.path.join(REPO, name), os.path.join(folder, name))


def comfy_cli():
    """comfy-cli's `comfy` ($COMFY_CLI, else on PATH); the test is skipped without it. It is not a dependency of the
    pack or of ComfyUI: .ci/run installs it in a venv of its own and names it in $COMFY_CLI."""
    found = os.environ.get("COMFY_CLI") or shutil.which("comfy")
    if not found:
        import pytest
        pytest.skip("needs comfy-cli (`pip install comfy-cli` in a venv of its own, then COMFY_CLI=<its bin/comfy>; "
                    ".ci/run does this)")
    return found


def run_in_host(host, code, timeout=600):
    """Run `code` in a new process with the host importable and forced to CPU. The code sets `result`
    (anything JSON can hold); it is returned. A failure raises with the process's output."""
    script = PRELUDE.format(host=host, repo=REPO) + code + "\nprint('@@RESULT@@' + json.dumps(result))\n"
    proc = subprocess.run([sys.executable, "-c", script], cwd=host, capture_output=True, text=True, timeout=timeout)
    marker = [l for l in proc.stdout.splitlines() if l.startswith("@@RESULT@@")]
    if proc.returncode != 0 or not marker:
        raise AssertionError(f"host process failed (rc {proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    return json.loads(marker[-1][len("@@RESULT@@"):])


def find_gguf_pack(host):
    """ComfyUI-GGUF's folder: $COMFYUI_GGUF_PATH, else the host's custom_nodes/ComfyUI-GGUF, else ~/ComfyUI-GGUF;
    None if none holds its loader."""
    for path in (os.environ.get("COMFYUI_GGUF_PATH"), os.path.join(host, "custom_nodes", "ComfyUI-GGUF"),
                 os.path.join(os.path.expanduser("~"), "ComfyUI-GGUF")):
        if path and os.path.isfile(os.path.join(path, "loader.py")) and os.path.isfile(os.path.join(path, "nodes.py")):
            return os.path.abspath(path)
    return None


def describe_pack(path):
    """A laid-out pack's folder and the commit it was laid out from (its .git-rev file), where known."""
    rev_file = os.path.join(path, ".git-rev")
    rev = open(rev_file).read().strip()[:10] if os.path.exists(rev_file) else "(commit unknown)"
    return f"{path} {rev}"


def find_pack(host, folder, env, marker="nodes.py"):
    """A third-party pack's folder: $`env`, else the host's custom_nodes/`folder`, else ~/`folder`; None if none holds
    its __init__.py and `marker`."""
    for path in (os.environ.get(env), os.path.join(host, "custom_nodes", folder),
                 os.path.join(os.path.expanduser("~"), folder)):
        if path and all(os.path.isfile(os.path.join(path, f)) for f in ("__init__.py", marker)):
            return os.path.abspath(path)
    return None
