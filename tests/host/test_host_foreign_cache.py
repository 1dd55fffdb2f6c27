"""Other packs' caches for Wan on a MODEL that Sample Video samples: the real ComfyUI-TeaCache (welltop-cn) and
ComfyUI-MagCache (Zehong-Ma), loaded by the host's own custom-node loader, and a stand-in pack written here that
does what those two were seen to do. Both of them set their own function as the Wan model's forward_orig while each
model call runs (from a model_function_wrapper); that function takes one timestep per call (diffusion forcing gives
each frame its own: it stopped with "outer: Expected 1-D argument") and runs the blocks without the MODEL's
transformer_options (Patch SageAttention's override and this pack's TeaCache never saw a call). Sample Video
refuses diffusion forcing with them and names the node, TeaCache (SkyReels-V2) refuses to run beside them, and Sample
Video's report (under core KSampler, a log line) says when Patch SageAttention was bypassed; standard mode runs as on core's loader.

The packs are found as tests/comfy_host.find_pack says ($COMFYUI_TEACACHE_PATH / $COMFYUI_MAGCACHE_PATH, the host's
custom_nodes, ~); without them those tests are skipped. Both import comfy.ldm.lightricks.model.precompute_freqs_cis,
which ComfyUI 0.8+ no longer has (welltop-cn/ComfyUI-TeaCache issue 178, open), so on such a host neither imports;
the test then gives that module a stand-in of the name, which only their LTXV code would call (what users do by hand
to get them to load). The tiny DF model (width 256) stands for DF-1.3B."""
import os

import pytest

from comfy_host import REPO, describe_pack, find_pack, run_in_host
from helpers import write_tiny
from in_host import SETUP

PACKS = {"ComfyUI-TeaCache": "COMFYUI_TEACACHE_PATH", "ComfyUI-MagCache": "COMFYUI_MAGCACHE_PATH"}

CODE = r"""
import asyncio, logging, nodes as core
import comfy.ldm.lightricks.model as ltx
from skyreels_pack.nodes.sample import SampleVideo
from skyreels_pack.nodes.sage_patch import PatchSageAttention
from skyreels_pack.nodes.teacache import TeaCache
from skyreels_pack.sampling import teacache

teacache.SIZES[256] = "1.3B"
if not hasattr(ltx, "precompute_freqs_cis"):      # see the module's docstring
    def precompute_freqs_cis(*args, **kwargs):
        raise NotImplementedError("a test's stand-in: not in this ComfyUI")
    ltx.precompute_freqs_cis = precompute_freqs_cis
result = {{"loaded": asyncio.run(core.load_custom_node({pack!r}))}}
node = core.NODE_CLASS_MAPPINGS[{node!r}]()
def cache(m):
    return getattr(node, node.FUNCTION)(m, **{widgets!r})[0]
g = torch.Generator().manual_seed(0)
pos = [[torch.randn(1, 8, 4096, generator=g), {{}}]]
neg = [[torch.randn(1, 8, 4096, generator=g), {{}}]]
ARGS = dict(width=32, height=32, frames=9, seed=1, steps=10, cfg=3.0, shift=8.0, sampler="unipc", fps=24,
            mode="standard", base_num_frames=97, overlap_history=5, ar_step=0, causal_block_size=1,
            addnoise_condition=0)
DF = dict(mode="diffusion forcing", frames=37, ar_step=5, causal_block_size=5)   # two blocks of 5 latent frames

def sample(m, **kw):
    dm, calls = m.model.diffusion_model, [0, 0]
    hooks = [dm.register_forward_pre_hook(lambda *a: calls.__setitem__(0, calls[0] + 1)),
             dm.blocks[0].register_forward_pre_hook(lambda *a: calls.__setitem__(1, calls[1] + 1))]
    try:
        samples, report, _ = SampleVideo.execute(m, pos, neg, **nest_mode({{**ARGS, **kw}})).args[:3]
        return samples["samples"], [l for l in report.splitlines() if l.startswith("attention")], calls
    except ValueError as e:
        return None, str(e), calls
    finally:
        for h in hooks:
            h.remove()

ours = load("df_nofps.safetensors", "bf16")[0]
host = comfy.sd.load_diffusion_model(os.path.join({folder!r}, "df_nofps.safetensors"))
plain, _, _ = sample(ours)
a, lines, calls = sample(cache(ours))
b, _, _ = sample(cache(host))
result["standard"] = dict(vs_host=rel(a, b), vs_plain=rel(a, plain), lines=lines, calls=calls)
plain_df, _, _ = sample(ours, **DF)
result["df"] = sample(cache(ours), **DF)[1:]
result["df again"] = rel(sample(ours, **DF)[0], plain_df)       # the refused run left nothing behind
sage = PatchSageAttention.execute(ours, "reference").args[0]
result["sage after"] = sample(cache(sage))[1:]
result["sage before"] = sample(PatchSageAttention.execute(cache(ours), "reference").args[0])[1:]
result["sage alone"] = sample(sage)[1]
grab = []          # core KSampler has no report: Patch SageAttention logs that no call reached it
handler = logging.Handler()
handler.emit = lambda record: grab.append(record.getMessage())
logging.getLogger("skyreels_fp8").addHandler(handler)
core.common_ksampler(PatchSageAttention.execute(cache(ours), "reference").args[0], 1, 3, 3.0, "uni_pc", "simple",
                     pos, neg, {{"samples": torch.zeros(1, 16, 3, 4, 4)}})
result["ksampler sage log"] = [line for line in grab if "no call reached" in line]
grab.clear()
core.common_ksampler(sage, 1, 3, 3.0, "uni_pc", "simple", pos, neg, {{"samples": torch.zeros(1, 16, 3, 4, 4)}})
result["ksampler sage alone log"] = [line for line in grab if "no call reached" in line]
# TorchCompileModel applied before Patch SageAttention: the calls see torch.compile's module in place of the model
from skyreels_pack.nodes.adapters import foreign_forward
dm = ours.model.diffusion_model
dm.forward_orig = lambda *args, **kwargs: None
result["compiled"] = [foreign_forward.replacement(m) for m in (torch.compile(dm, backend="eager"), dm)]
del dm.forward_orig
dm._forward = lambda *args, **kwargs: None      # the host's other entry (forward -> _forward -> forward_orig)
result["_forward"] = foreign_forward.replacement(dm)
del dm._forward
result["our teacache after"] = sample(cache(TeaCache.execute(ours, 0.2, False).args[0]))[1]
result["our teacache before"] = sample(TeaCache.execute(cache(ours), 0.2, False).args[0])[1]
"""

STAND_IN = '''"""Stands for ComfyUI-TeaCache's and ComfyUI-MagCache's Wan caches as tests/host/test_host_foreign_cache.py saw them
work: while each model call runs, the Wan model's forward_orig is this pack's function, which takes one timestep
per call and runs the blocks without the MODEL's transformer_options. It skips nothing."""
from unittest import mock


def stand_in_forward(self, x, t, context, clip_fea=None, freqs=None, transformer_options={}, **kwargs):
    if t.ndim != 1:
        raise RuntimeError("stand-in forward: one timestep per call")
    return type(self).forward_orig(self, x, t, context, clip_fea, freqs, {}, **kwargs)


class StandInCache:
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "apply"
    CATEGORY = "testing"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",)}}

    def apply(self, model):
        m = model.clone()
        dm = m.get_model_object("diffusion_model")

        def wrapper(apply_model, args):
            with mock.patch.object(dm, "forward_orig", stand_in_forward.__get__(dm)):
                return apply_model(args["input"], args["timestep"], **args["c"])

        m.set_model_unet_function_wrapper(wrapper)
        return (m,)


NODE_CLASS_MAPPINGS = {"StandInCache": StandInCache}
'''


def check(r, pack, name):
    assert r["loaded"], r
    s = r["standard"]
    # standard mode: their node on Load FP8 SkyReels Model's MODEL (bf16) gives what it gives on core's Load Diffusion
    # Model of the same file, bit for bit on a CPU (the same values; a model without an fps embedding)
    assert s["vs_host"] == 0.0, s
    assert s["lines"] == ["attention: ComfyUI's (no Patch SageAttention)"], s
    who = f"({pack})"
    assert s["calls"][0] == 10, s
    assert r["df"][0].startswith("Sample Video: mode: diffusion forcing gives every latent frame its own timestep")
    assert who in r["df"][0] and "use TeaCache (SkyReels-V2)" in r["df"][0], r["df"]
    assert r["df"][1] == [0, 0], r["df"]          # refused at the first model call, before the model ran
    assert r["df again"] == 0.0
    assert r["sage alone"][0].startswith("attention: reference - 40 calls 8-bit"), r["sage alone"]
    for key in ("sage after", "sage before"):
        lines, calls = r[key]
        assert lines[0] in ("attention: reference - 0 calls 8-bit, 0 exact",
                            "attention: reference - 0 calls 8-bit (this pack's PyTorch SageAttention), 0 exact"), r
        assert lines[1].startswith("attention: no call reached Patch SageAttention: ") and who in lines[1], lines
        assert lines[1].count(who) == 1, lines      # named once, not once per model call
    log = r["ksampler sage log"]
    assert len(log) == 1 and log[0].startswith("attention: no call reached Patch SageAttention: ") and who in log[0], r
    assert r["ksampler sage alone log"] == [], r
    assert (r["_forward"] or "").startswith("<lambda> ("), r["_forward"]
    assert r["compiled"][0] == r["compiled"][1] and r["compiled"][0].startswith("<lambda> ("), r["compiled"]
    for key in ("our teacache after", "our teacache before"):
        assert r[key].startswith("TeaCache (SkyReels-V2): ") and who in r[key], r[key]
        assert r[key].endswith("use one, remove that node or TeaCache (SkyReels-V2)"), r[key]


@pytest.mark.parametrize("folder, node, widgets", [
    ("ComfyUI-TeaCache", "TeaCache", dict(model_type="wan2.1_t2v_1.3B", rel_l1_thresh=0.4, start_percent=0.0,
                                          end_percent=1.0, cache_device="cpu")),
    ("ComfyUI-MagCache", "MagCache", dict(model_type="wan2.1_t2v_1.3B", magcache_thresh=0.06, retention_ratio=0.2,
                                          magcache_K=2, start_step=0, end_step=-1)),
])
def test_third_party_cache_with_sample_video(host, tmp_path, folder, node, widgets):
    pack = find_pack(host, folder, PACKS[folder])
    if pack is None:
        pytest.skip(f"{folder} not found: set {PACKS[folder]}, or lay it out at ~/{folder}")
    print(describe_pack(pack))
    write_tiny(tmp_path / "df_nofps.safetensors", "DF", seed=2, has_fps=False)
    r = run_in_host(host, SETUP.format(repo=REPO, folder=str(tmp_path)) + CODE.format(
        pack=pack, node=node, widgets=widgets, folder=str(tmp_path)))
    print(r)
    check(r, os.path.basename(pack), node)
    if node == "MagCache":      # its skips follow the step count alone: 5 of the 10 calls ran the blocks
        assert r["standard"]["calls"] == [10, 5] and r["standard"]["vs_plain"] > 0, r["standard"]


def test_stand_in_cache_with_sample_video(host, tmp_path):
    """No third-party pack: the stand-in above (it stands for what the two packs do to the model, nothing more)."""
    pack = tmp_path / "StandInForwardCache"
    pack.mkdir()
    (pack / "__init__.py").write_text(STAND_IN)
    (pack / "nodes.py").write_text("")
    write_tiny(tmp_path / "df_nofps.safetensors", "DF", seed=2, has_fps=False)
    r = run_in_host(host, SETUP.format(repo=REPO, folder=str(tmp_path)) + CODE.format(
        pack=str(pack), node="StandInCache", widgets={}, folder=str(tmp_path)))
    print(r)
    check(r, "StandInForwardCache", "StandInCache")
    assert r["standard"]["vs_plain"] == 0.0 and r["standard"]["calls"] == [10, 10], r["standard"]
