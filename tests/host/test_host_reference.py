"""Sample Video against SkyReels-V2's released pipelines, as diffusers ports them (SkyReelsV2DiffusionForcingPipeline,
SkyReelsV2Pipeline), on the same tiny weights (bf16 values, computed in fp32 on the CPU on both sides), the same
noise (one seeded generator, first draw) and the same text embeddings (zero-padded to 512 tokens, as ComfyUI's
umt5 gives them). The reference is given SkyReels-V2's own sigma grid (its scheduler's linspace from 0.999, then
shifted), not diffusers' stock flow grid."""
import pytest
from comfy_host import REPO, run_in_host
from in_host import SETUP, write_models

pytest.importorskip("diffusers")

CODE = r"""
import numpy as np, safetensors.torch
from diffusers import (SkyReelsV2DiffusionForcingPipeline, SkyReelsV2Pipeline, SkyReelsV2Transformer3DModel,
                       UniPCMultistepScheduler)
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers
from skyreels_pack.nodes.sample import SampleVideo
from skyreels_pack.quant import tiny

class SkyReelsGrid(UniPCMultistepScheduler):
    # SkyReels-V2's scheduler: linspace(float32 0.999, 0, steps + 1)[:-1], shifted by flow_shift, int64 timesteps.
    def set_timesteps(self, num_inference_steps=None, device=None, sigmas=None, mu=None):
        if sigmas is None:
            sigmas = np.linspace(float(np.float32(0.999)), 0.0, num_inference_steps + 1)[:-1].copy()
        return super().set_timesteps(num_inference_steps, device=device, sigmas=sigmas, mu=mu)

def reference_transformer(name, variant):
    sd = {{k: v.float() for k, v in safetensors.torch.load_file(os.path.join({folder!r}, name)).items()}}
    sd = convert_wan_transformer_to_diffusers(sd)
    for a, b in (("fps_projection.0.", "fps_projection.net.0.proj."), ("fps_projection.2.", "fps_projection.net.2.")):
        for k in [k for k in sd if k.startswith(a)]:
            sd[b + k[len(a):]] = sd.pop(k)
    info = tiny.info(variant)
    m = SkyReelsV2Transformer3DModel(patch_size=(1, 2, 2), num_attention_heads=info.dim // 128,
        attention_head_dim=128, in_channels=16, out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=info.ffn_dim,
        num_layers=info.num_layers, cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6,
        inject_sample_info=info.has_fps)
    m.load_state_dict(sd, strict=True)
    return m.eval()

def embeddings(tokens, seed):
    e = torch.zeros(1, 512, 4096)
    e[:, :tokens] = torch.randn(1, tokens, 4096, generator=torch.Generator().manual_seed(seed))
    return e

pe, ne = embeddings(7, 1), embeddings(3, 2)
STEPS, CFG, SHIFT, SEED = 4, 5.0, 8.0, 11

def ours(name, frames=17, width=32, height=32, **widgets):
    model = load(name, "bf16")[0]
    args = dict(width=width, height=height, frames=frames, seed=SEED, steps=STEPS, cfg=CFG, shift=SHIFT, sampler="unipc",
                fps=24, mode="standard", base_num_frames=frames)
    global report
    out, report = SampleVideo.execute(model, [[pe, {{}}]], [[ne, {{}}]], **nest_mode({{**args, **widgets}})).args[:2]
    return model.model.process_latent_in(out["samples"])        # the model's latent space, as diffusers returns it

def reference(pipe_class, name, variant, frames=17, generator=None, cfg=CFG, width=32, height=32, **kwargs):
    scheduler = SkyReelsGrid(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=SHIFT)
    pipe = pipe_class(tokenizer=None, text_encoder=None, transformer=reference_transformer(name, variant), vae=None,
                      scheduler=scheduler)
    with torch.no_grad():
        return pipe(prompt=None, prompt_embeds=pe, negative_prompt_embeds=ne, height=height, width=width, num_frames=frames,
                    num_inference_steps=STEPS, guidance_scale=cfg,
                    generator=generator or torch.Generator().manual_seed(SEED),
                    output_type="latent", return_dict=False, **kwargs)[0]

result = {{}}
result["t2v"] = rel(ours("t2v_bf16.safetensors"), reference(SkyReelsV2Pipeline, "t2v_bf16.safetensors", "T2V"))
for frames, ar, cbs, fps in ((17, 0, 1, 24), (17, 1, 1, 16), (37, 2, 5, 24)):
    # The port masks attention block-causally whenever causal_block_size > 1 (SkyReels-V2's --causal_attention).
    mine = ours("df_bf16.safetensors", frames, mode="diffusion forcing", ar_step=ar, causal_block_size=cbs, fps=fps,
                causal_attention=cbs > 1)
    ref = reference(SkyReelsV2DiffusionForcingPipeline, "df_bf16.safetensors", "DF", frames, base_num_frames=frames,
                    ar_step=ar, causal_block_size=cbs, fps=fps)
    result[f"df {{frames}} frames, ar_step {{ar}}, causal_block_size {{cbs}}, fps {{fps}}"] = rel(mine, ref)
# Block-causal attention on a landscape video: a block's tokens are frames x height x width patches (at 32 x 32 a
# height x height mistake went unseen; measured 2.9% off here).
mine = ours("df_bf16.safetensors", 37, width=48, mode="diffusion forcing", ar_step=2, causal_block_size=5,
            causal_attention=True)
ref = reference(SkyReelsV2DiffusionForcingPipeline, "df_bf16.safetensors", "DF", 37, width=48, base_num_frames=37,
                ar_step=2, causal_block_size=5, fps=24)
result["df 37 frames 48x32, causal_block_size 5"] = rel(mine, ref)

# Long videos: 37 frames in windows of 21 overlapping by 9 (latent frames 6 and 3), the overlap in latent space on
# both sides (no VAE). The reference draws addnoise_condition's noise from torch's global generator, we from the
# run's seeded stream: the reference's draws are taken from its own seeded generator, in the same order as ours.
# And with causal blocks of 3 under causal attention (the port's with causal_block_size > 1), overlap 13.
real_randn_like = torch.randn_like
for ar, addnoise, overlap, cbs in ((0, 0, 9, 1), (1, 20, 9, 1), (1, 20, 13, 3)):
    mine = ours("df_bf16.safetensors", 37, mode="diffusion forcing", base_num_frames=21, overlap_history=overlap,
                ar_step=ar, addnoise_condition=addnoise, causal_block_size=cbs, causal_attention=cbs > 1)
    stream = torch.Generator().manual_seed(SEED)
    torch.randn_like = lambda t, **kw: torch.randn(t.shape, generator=stream, dtype=t.dtype)
    try:
        ref = reference(SkyReelsV2DiffusionForcingPipeline, "df_bf16.safetensors", "DF", 37, base_num_frames=21,
                        overlap_history=overlap, ar_step=ar, causal_block_size=cbs, addnoise_condition=addnoise,
                        fps=24, generator=stream)
    finally:
        torch.randn_like = real_randn_like
    result[f"df long 37 frames, ar_step {{ar}}, addnoise {{addnoise}}, overlap {{overlap}}, blocks of {{cbs}}"] = \
        rel(mine, ref)
# An overlap that is not whole causal blocks: 13 frames = 4 latent frames, blocks of 3. Windows are laid out by all
# 4; each later one starts with the oldest 3 of them, makes the 4th again, and drops it.
mine = ours("df_bf16.safetensors", 37, mode="diffusion forcing", base_num_frames=21, overlap_history=13, ar_step=1,
            causal_block_size=3, causal_attention=True)
ref = reference(SkyReelsV2DiffusionForcingPipeline, "df_bf16.safetensors", "DF", 37, base_num_frames=21,
                overlap_history=13, ar_step=1, causal_block_size=3, fps=24)
result["df long 37 frames, overlap 13, causal_block_size 3"] = rel(mine, ref)
# cfg below 1: SkyReels-V2's DF pipeline (and the port) guide only above 1; the positive prompt runs alone.
mine = ours("df_bf16.safetensors", 17, mode="diffusion forcing", ar_step=1, cfg=0.5)
ref = reference(SkyReelsV2DiffusionForcingPipeline, "df_bf16.safetensors", "DF", 17, base_num_frames=17, ar_step=1,
                causal_block_size=1, fps=24, cfg=0.5)
result["df cfg 0.5"] = rel(mine, ref)
result["notes"] = [line for line in report.splitlines() if "guides only above 1" in line]
"""


def test_sample_video_equals_the_released_pipelines(host, tmp_path):
    write_models(tmp_path)
    r = run_in_host(host, SETUP.format(repo=REPO, folder=str(tmp_path)) + CODE.format(folder=str(tmp_path)))
    print(r)
    assert r.pop("notes") == ["cfg 0.5: diffusion forcing guides only above 1, as SkyReels-V2's "
                              "DiffusionForcingPipeline; the positive prompt runs alone, as cfg 1"]
    for case, value in r.items():
        assert value <= 1e-5, (case, r)
