"""Writes skyreels_df_pixels.safetensors beside this file: SkyReels-V2's own DiffusionForcingPipeline,
Image2VideoPipeline and Text2VideoPipeline (its code, not a port) run through the VAE on tiny weights, for tests/host/test_host_reference_pixels.py. Run by hand when the
cases change, with a SkyReels-V2 checkout and the tiny VAE the test writes:

    python tests/data/skyreels_df_pixels.py SKYREELS_V2_DIR TINY_VAE.safetensors
    python tests/data/skyreels_df_pixels.py SKYREELS_V2_DIR TINY_VAE.safetensors --latent-dtypes 30   (README, Fidelity)
    python tests/data/skyreels_df_pixels.py SKYREELS_V2_DIR TINY_VAE.safetensors --only NAME   (one run's entries: t2v or a DF case)

The DiTs are quant.tiny's DF model (seed 2), I2V model (seed 3) and T2V model (seed 1), bf16 values computed in fp32; the VAE is generate_video_fp8's tiny Wan VAE
(seed 0). Not SkyReels-V2's, because they need CUDA or files: flash_attention is PyTorch's SDPA in fp32, the text
encoder gives fixed embeddings (zero-padded to 512 tokens), the CLIP image encoder fixed features (ComfyUI's
CLIP Vision Encode is the host's), the bf16 cast of every block's output is an fp32 one, decord's reader gives the prefix video's frames, and
decord and ftfy (imported, unused here) are empty modules.

Stored per case: the final latents of every window (what the pipeline hands to vae.decode) and the uint8 video it
returns. And TeaCache: the DF model's outputs for a sequence of cond / uncond calls with SkyReels-V2's own TeaCache
(initialize_teacache, coefficients chosen by a 1.3B model name), with and without retention steps."""
import hashlib
import os
import sys
import types

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.append(os.path.dirname(os.path.dirname(HERE)))     # after a host's own folders: its `nodes` is not ours
from quant import tiny  # noqa: E402

OUT = os.path.join(HERE, "skyreels_df_pixels.safetensors")
SIZE, STEPS, CFG, SHIFT, SEED = 32, 4, 5.0, 8.0, 11
# name: (frames, base_num_frames, overlap_history, ar_step, causal_block_size, start image, prefix video frames,
#        end image); an image is True (SIZE x SIZE) or its (width, height)
CASES = {
    "long": (21, 13, 5, 0, 1, False, 0, False),
    "start_image": (21, 13, 5, 0, 1, True, 0, False),
    "extend": (21, 13, 5, 0, 1, False, 9, False),
    "extend_blocks_of_3": (29, 21, 13, 1, 3, False, 17, False),
    "blocks_of_3": (29, 21, 13, 1, 3, False, 0, False),
    "start_end": (13, 97, 5, 0, 1, True, 0, True),
    "long_start_end": (21, 13, 5, 1, 1, True, 0, True),
    "start_end_other_sizes": (13, 97, 5, 0, 1, (56, 40), 0, (40, 72)),
    "end_only_ar_step_2": (25, 13, 5, 2, 1, False, 0, True),    # 3 windows, the last shorter; no start image
}
# With --causal_attention (the transformer's set_ar_attention) and addnoise_condition, in float32 as the cases above;
# addnoise_condition draws from the run's generator after the run's own draws, as Sample Video's cpu noise does (their
# scripts draw it from torch's default one). name: (a case above, addnoise_condition)
CAUSAL_CASES = {"extend_causal_addnoise": ("extend_blocks_of_3", 20), "long_start_end_causal": ("long_start_end", 0)}
# As SkyReels-V2's scripts run DF with a bf16 transformer: noise drawn in bf16 and latents kept in bf16 between steps
# (Sample Video's noise "gpu (SkyReels-V2)"); the model still computes in fp32, on bf16-rounded text embeddings. Stored
# as "bf16_<name>/...": name: (a case above, addnoise_condition)
BF16_CASES = {"long": ("long", 0), "blocks_of_3": ("blocks_of_3", 0), "extend_addnoise": ("extend", 20),
              "start_end": ("start_end", 0)}
I2V_FRAMES = 17
T2V_FRAMES = 13
I2V_IMAGE = ((56, 40), (48, 32))      # an image of one size for a video of another: (width, height) of each
TEACACHE_STEPS, TEACACHE_SHAPE = 8, (1, 16, 5, 4, 4)
TEACACHE_RUNS = {"plain": (0.0, False), "skip": (1000.0, False), "skip_retention": (0.05, True)}  # thresh, ret steps


def teacache_inputs():
    """(x, timestep) of each step; each step calls the model for cond, then uncond, on the same x."""
    from sampling.schedule import flow_sigmas
    g = torch.Generator().manual_seed(7)
    ts = (flow_sigmas(TEACACHE_STEPS, SHIFT)[:-1].double() * 1000).long().tolist()
    return [(torch.randn(TEACACHE_SHAPE, generator=g), t) for t in ts]


def clip_features():
    """What the I2V model's image embedding reads: CLIP ViT-H's hidden states, [1, 257, 1280]."""
    return torch.randn(1, 257, 1280, generator=torch.Generator().manual_seed(5))


def embeddings(tokens, seed):
    e = torch.zeros(1, 512, 4096)
    e[:, :tokens] = torch.randn(1, tokens, 4096, generator=torch.Generator().manual_seed(seed))
    return e


def pictures(frames, seed, size=True):
    """uint8 frames [F, H, W, 3]: smooth colour ramps plus a little noise, like a video more than like noise; `size`
    a case's image: True for SIZE x SIZE, or (width, height)."""
    w, h = (SIZE, SIZE) if size is True else size
    g = torch.Generator().manual_seed(seed)
    base = torch.stack([torch.linspace(0, 1, w)[None, :].expand(h, w), torch.linspace(0, 1, h)[:, None].expand(h, w),
                        0.5 * torch.ones(h, w)], dim=-1)
    out = [base.roll(i, dims=1) * 0.8 + 0.2 * torch.rand(h, w, 3, generator=g) for i in range(frames)]
    return (torch.stack(out) * 255).round().to(torch.uint8)


def sdpa(q, k, v, **_):
    # flash_attention's layout [B, L, heads, head_dim]
    return torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2).contiguous()


def reference_transformer(skyreels_dir, pipeline="df"):
    """SkyReels-V2's WanModel with the tiny DF (or I2V) weights, and its transformer module."""
    import diffusers.utils  # noqa: F401  (before the empty modules: it looks for their specs)
    for name in ("decord", "ftfy"):
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules["decord"].VideoReader = None
    if skyreels_dir not in sys.path:
        sys.path.insert(0, skyreels_dir)
    from skyreels_v2_infer.modules import transformer as tr
    tr.flash_attention = sdpa
    # Each block returns its output cast to bf16 (the released model's residual stream is bf16): in this fp32
    # comparison, as everything else, it stays fp32 (that cast alone moves a model call by 0.3%).
    fp32_torch = types.ModuleType("torch")
    fp32_torch.__dict__.update(torch.__dict__)
    fp32_torch.bfloat16 = torch.float32
    tr.torch = fp32_torch

    variant, seed = {"df": ("DF", 2), "i2v": ("I2V", 3), "t2v": ("T2V", 1)}[pipeline]
    info = tiny.info(variant)
    model = tr.WanModel(model_type="i2v" if pipeline == "i2v" else "t2v", in_dim=info.in_dim, dim=info.dim,
                        ffn_dim=info.ffn_dim, num_heads=info.dim // 128, num_layers=info.num_layers,
                        inject_sample_info=info.has_fps)
    sd = tiny.state_dict(info, seed=seed)
    model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    return model.eval()


def teacache_reference(skyreels_dir):
    """The DF model's outputs, call after call, under SkyReels-V2's TeaCache. Its counter starts over after
    num_steps calls (its scripts pass the step count, so with CFG it starts over halfway through): given the number
    of calls here, it runs once through, as TeaCache (SkyReels-V2) counts."""
    model = reference_transformer(skyreels_dir, "df")
    pe, ne = embeddings(7, 1), embeddings(3, 2)
    out = {}
    for name, (thresh, retention) in TEACACHE_RUNS.items():
        if thresh:
            model.initialize_teacache(enable_teacache=True, num_steps=2 * TEACACHE_STEPS, teacache_thresh=thresh,
                                      use_ret_steps=retention, ckpt_dir="Skywork/SkyReels-V2-DF-1.3B-540P")
        calls = []
        with torch.no_grad():
            for x, t in teacache_inputs():
                for context in (pe, ne):
                    calls.append(model(x, t=torch.tensor([t]), context=context, fps=[1]))
        out[f"teacache_{name}/outputs"] = torch.stack(calls).contiguous()
    return out


def load_reference(skyreels_dir, vae_file, pipeline="df"):
    model = reference_transformer(skyreels_dir, pipeline)
    import safetensors.torch
    from skyreels_v2_infer.modules import vae as vae_module
    from skyreels_v2_infer.pipelines.diffusion_forcing_pipeline import DiffusionForcingPipeline
    from skyreels_v2_infer.pipelines.image2video_pipeline import Image2VideoPipeline
    from skyreels_v2_infer.pipelines.text2video_pipeline import Text2VideoPipeline
    from skyreels_v2_infer.scheduler.fm_solvers_unipc import FlowUniPCMultistepScheduler

    sd = safetensors.torch.load_file(vae_file)
    dim = sd["encoder.conv1.weight"].shape[0]
    original = vae_module._video_vae
    vae_module._video_vae = lambda pretrained_path, z_dim: _small_vae(original, vae_module, sd, dim, z_dim)
    vae = vae_module.WanVAE(vae_pth=None)
    vae_module._video_vae = original

    cls = {"df": DiffusionForcingPipeline, "i2v": Image2VideoPipeline, "t2v": Text2VideoPipeline}[pipeline]
    pipe = cls.__new__(cls)
    pipe.transformer, pipe.vae, pipe.device, pipe.offload = model, vae, "cpu", False
    if pipeline == "t2v":
        pipe.vae_stride = (4, 8, 8)     # as its __init__ sets it
    if pipeline == "i2v":
        from diffusers.video_processor import VideoProcessor
        pipe.video_processor = VideoProcessor(vae_scale_factor=16)
        pipe.clip = types.SimpleNamespace(to=lambda *a: None, encode_video=lambda videos: clip_features())
    pipe.scheduler = FlowUniPCMultistepScheduler()
    pe, ne = embeddings(7, 1), embeddings(3, 2)
    pipe.text_encoder = types.SimpleNamespace(to=lambda *a: None, cpu=lambda: None,
                                              encode=lambda prompt: pe if prompt == "positive" else ne)
    return pipe


def _small_vae(original, vae_module, sd, dim, z_dim):
    model = vae_module.WanVAE_(dim=dim, z_dim=z_dim, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                               temperal_downsample=[False, True, True], dropout=0.0)
    model.load_state_dict(sd, strict=True)
    return model.eval().requires_grad_(False)


class Recorder:
    """The pipeline's VAE, keeping the latents of every window it decodes."""
    def __init__(self, vae):
        self.vae, self.windows = vae, []

    def encode(self, video):
        return self.vae.encode(video)

    def decode(self, z):
        self.windows.append((z if z.dim() == 4 else z[0]).clone())    # the I2V pipeline decodes [C, F, H, W]
        return self.vae.decode(z)


class AsDtype:
    """The fp32 reference model as the pipeline sees one of `dtype`: the dtype it draws its noise and keeps its latents
    in (bf16 in SkyReels-V2's scripts)."""

    def __init__(self, model, dtype):
        self.model, self.dtype = model, dtype

    def __getattr__(self, name):
        return getattr(self.model, name)

    def __call__(self, x, **kwargs):
        kwargs = {k: v.float() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in kwargs.items()}
        return self.model(x.float(), **kwargs)


def run_bf16(pipe, case, addnoise, steps=STEPS, latents=torch.bfloat16):
    """A case as SkyReels-V2's DF script runs it with its bf16 transformer; addnoise_condition draws from the default
    generator, as a new process holds it (their scripts never seed it). latents=torch.float32: the same bf16 noise
    and text embeddings, float32 latents between steps."""
    from diffusers.utils.torch_utils import randn_tensor
    model, encode = pipe.transformer, pipe.text_encoder.encode
    pipe.transformer = AsDtype(model, latents)
    pipe.text_encoder.encode = lambda prompt: encode(prompt).to(torch.bfloat16).float()
    if latents != torch.bfloat16:
        pipe.prepare_latents = lambda shape, dtype=None, device=None, generator=None: randn_tensor(
            shape, generator, device=device, dtype=torch.bfloat16).to(dtype)
    torch.default_generator.manual_seed(torch.Generator().initial_seed())
    try:
        return run(pipe, *CASES[case], addnoise=addnoise, steps=steps)
    finally:
        pipe.transformer, pipe.text_encoder.encode = model, encode
        pipe.__dict__.pop("prepare_latents", None)


def run_causal(pipe, case, addnoise):
    model, generator, randn_like = pipe.transformer, torch.Generator().manual_seed(SEED), torch.randn_like
    model.set_ar_attention(CASES[case][4])
    torch.randn_like = lambda t, **kw: torch.randn(t.shape, generator=generator, dtype=t.dtype)
    try:
        return run(pipe, *CASES[case], addnoise=addnoise, generator=generator)
    finally:
        torch.randn_like, model.flag_causal_attention = randn_like, False
        for block in model.blocks:
            block.self_attn._flag_ar_attention = False


def run(pipe, frames, base, overlap, ar_step, cbs, image, prefix_frames, end, addnoise=0, steps=STEPS, generator=None):
    from PIL import Image
    from skyreels_v2_infer.pipelines.image2video_pipeline import resizecrop
    recorder = Recorder(pipe.vae)
    pipe.vae = recorder
    args = dict(prompt="positive", negative_prompt="negative", height=SIZE, width=SIZE, num_frames=frames,
                num_inference_steps=steps, shift=SHIFT, guidance_scale=CFG, overlap_history=overlap,
                generator=generator or torch.Generator().manual_seed(SEED), base_num_frames=base, ar_step=ar_step,
                causal_block_size=cbs, fps=24, addnoise_condition=addnoise)
    try:
        with torch.no_grad():
            if prefix_frames:
                video = pictures(prefix_frames, 3)
                pipe.get_video_as_tensor = lambda path, w, h: video.permute(0, 3, 1, 2).float()
                out = pipe.extend_video(prefix_video_path="prefix", **args)
            else:
                # as generate_video_df.py: cropped to the video's aspect, then resized by the pipeline
                picture = resizecrop(Image.fromarray(pictures(1, 4, image)[0].numpy()), SIZE, SIZE) if image else None
                last = resizecrop(Image.fromarray(pictures(1, 6, end)[0].numpy()), SIZE, SIZE) if end else None
                out = pipe(image=picture, end_image=last, **args)
    finally:
        pipe.vae = recorder.vae
    return recorder.windows, torch.from_numpy(out[0])


def run_i2v(pipe):
    from PIL import Image
    recorder = Recorder(pipe.vae)
    pipe.vae = recorder
    try:
        out = pipe(Image.fromarray(pictures(1, 4)[0].numpy()), prompt="positive", negative_prompt="negative",
                   height=SIZE, width=SIZE, num_frames=I2V_FRAMES, num_inference_steps=STEPS, guidance_scale=CFG,
                   shift=SHIFT, generator=torch.Generator().manual_seed(SEED))
    finally:
        pipe.vae = recorder.vae
    return recorder.windows, torch.from_numpy(out[0])


def run_t2v(pipe):
    """Text2VideoPipeline's latents and video; its decode is watched in place (the pipeline also reads the VAE's
    inner model, which a Recorder would hide)."""
    windows, decode = [], pipe.vae.decode
    pipe.vae.decode = lambda z: (windows.append(z.clone()), decode(z))[1]
    try:
        out = pipe(prompt="positive", negative_prompt="negative", width=SIZE, height=SIZE, num_frames=T2V_FRAMES,
                   num_inference_steps=STEPS, guidance_scale=CFG, shift=SHIFT,
                   generator=torch.Generator().manual_seed(SEED))
    finally:
        del pipe.vae.decode
    return windows, torch.from_numpy(out[0])


def i2v_image(skyreels_dir):
    """What SkyReels-V2's I2V model is given of a start image of another size: generate_video.py's resizecrop, then
    Image2VideoPipeline's VideoProcessor (PIL Lanczos to the video's size), as pixels in [0, 1], [H, W, 3]."""
    from diffusers.video_processor import VideoProcessor
    from PIL import Image
    if skyreels_dir not in sys.path:
        sys.path.insert(0, skyreels_dir)
    from skyreels_v2_infer.pipelines.image2video_pipeline import resizecrop
    (w, h) = I2V_IMAGE[1]
    picture = resizecrop(Image.fromarray(pictures(1, 4, I2V_IMAGE[0])[0].numpy()), h, w)
    img = VideoProcessor(vae_scale_factor=16).preprocess(picture, height=h, width=w)    # [1, 3, H, W] in [-1, 1]
    return (img[0].permute(1, 2, 0) + 1) / 2


def main(skyreels_dir, vae_file, only=None):
    """Every run, or with `only` ("t2v") that run's entries written into the stored table, the others kept as they
    are (a regeneration here moves them by float noise, ~1e-6)."""
    import safetensors.torch
    with open(vae_file, "rb") as f:
        vae_sha = hashlib.sha256(f.read()).hexdigest()
    if only in ("t2v", *CASES, *CAUSAL_CASES):
        from safetensors import safe_open
        with safe_open(OUT, "pt") as stored:
            if stored.metadata()["vae_sha256"] != vae_sha:
                raise SystemExit(f"--only: {vae_file} is not the VAE the stored runs were decoded with; run them all")
        table = safetensors.torch.load_file(OUT)
        table = {k: v for k, v in table.items() if not k.startswith(only + "/")}
        runs = {only: run_t2v(load_reference(skyreels_dir, vae_file, "t2v")) if only == "t2v" else
                run_causal(load_reference(skyreels_dir, vae_file), *CAUSAL_CASES[only]) if only in CAUSAL_CASES else
                run(load_reference(skyreels_dir, vae_file), *CASES[only])}
    elif only is None:
        pipe = load_reference(skyreels_dir, vae_file)
        runs = {name: run(pipe, *case) for name, case in CASES.items()}
        runs.update({name: run_causal(pipe, *case) for name, case in CAUSAL_CASES.items()})
        runs.update({f"bf16_{name}": run_bf16(pipe, *case) for name, case in BF16_CASES.items()})
        runs["i2v"] = run_i2v(load_reference(skyreels_dir, vae_file, "i2v"))
        runs["t2v"] = run_t2v(load_reference(skyreels_dir, vae_file, "t2v"))
        table = teacache_reference(skyreels_dir)
        table["i2v_image/pixels"] = i2v_image(skyreels_dir).contiguous()
    else:
        raise SystemExit(f"--only: t2v or a DF case ({', '.join([*CASES, *CAUSAL_CASES])}), not {only}")
    for name, (windows, video) in runs.items():
        for i, w in enumerate(windows):
            table[f"{name}/window{i}"] = w.contiguous()
        table[f"{name}/video"] = video.contiguous()
        print(name, [tuple(w.shape) for w in windows], tuple(video.shape))
    safetensors.torch.save_file(table, OUT, metadata={"vae_sha256": vae_sha, "size": str(SIZE)})
    print("wrote", OUT)


def latent_dtypes(skyreels_dir, vae_file, steps):
    """How far the DF latents kept in float32 between steps end from the bf16 ones SkyReels-V2's script keeps, on the
    same bf16 noise: its pipeline run both ways (not stored; README, Fidelity)."""
    pipe = load_reference(skyreels_dir, vae_file)
    for case in ("long", "blocks_of_3"):
        bf16, f32 = (torch.cat(run_bf16(pipe, case, 0, steps, dtype)[0], dim=1).float()
                     for dtype in (torch.bfloat16, torch.float32))
        print(f"{case}, {steps} steps: float32 latents vs bf16, relative L2 {((f32 - bf16).norm() / bf16.norm()):.4f}")


if __name__ == "__main__":
    if "--latent-dtypes" in sys.argv:     # ... --latent-dtypes STEPS
        latent_dtypes(*sys.argv[1:3], int(sys.argv[sys.argv.index("--latent-dtypes") + 1]))
    else:
        main(*sys.argv[1:3], sys.argv[sys.argv.index("--only") + 1] if "--only" in sys.argv else None)
