#!/usr/bin/env python3
"""A whole T2V sampling run in bf16 as SkyReels-V2's script runs it and as ComfyUI runs it, each against the same
run in float32 (a script, not a test; CPU). bf16_forward.py measures one forward; this measures what the rounding
does to the video's latent after every step has fed the next.

    python bench/bf16_sample.py SKYREELS_V2_DIR [--host PATH] [--blocks 4] [--steps 10] [--cfg 6] [--shift 8]

bf16_forward.py's model (1.3B widths, seeded bf16-valued weights), noise and embeddings, plus a negative prompt.
Every run steps SkyReels-V2's own FlowUniPCMultistepScheduler as its text2video pipeline does (float32 latents,
classifier-free guidance, its integer timesteps); only the velocity differs: (a) SkyReels-V2's WanModel in float32,
(b) in bf16 under CUDA autocast (emulated, see bf16_forward.py), (c) ComfyUI's WanModel as this pack's loader builds
it, in float32 (a check that both sides read the same numbers) and in bf16 as on a GPU, (d) the pack's FP8 file.
The host's velocity is its diffusion model's output as apply_model calls it at sigma = t / 1000, the same t.
The weights are random, not trained: the figures compare roundings under the same dynamics, not video quality.
"""
import argparse
import os
import time

import torch

from bf16_forward import BF16, RUNS, fresh_host, host_velocity, skyreels_forward, skyreels_models


def sample(scheduler_class, velocity, noise, pos, neg, steps, cfg, shift):
    """SkyReels-V2's text2video loop (pipelines/text2video_pipeline.py) with `velocity` for its transformer."""
    scheduler = scheduler_class()
    scheduler.set_timesteps(steps, device="cpu", shift=shift)
    latent = noise.clone()
    for t in scheduler.timesteps:
        cond, uncond = velocity(latent, int(t), pos), velocity(latent, int(t), neg)
        v = uncond + cfg * (cond - uncond)
        latent = scheduler.step(v, t, latent, return_dict=False)[0]
    return latent


def parse_args(blocks):
    """The loop's settings (this script's and autocast_unipc.py's)."""
    p = argparse.ArgumentParser()
    p.add_argument("skyreels_dir", help="a SkyReels-V2 checkout (holds skyreels_v2_infer)")
    p.add_argument("--host", help="ComfyUI folder (default: found as the tests find it)")
    p.add_argument("--blocks", type=int, default=blocks)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--cfg", type=float, default=6.0)
    p.add_argument("--shift", type=float, default=8.0)
    return p.parse_args()


def main():
    args = parse_args(blocks=4)
    start = time.perf_counter()
    load, mm, info, sd, path, x, pos = fresh_host(args.host, args.blocks)
    neg = torch.zeros_like(pos)
    neg[:, :6] = torch.randn(1, 6, 4096, generator=torch.Generator().manual_seed(2)).to(BF16).float()
    print(f"{args.steps} steps, cfg {args.cfg}, shift {args.shift}, SkyReels-V2's FlowUniPC scheduler")

    tr, ref32, ref16 = skyreels_models(args.skyreels_dir, info, sd)
    from skyreels_v2_infer.scheduler.fm_solvers_unipc import FlowUniPCMultistepScheduler
    run = lambda velocity: sample(FlowUniPCMultistepScheduler, velocity, x, pos, neg,  # noqa: E731
                                  args.steps, args.cfg, args.shift)
    out = {"(a) SkyReels-V2 float32": run(lambda lat, t, c: skyreels_forward(tr, ref32, lat, t, c, "fp32")),
           f"(b) SkyReels-V2 bf16 {RUNS[0]}": run(lambda lat, t, c: skyreels_forward(tr, ref16, lat, t, c, RUNS[0]))}
    del ref32, ref16
    for name, fmt, gpu in (("(c) host", "bf16", False), ("(c) host", "bf16", True),
                           ("(d) host fp8 per-tensor", "fp8_e4m3fn (per-tensor)", True)):
        velocity, dtype = host_velocity(load, mm, path, fmt, gpu)
        out[f"{name} [computes in {dtype}]"] = run(velocity)
    os.remove(path)

    ref = out["(a) SkyReels-V2 float32"]
    rel = lambda a, b: ((a - b).norm() / b.norm()).item()  # noqa: E731
    print(f"\n{'final latent, rel L2 vs (a)':58s}{'':>10s}")
    for name, o in list(out.items())[1:]:
        print(f"{name:58s}{rel(o, ref):10.2e}")
    host16 = next(o for n, o in out.items() if n.startswith("(c) host [computes in bfloat16"))
    print(f"{'(c) host bf16 vs (b) SkyReels-V2 bf16':58s}{rel(host16, out['(b) SkyReels-V2 bf16 t2v']):10.2e}")
    print(f"{'noise vs (a) (the scale: how far sampling moved)':58s}{rel(x, ref):10.2e}")
    print(f"\n{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
