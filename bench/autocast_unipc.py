#!/usr/bin/env python3
"""What SkyReels-V2's bf16 autocast does to its UniPC steps on CUDA, against Sample Video's float32 steps (a script,
not a test; CPU).

    python bench/autocast_unipc.py SKYREELS_V2_DIR [--host PATH] [--blocks 2] [--steps 10] [--cfg 6] [--shift 8]

Its scripts step the scheduler inside torch.cuda.amp.autocast(bf16). torch.einsum is on CUDA autocast's
lower-precision list, so the order-2 terms of the predictor (rhos_p * D1) and of the corrector (rhos_c[0] * D1) come
out in bf16 there (CPU autocast leaves einsum alone, so the reference tests on the CPU cannot see it). Emulated here:
three T2V loops with SkyReels-V2's own model in bf16 (bf16_forward.py's, emulated CUDA autocast) that differ only in
(base) Sample Video's FlowUniPC with cfg on the velocity, (x0 cfg) cfg on x0 as the host applies it, (bf16 einsum)
the order-2 terms rounded to bf16 as CUDA autocast rounds them. Random weights: the figures compare roundings.
"""
import os
import sys
import time

import torch

from bf16_forward import BF16, RUNS, fresh_host, skyreels_forward, skyreels_models
from bf16_sample import parse_args

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from sampling.schedule import flow_sigmas, model_timesteps  # noqa: E402
from sampling.solvers import FlowUniPC  # noqa: E402


class AutocastUniPC(FlowUniPC):
    """FlowUniPC (float32 latents) with the order-2 terms in bf16, as einsum under CUDA autocast computes them."""

    def _d1(self, j, h):
        # the predictor's einsum: bf16(0.5) * bf16(D1 / r1), exact in bf16; c times it stays bf16 (a 0-dim factor),
        # and the float32 first-order step minus it is float32, as x_t_ - alpha_t * B_h * pred_res
        d1, r1 = super()._d1(j, h)
        return d1.to(BF16), r1

    def _corrector(self, x0_t):
        j = self.index - 1
        base, c, h, b_h = self._first_order(j, self.last_x)
        d1_t = x0_t - self.x0s[-1]
        if self.last_order == 1:
            return base - c * (0.5 * d1_t)
        d1, r1 = self._d1(j, h)
        phi = b_h / -h - 1
        b = torch.stack([phi * 1 / b_h, (phi / -h - 1 / 2) * 2 / b_h])
        rho0, rho1 = torch.linalg.solve(torch.stack([torch.ones(2), torch.stack([r1, torch.ones(())])]), b)
        # the corrector's einsum: bf16(rho0) * bf16(D1), then the float32 rho1 * D1_t term promotes the sum
        return base - c * (d1 * rho0.to(BF16) + rho1 * d1_t)


def sample(solver_class, velocity, noise, pos, neg, steps, cfg, shift, x0_cfg=False):
    sigmas, table = flow_sigmas(steps, shift), model_timesteps(steps, shift)
    solver, latent = solver_class(sigmas), noise.clone()
    for i in range(steps):
        sigma = sigmas[i]
        t = table[float(sigma)]
        cond, uncond = velocity(latent, t, pos), velocity(latent, t, neg)
        if x0_cfg:
            x0_cond, x0_uncond = latent - cond * sigma, latent - uncond * sigma
            x0 = x0_uncond + (x0_cond - x0_uncond) * cfg
        else:
            x0 = latent - sigma * (uncond + cfg * (cond - uncond))
        latent = solver.step(x0, latent)
    return latent


def main():
    args = parse_args(blocks=2)
    start = time.perf_counter()
    _, _, info, sd, path, x, pos = fresh_host(args.host, args.blocks)
    os.remove(path)
    neg = torch.zeros_like(pos)
    neg[:, :6] = torch.randn(1, 6, 4096, generator=torch.Generator().manual_seed(2)).to(BF16).float()
    tr, ref32, ref16 = skyreels_models(args.skyreels_dir, info, sd)
    del ref32
    velocity = lambda lat, t, c: skyreels_forward(tr, ref16, lat, t, c, RUNS[0])  # noqa: E731
    run = lambda solver, x0_cfg=False: sample(solver, velocity, x, pos, neg, args.steps, args.cfg,  # noqa: E731
                                              args.shift, x0_cfg)
    base = run(FlowUniPC)
    print(f"{args.blocks} blocks, {args.steps} steps, cfg {args.cfg}, shift {args.shift}: final latent against (base)")
    for name, out in (("(x0 cfg) cfg on x0, as the host", run(FlowUniPC, True)),
                      ("(bf16 einsum) order-2 terms in bf16, as CUDA autocast", run(AutocastUniPC))):
        d = out - base
        print(f"{name:56s} rel L2 {(d.norm() / base.norm()).item():.2e}, {(d != 0).float().mean().item():.1%} differ")
    print(f"{'(the scale: how far sampling moved from the noise)':56s} rel L2 {((base - x).norm() / x.norm()):.2e}")
    print(f"\n{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
