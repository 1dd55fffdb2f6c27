"""Loading the pack the way ComfyUI does must not pull in sageattention/triton nor touch CUDA, and an older ComfyUI
is told which version the pack needs."""
import os
import re
import types

import pytest
from generate_video_fp8 import PACK, BadInput, check_pack_loaded, install_copy

from comfy_host import REPO, host_release, host_version, run_in_host

CODE = r"""
import asyncio, builtins, time, torch, nodes
# The host may have imported sageattention itself already: record every import statement the pack runs instead.
asked, real_import = set(), builtins.__import__
def recording_import(name, *args, **kwargs):
    asked.add(name)
    return real_import(name, *args, **kwargs)
builtins.__import__ = recording_import
t = time.perf_counter()
try:
    ok = asyncio.run(nodes.load_custom_node({repo!r}))
finally:
    builtins.__import__ = real_import
seconds = time.perf_counter() - t
result = dict(ok=ok, seconds=seconds, cuda=torch.cuda.is_initialized(),
              heavy=sorted(m for m in asked if m.split(".")[0] in ("sageattention", "triton", "ray")),
              nodes=sorted(k for k in nodes.NODE_CLASS_MAPPINGS if k.startswith("SkyReels")),
              names=sorted(nodes.NODE_DISPLAY_NAME_MAPPINGS[k] for k in nodes.NODE_CLASS_MAPPINGS
                           if k.startswith("SkyReels")))
"""


def test_pack_loads_without_sageattention_triton_or_cuda(host):
    r = run_in_host(host, CODE.format(repo=REPO))
    assert r["ok"] and not r["cuda"] and r["heavy"] == [], r
    assert r["nodes"] == ["SkyReelsConvertToFP8", "SkyReelsFP8ModelLoader", "SkyReelsParallelConfig",
                          "SkyReelsPatchSageAttention", "SkyReelsSampleVideo", "SkyReelsTeaCache"]
    assert r["names"] == ["Convert to FP8", "Load FP8 SkyReels Model", "Parallel Config", "Patch SageAttention",
                          "Sample Video", "TeaCache (SkyReels-V2)"]


OLD_HOST = r"""
import asyncio, logging, comfyui_version, nodes
comfyui_version.__version__ = {version!r}    # all the pack reads of the host's version
warnings = []
handler = logging.Handler(logging.WARNING)
handler.emit = lambda record: warnings.append(record.getMessage())
logging.getLogger().addHandler(handler)
ok = asyncio.run(nodes.load_custom_node({pack!r}))
result = dict(ok=ok, warnings=warnings, nodes=[k for k in nodes.NODE_CLASS_MAPPINGS if k.startswith("SkyReels")])
"""


def oldest_comfyui():
    with open(os.path.join(REPO, "__init__.py"), encoding="utf-8") as f:
        return re.search(r'^OLDEST_COMFYUI = "([\d.]+)"', f.read(), re.M).group(1)


def test_an_older_comfyui_is_told_which_version_the_pack_needs(host, tmp_path):
    """Releases before the oldest tested one fail inside the nodes, with errors such as "'Linear' object has no
    attribute '_orig_shape'" (ComfyUI 0.10 to 0.22; README, "Which ComfyUI"); the pack says what to do instead, in
    ComfyUI's log and through generate_video_fp8.py."""
    pack = str(tmp_path / PACK)
    install_copy(pack)        # as ComfyUI-Manager lays it out: the folder's name is in the host's messages
    r = run_in_host(host, OLD_HOST.format(version="0.22.0", pack=pack))
    need = (f"SkyReels-V2 FP8 needs ComfyUI {oldest_comfyui()} or newer, and this ComfyUI is 0.22.0: update ComfyUI "
            "(ComfyUI-Manager: Update ComfyUI; Windows portable: update\\update_comfyui.bat), then restart it")
    said = [w for w in r["warnings"] if "Cannot import" in w]
    assert not r["ok"] and r["nodes"] == [], r
    assert said == [f"Cannot import {pack} module for custom nodes: {need}"], r["warnings"]
    started = types.SimpleNamespace(host=host, read_log=lambda: "\n".join(r["warnings"]))
    with pytest.raises(BadInput) as e:
        check_pack_loaded(started, {"KSampler": {}})
    assert str(e.value) == f"ComfyUI ({host}) did not load this pack: {need}"
    r = run_in_host(host, OLD_HOST.format(version=oldest_comfyui(), pack=pack))
    assert r["ok"] and len(r["nodes"]) == 6 and not [w for w in r["warnings"] if "Cannot import" in w], r


def test_comfyui_versions_compare_as_numbers(monkeypatch):
    """0.4.0 is older than 0.30.0 and 0.100.0 newer (compared as text, "4" > "30" and "100" < "30")."""
    import importlib.util
    import sys
    oldest = tuple(int(n) for n in oldest_comfyui().split("."))
    for release in ((0, 4, 0), (oldest[0], oldest[1] - 1, 9), oldest, (oldest[0], oldest[1] + 70, 0), (1, 0, 0)):
        version = ".".join(map(str, release))
        monkeypatch.setitem(sys.modules, "comfyui_version", types.SimpleNamespace(__version__=version))
        spec = importlib.util.spec_from_file_location("skyreels_entry_point", os.path.join(REPO, "__init__.py"))
        try:
            spec.loader.exec_module(importlib.util.module_from_spec(spec))
            refused = False
        except ImportError as e:
            refused = f"this ComfyUI is {version}:" in str(e)
        assert refused == (release < oldest), version


def test_the_registry_is_told_the_same_oldest_comfyui(host):
    """pyproject.toml's requires-comfyui, as the host's own parser reads it (the registry and ComfyUI-Manager read the
    same field), is the version the pack checks, and the host these tests pass on is not older."""
    code = f"from comfy_config import config_parser\nconfig = config_parser.extract_node_configuration({REPO!r})\n"
    declared = run_in_host(host, code + "result = config.project.supported_comfyui_version")
    assert declared == f">={oldest_comfyui()}"
    # The parser drops every classifier of a kind when one is misspelt.
    project = "config.project"
    platforms = run_in_host(host, code + f"result = [{project}.supported_os, {project}.supported_accelerators]")
    assert platforms == [["Microsoft :: Windows", "POSIX :: Linux"], ["GPU :: NVIDIA CUDA"]]
    assert host_release(host) >= tuple(int(n) for n in oldest_comfyui().split(".")), host_version(host)
