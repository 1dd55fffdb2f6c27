#!/usr/bin/env python3
"""One transformer forward in bf16 as SkyReels-V2's scripts run it and as ComfyUI runs it, each against the same
forward in float32 (a script, not a test; CPU).

    python bench/bf16_forward.py SKYREELS_V2_DIR [--host PATH] [--blocks 4]

1.3B widths (dim 1536, ffn 8960, 12 heads), `--blocks` blocks of quant.tiny's seeded T2V weights (bf16 values), latent
[1, 16, 5, 16, 16], 20 text tokens zero-padded to 512, three timesteps, all inputs bf16 values. Relative L2 vs
(a) SkyReels-V2's WanModel in float32 of (b) that code as its pipelines run it, bf16 weights: T2V/I2V under
torch.cuda.amp.autocast(bf16), DF without it (bf16 inputs; as its script runs extend_video only); T2V without its
bf16 cast of block outputs, and with host-like rounding (time embedding in bf16, residual rounded after attention
and FFN); (c) ComfyUI's WanModel as this pack's loader builds it, computing in bf16 as on a GPU (should_use_bf16
True, PyTorch attention) or float32 (its CPU choice: a check that both sides read the same numbers); (d) the pack's
FP8 files (upcast to bf16 products).
CudaAutocast applies CUDA autocast's casts (ATen autocast_mode.h) for the ops the model calls: linear, conv3d, einsum,
SDPA to its dtype, layer_norm, pow, rsqrt to float32, in autocast("cuda", float32) regions too (honoured on CUDA; CPU
autocast turns itself off). flash_attention: SDPA on bf16, bf16 out. torch.compile'd helpers run eagerly.
"""
import argparse
import contextlib
import copy
import os
import platform
import sys
import tempfile
import time
import types

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPO, os.path.join(REPO, "tests")]

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.overrides import TorchFunctionMode  # noqa: E402
from torch.utils._pytree import tree_map  # noqa: E402

from comfy_host import find_host, import_pack  # noqa: E402
from helpers import write_tiny  # noqa: E402
from quant import tiny  # noqa: E402

BF16, FP32 = torch.bfloat16, torch.float32
TIMESTEPS = (875, 500, 125)          # sigma = t / 1000 exact in binary
LOWER = {F.linear, torch.conv3d, torch.einsum, F.scaled_dot_product_attention}
TO_FP32 = {F.layer_norm, torch.pow, torch.Tensor.pow, torch.rsqrt, torch.Tensor.rsqrt}
RUNS = ("t2v", "df", "t2v, no block cast", "t2v, host-like temb + residual")


class CudaAutocast(TorchFunctionMode):
    stack = [None]       # the innermost autocast's dtype, None: off

    def __torch_function__(self, func, types, args=(), kwargs=None):
        to = self.stack[-1] and (self.stack[-1] if func in LOWER else FP32 if func in TO_FP32 else None)
        if to:
            cast = lambda t: t.to(to) if isinstance(t, torch.Tensor) and t.dtype in (BF16, FP32) else t  # noqa: E731
            args, kwargs = tree_map(cast, args), tree_map(cast, kwargs)
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def autocast(device_type="cuda", dtype=torch.float16, enabled=True, **_):
    CudaAutocast.stack.append(dtype if enabled else None)
    try:
        yield
    finally:
        CudaAutocast.stack.pop()


def import_skyreels(skyreels_dir):
    """SkyReels-V2's skyreels_v2_infer importable here: decord (the DF pipeline's video reader) and ftfy (the
    tokenizer's) are imported by code these scripts do not run, so empty modules stand in for them."""
    import diffusers.utils  # (before the empty modules: it looks for their specs)
    diffusers.utils.logging.set_verbosity_error()
    sys.modules.update(decord=types.SimpleNamespace(VideoReader=None), ftfy=types.ModuleType("ftfy"))
    sys.path.insert(0, skyreels_dir)


def skyreels_models(skyreels_dir, info, sd):
    """SkyReels-V2's transformer module, patched to run here, and its WanModel with `sd` in float32 and in bf16."""
    import_skyreels(skyreels_dir)
    from skyreels_v2_infer.modules import transformer as tr
    tr.amp = types.SimpleNamespace(autocast=autocast)
    tr.rope_apply = autocast(enabled=False)(tr.rope_apply.__wrapped__)
    for name in ("fast_rms_norm", "mul_add_compile", "mul_add_add_compile"):
        setattr(tr, name, getattr(tr, name)._torchdynamo_orig_callable)
    model = tr.WanModel(model_type="t2v", in_dim=info.in_dim, dim=info.dim, ffn_dim=info.ffn_dim,
                        num_heads=info.dim // 128, num_layers=info.num_layers).requires_grad_(False).eval()
    model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    bf16 = copy.deepcopy(model).to(BF16)                  # as its get_transformer: .to(bf16), then the weights
    bf16.load_state_dict(sd, strict=True)
    return tr, model, bf16


def skyreels_forward(tr, model, x, t, ctx, run):
    dtype = FP32 if run == "fp32" else BF16
    tr.flash_attention = lambda q, k, v, **_: F.scaled_dot_product_attention(
        *(a.to(dtype).transpose(1, 2) for a in (q, k, v))).transpose(1, 2).contiguous()
    tr.torch = types.ModuleType("torch")
    tr.torch.__dict__.update(torch.__dict__, **({"bfloat16": FP32} if run in ("fp32", RUNS[2]) else {}))
    mul_add, host_like = tr.mul_add_compile, run == RUNS[3]
    if host_like:
        tr.mul_add_compile = lambda *a: mul_add(*a).to(BF16).float()
        for m in (model.time_embedding, model.time_projection):
            m.forward = lambda e, f=m.forward: autocast(dtype=BF16)(f)(e).float()
    if run == "df":
        x, ctx = x.to(BF16), ctx.to(BF16)
    try:
        with torch.no_grad(), CudaAutocast(), autocast(dtype=BF16, enabled=run not in ("fp32", "df")):
            return model(x, t=torch.tensor([t]), context=ctx).float()
    finally:
        tr.torch, tr.mul_add_compile = torch, mul_add
        if host_like:
            del model.time_embedding.forward, model.time_projection.forward


def host_model(load, mm, path, fmt, gpu):
    """The host's model loaded from `path` as `fmt`; `gpu`: computing in bf16, as the host chooses on CUDA."""
    cpu_choice = mm.should_use_bf16
    mm.should_use_bf16 = (lambda *a, **k: True) if gpu else cpu_choice
    try:
        return load(path, fmt, "upcast")[0].model
    finally:
        mm.should_use_bf16 = cpu_choice


def host_velocity(load, mm, path, fmt, gpu):
    """v(x, t, context) of the host's model as its apply_model calls it at sigma = t / 1000, and the dtype it
    computes in."""
    model, got = host_model(load, mm, path, fmt, gpu), []
    model.diffusion_model.register_forward_hook(lambda m, i, o: got.append(o.float()))

    def velocity(x, t, ctx):
        with torch.no_grad():
            model.apply_model(x, torch.tensor([t / 1000]), c_crossattn=ctx)
        return got.pop()
    return velocity, str(model.get_dtype_inference())[6:]


def host_runs(load, mm, path, x, ctx):
    """The Wan model's output (velocity) in each host configuration, at each of TIMESTEPS."""
    out = {}
    for name, fmt, gpu in (("(c) host, float32 (its CPU choice)", "bf16", False), ("(c) host bf16", "bf16", True),
                           ("(d) host fp8 per-tensor", "fp8_e4m3fn (per-tensor)", True),
                           ("(d) host fp8 per-channel", "fp8_e4m3fn (per-channel)", True)):
        velocity, dtype = host_velocity(load, mm, path, fmt, gpu)
        out[f"{name} [computes in {dtype}]"] = [velocity(x, t, ctx) for t in TIMESTEPS]
    return out


def row(name, outs, refs):
    print(f"{name:58s}" + "".join(f"{((a - b).norm() / b.norm()).item():10.2e}" for a, b in zip(outs, refs)))


def fresh_host(host, blocks):
    """The host imported for the CPU as a GPU would run it, the pack, a tiny T2V file at the 1.3B widths with `blocks`
    blocks, and the inputs: (load, model_management, info, state dict, file, latent, text embeddings)."""
    host = host or find_host() or sys.exit("no ComfyUI host found: set COMFYUI_PATH or pass --host")
    sys.path.insert(0, host)                             # before the pack: its `nodes` is not ours
    import comfy.cli_args
    comfy.cli_args.args.cpu = True
    comfy.cli_args.args.use_pytorch_cross_attention = True   # the host's choice on NVIDIA (CPU: sub-quadratic)
    import_pack()
    import comfy.model_management as mm
    from skyreels_pack.nodes.loader import load

    dims = dict(tiny.REAL["1.3B"], num_layers=blocks)
    fd, path = tempfile.mkstemp(suffix=".safetensors")
    os.close(fd)
    sd = write_tiny(path, "T2V", seed=1, **dims)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, 5, 16, 16, generator=g).to(BF16).float()
    ctx = torch.zeros(1, 512, 4096)
    ctx[:, :20] = torch.randn(1, 20, 4096, generator=g).to(BF16).float()
    print(f"device: CPU ({platform.machine()}, {os.cpu_count()} cores), torch {torch.__version__}; host {host}")
    print(f"1.3B widths, {blocks} blocks, latent {list(x.shape)} (320 tokens), 20 text tokens")
    return load, mm, tiny.info("T2V", **dims), sd, path, x, ctx


def main():
    p = argparse.ArgumentParser()
    p.add_argument("skyreels_dir", help="a SkyReels-V2 checkout (holds skyreels_v2_infer)")
    p.add_argument("--host", help="ComfyUI folder (default: found as the tests find it)")
    p.add_argument("--blocks", type=int, default=4)
    args = p.parse_args()
    start = time.perf_counter()
    load, mm, info, sd, path, x, ctx = fresh_host(args.host, args.blocks)

    tr, ref32, ref16 = skyreels_models(args.skyreels_dir, info, sd)
    out = {"(a) SkyReels-V2 float32": [skyreels_forward(tr, ref32, x, t, ctx, "fp32") for t in TIMESTEPS]}
    for run in RUNS:
        out[f"(b) SkyReels-V2 bf16 {run}"] = [skyreels_forward(tr, ref16, x, t, ctx, run) for t in TIMESTEPS]
    del ref32, ref16
    out.update(host_runs(load, mm, path, x, ctx))
    os.remove(path)

    print(f"\n{'rel L2 vs (a)':58s}" + "".join(f"{'t=' + str(t):>10s}" for t in TIMESTEPS))
    for name, o in list(out.items())[1:]:
        row(name, o, out["(a) SkyReels-V2 float32"])
    host16 = next(o for n, o in out.items() if n.startswith("(c) host bf16"))
    print("\nbetween the bf16 forwards")
    for run in RUNS:
        row(f"(c) host bf16 vs (b) {run}", host16, out[f"(b) SkyReels-V2 bf16 {run}"])
    row("(b) df vs (b) t2v", out["(b) SkyReels-V2 bf16 df"], out["(b) SkyReels-V2 bf16 t2v"])
    print(f"\n{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
