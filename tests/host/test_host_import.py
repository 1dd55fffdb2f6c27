"""Loading the pack the way ComfyUI does must not pull in sageattention/triton nor touch CUDA."""
from comfy_host import REPO, run_in_host

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
