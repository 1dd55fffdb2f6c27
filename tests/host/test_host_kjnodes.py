"""kijai's ComfyUI-KJNodes' Wan model patches on this pack's MODEL, under core KSampler and Sample Video, loaded by the
host's own custom-node loader; and a stand-in pack written here for the one behaviour that needed a fix.

KJNodes is found as tests/comfy_host.find_pack says ($COMFYUI_KJNODES_PATH, the host's custom_nodes, ~); without it
those tests are skipped. Its Patch Sage Attention KJ imports `sageattention` when it is applied, whose kernels take CUDA
tensors only ("Input tensors must be on cuda.", with core's loader too); the host here runs on the CPU, so the test
gives it a stand-in module whose sageattn is PyTorch's SDPA: the node's override (it casts float32 to float16 around
the call) is what is checked, not SageAttention.

What was found: WanVideo Enhance A Video takes a latent for its frame count and each self-attention of the model
splits its tokens by that count. Diffusion forcing in windows (base_num_frames < frames) gives the model fewer frames
per call (an end image one more), so the model call failed deep inside with an einops shape error that named neither
the window nor the node (core KSampler gives the model the whole latent: no such case). Sample Video now says which
window, how many frames it gives the model, and which node patched the model's layers."""
import os

import pytest

from comfy_host import REPO, describe_pack, find_pack, run_in_host
from helpers import write_tiny
from in_host import SETUP

COMMON = r"""
import asyncio, types, nodes as core
import torch.nn.functional as F
from skyreels_pack.nodes.sample import SampleVideo

sa = types.ModuleType("sageattention")      # see the module's docstring
def sageattn(q, k, v, is_causal=False, attn_mask=None, tensor_layout="NHD"):
    if tensor_layout == "NHD":
        q, k, v = (a.transpose(1, 2) for a in (q, k, v))
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)
    return o.transpose(1, 2) if tensor_layout == "NHD" else o
sa.sageattn = sageattn
sys.modules["sageattention"] = sa
result = {{"loaded": asyncio.run(core.load_custom_node({pack!r}))}}
N = core.NODE_CLASS_MAPPINGS
g = torch.Generator().manual_seed(0)
pos = [[torch.randn(1, 8, 4096, generator=g), {{}}]]
neg = [[torch.randn(1, 8, 4096, generator=g), {{}}]]
ARGS = dict(width=32, height=32, frames=9, seed=1, steps=3, cfg=3.0, shift=8.0, sampler="unipc", fps=24,
            mode="standard", base_num_frames=97, overlap_history=17, ar_step=0, causal_block_size=1,
            addnoise_condition=0)
# 37 frames = 10 latent frames; in windows of 8 latent frames (29) overlapping by 5 (17): windows of 8 and 7 frames
ONE = dict(mode="diffusion forcing", frames=37)
WINDOWS = dict(ONE, base_num_frames=29)

def latent(frames):
    return {{"samples": torch.zeros(1, 16, frames, 4, 4)}}

def sv(m, **kw):
    try:
        s, report, _ = SampleVideo.execute(m, pos, neg, **nest_mode({{**ARGS, **kw}})).args[:3]
        return s["samples"], report
    except Exception as e:         # before Sample Video named the window: the host's error from inside the model
        return None, str(e) if isinstance(e, ValueError) else f"{{type(e).__name__}}: {{e}}"

def ks(m):
    return core.common_ksampler(m, 1, 3, 3.0, "uni_pc", "simple", pos, neg, latent(3))[0]["samples"]

def effects(make, ours, host):
    # (ours vs core's loader under KSampler, the node's effect under KSampler, under Sample Video)
    a, b = ks(make(ours)), ks(make(host))
    return [rel(a, b), rel(a, ks(ours)), rel(sv(make(ours))[0], sv(ours)[0])]

ours = load("t2v_bf16.safetensors", "bf16")[0]
df = load("df_bf16.safetensors", "bf16")[0]
"""

KJ = r"""
host = comfy.sd.load_diffusion_model(os.path.join({folder!r}, "t2v_bf16.safetensors"))
enhance = lambda m, lat=latent(3): N["WanVideoEnhanceAVideoKJ"]().enhance(m, 2.0, lat)[0]
result["enhance"] = effects(enhance, ours, host)
result["riflex"] = effects(lambda m: N["ApplyRifleXRoPE_WanVideo"]().patch(m, latent(3), 6)[0], ours, host)
result["cfgzero"] = effects(lambda m: N["CFGZeroStarAndInit"]().patch(m, True, 0)[0], ours, host)
sage = lambda m: N["PathchSageAttentionKJ"]().patch(m, "auto")[0]
result["sage"] = effects(sage, ours, host)
result["sage line"] = [l for l in sv(sage(ours))[1].splitlines() if l.startswith("attention")]
plain = sv(df, **ONE)[0]
result["one window"] = rel(sv(enhance(df, latent(10)), **ONE)[0], plain)
result["windows"] = [sv(enhance(df, latent(n)), **WINDOWS)[1] for n in (10, 8)]
"""

STAND_IN_RUN = r"""
patch = lambda m, n: N["StandInFramePatch"]().apply(m, n)[0]
plain = sv(df, **ONE)[0]
a, report = sv(patch(df, 10), **ONE)
result["one window"] = rel(a, plain)
result["windows"] = [sv(patch(df, n), **WINDOWS)[1] for n in (10, 8)]
result["plain windows"] = sv(df, **WINDOWS)[1].splitlines()[0]
# one window of the whole latent (10 frames), a patch made for 7: the host's own error, not the window message
result["whole"] = sv(patch(df, 7), **ONE)[1]
from generate_video_fp8 import write_tiny_vae
write_tiny_vae(os.path.join({folder!r}, "vae.safetensors"))
vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(os.path.join({folder!r}, "vae.safetensors")))
result["end image"] = sv(patch(df, 10), vae=vae, end_image=torch.rand(1, 32, 32, 3, generator=g), **ONE)[1]
"""

STAND_IN = '''"""Stands for a node that patches each self-attention of a Wan model for a latent's frame count (as KJNodes' WanVideo
Enhance A Video was seen to): the call splits its tokens by that count and scales the output; another count fails."""
import types


class FramePatch:
    def __init__(self, frames):
        self.frames = frames

    def __get__(self, attn, owner=None):
        frames = self.frames

        def forward(module, x, freqs, transformer_options={}):
            if x.shape[1] % frames:
                raise RuntimeError(f"stand-in: {x.shape[1]} tokens do not split into {frames} frames")
            return type(module).forward(module, x, freqs, transformer_options=transformer_options) * 1.25
        return types.MethodType(forward, attn)


class StandInFramePatch:
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "apply"
    CATEGORY = "testing"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "frames": ("INT", {"default": 1})}}

    def apply(self, model, frames):
        m = model.clone()
        for i, block in enumerate(m.get_model_object("diffusion_model").blocks):
            m.add_object_patch(f"diffusion_model.blocks.{i}.self_attn.forward", FramePatch(frames).__get__(block.self_attn))
        return (m,)


NODE_CLASS_MAPPINGS = {"StandInFramePatch": StandInFramePatch}
'''


def check_windows(r, who):
    assert r["loaded"], r
    assert r["one window"] > 1e-3, r          # one window of the whole latent: the node runs and changes the video
    first, second = r["windows"]
    # latent of 10 frames: window 1 (8 frames) fails; latent of 8: window 1 runs, window 2 (7 frames) fails
    assert first.startswith("Sample Video: diffusion forcing window 1 of 2 gives the model 8 latent frames (the "
                            "video has 10)"), first
    assert second.startswith("Sample Video: diffusion forcing window 2 of 2 gives the model 7 latent frames"), second
    for message in (first, second):
        assert who in message and "base_num_frames" in message and ".." not in message, message


def test_kjnodes_wan_patches(host, tmp_path):
    pack = find_pack(host, "ComfyUI-KJNodes", "COMFYUI_KJNODES_PATH", marker="nodes/model_optimization_nodes.py")
    if pack is None:
        pytest.skip("ComfyUI-KJNodes not found: set COMFYUI_KJNODES_PATH, or lay it out at ~/ComfyUI-KJNodes")
    print(describe_pack(pack))
    write_tiny(tmp_path / "t2v_bf16.safetensors", "T2V", seed=1)
    write_tiny(tmp_path / "df_bf16.safetensors", "DF", seed=2)
    r = run_in_host(host, SETUP.format(repo=REPO, folder=str(tmp_path)) + COMMON.format(pack=pack)
                    + KJ.format(folder=str(tmp_path)), timeout=1800)
    print(r)
    for node in ("enhance", "riflex", "cfgzero", "sage"):
        vs_host, on_ks, on_sv = r[node]
        assert vs_host == 0.0, (node, r[node])      # the same weights and ops as core's loader: bit for bit on a CPU
        # the node's effect under Sample Video (shift 8) is of the size it has under KSampler (the model's shift 8
        # too, but KSampler's "simple" sigmas): Enhance A Video 0.097 / 0.106, RifleX 0.016 / 0.017, CFG-Zero* (its
        # first step zeroed, so the schedule matters) 0.20 / 0.14, the sage override (float16 SDPA) 2.8e-4 / 3.2e-4
        assert on_ks > 0 and 0.5 < on_sv / on_ks < 2, (node, r[node])
    assert r["sage line"] == ["attention: another node's override, attention_override_sage (PathchSageAttentionKJ, "
                              "ComfyUI-KJNodes) (not Patch SageAttention; not counted)"], r["sage line"]
    check_windows(r, "(WanAttentionPatch, ComfyUI-KJNodes)")
    assert all("EinopsError" in m for m in r["windows"]), r["windows"]


def test_stand_in_frame_patch_in_windows(host, tmp_path):
    """No third-party pack: the stand-in above (what Enhance A Video does to the model's layers, nothing more)."""
    pack = tmp_path / "StandInFramePatch"
    pack.mkdir()
    (pack / "__init__.py").write_text(STAND_IN)
    write_tiny(tmp_path / "t2v_bf16.safetensors", "T2V", seed=1)
    write_tiny(tmp_path / "df_bf16.safetensors", "DF", seed=2)
    r = run_in_host(host, SETUP.format(repo=REPO, folder=str(tmp_path)) + COMMON.format(pack=str(pack))
                    + STAND_IN_RUN.format(folder=str(tmp_path)))
    print(r)
    # one window and end_image: the model sees the end image's latent frame after the video's 10
    assert r["end image"].startswith("Sample Video: diffusion forcing window 1 of 1 gives the model 11 latent frames "
                                     "(the video has 10)"), r["end image"]
    assert "leave out end_image" in r["end image"] and "base_num_frames" not in r["end image"], r["end image"]
    assert r["plain windows"].startswith("Sample Video: diffusion forcing, unipc 3 steps"), r
    assert r["whole"].startswith("RuntimeError: stand-in: ") and "window" not in r["whole"], r["whole"]
    check_windows(r, "(FramePatch, StandInFramePatch)")
    assert all("RuntimeError: stand-in: " in m for m in r["windows"]), r["windows"]
