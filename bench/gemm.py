#!/usr/bin/env python3
"""FP8 matmul vs bf16 at Wan-14B Linear shapes, and the weight memory of a 1.3B-shape model (a script, not a test).

    python bench/gemm.py [--repeats 10] [--cpu]

GPU: bf16 F.linear vs quant.fp8_linear w8a8 (per-token activation scales x per-tensor or per-channel weight
scales, torch._scaled_mm) at M in {4096, 51000} tokens, K = 5120, N in {5120, 13824}: ms, TFLOP/s, speed-up and
the error vs the fp32 product; the activation quantization alone, fused (Triton) vs eager row chunks, ms and the
extra memory it takes (bench/act_quant.py); then the GPU memory the 1.3B model's weights take in bf16 vs FP8 (our
loader's layout: block Linears FP8 with fp32 scales, the rest bf16), from the real shapes. CPU: the same at small
M as a smoke run (it checks the paths, not the speed).
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bench.act_quant import quant_stats, timed  # noqa: E402
from quant import act_quant, fp8_linear, quantize_weight  # noqa: E402
from quant import fp8 as fp8_module  # noqa: E402
from quant.policy import should_quantize  # noqa: E402
from quant.tiny import REAL, info  # noqa: E402


def gemm_table(device, ms, repeats):
    print("w8a8 times include the activation's quantization; quant: that quantization alone, fused (Triton) and "
          "eager (row chunks), ms and extra MiB beyond its output (GPU only)")
    print(f"{'M':>6s} {'K':>5s} {'N':>6s} {'bf16 ms':>8s} {'TFLOP/s':>8s} | {'w8a8 tensor':>11s} {'x':>6s} "
          f"{'err':>6s} | {'w8a8 channel':>12s} {'x':>6s} {'err':>6s} | {'quant fused':>16s} | {'quant eager':>16s}")
    for m in ms:
        for n in (5120, 13824):
            k = 5120
            g = torch.Generator(device="cpu").manual_seed(0)
            x = torch.randn(m, k, generator=g).to(device, torch.bfloat16)
            w = (torch.randn(n, k, generator=g) / k ** 0.5).to(device, torch.bfloat16)
            exact = F.linear(x.float(), w.float())
            t_bf16 = timed(lambda: F.linear(x, w), repeats, device)
            flops = 2 * m * n * k
            row = f"{m:6d} {k:5d} {n:6d} {t_bf16 * 1e3:8.2f} {flops / t_bf16 / 1e12:8.1f} |"
            for granularity in ("tensor", "channel"):
                q, scale = quantize_weight(w.float(), granularity=granularity)
                before = dict(fp8_module.stats)
                # forget(): each call quantizes x again, as a Linear with a new input does.
                t = timed(lambda: (act_quant.forget(), fp8_linear(x, q, scale, mode="w8a8")), repeats, device)
                ran_fp8 = fp8_module.stats["w8a8"] > before["w8a8"]
                y = fp8_linear(x, q, scale, mode="w8a8").float()
                err = ((y - exact).norm() / exact.norm()).item()
                tag = f"{flops / t / 1e12:7.1f} TF" if ran_fp8 else "fallback"
                row += f" {tag:>11s} {t_bf16 / t:5.2f}x {err:6.4f} |"
            quant = quant_stats(x, repeats)
            for name in ("fused", "eager"):
                t_q, extra = quant.get(name, (None, None))
                mib = "" if extra is None else f" ({extra / 2**20:.0f} MiB)"
                row += f" {'n/a' if t_q is None else f'{t_q:.3f} ms{mib}':>16s} |"
            print(row.rstrip(" |"))
            del x, w, exact


def weight_memory(device):
    """GPU bytes of the 1.3B model's weights: bf16 vs our FP8 layout (block Linears FP8 + fp32 scale per channel)."""
    model = info("T2V", **REAL["1.3B"])
    bf16 = fp8 = 0
    for key, shape in model.expected_shapes().items():
        numel = 1
        for s in shape:
            numel *= s
        bf16 += 2 * numel
        fp8 += numel + 4 * shape[0] if should_quantize(key, model.num_layers) else 2 * numel
    if device.type == "cuda":   # allocate them for real, to read what the allocator holds
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated(device)
        held = [torch.empty(bf16, dtype=torch.uint8, device=device)]
        bf16_gpu = torch.cuda.memory_allocated(device) - base
        del held
        held = [torch.empty(fp8, dtype=torch.uint8, device=device)]
        fp8_gpu = torch.cuda.memory_allocated(device) - base
        del held
        bf16, fp8 = bf16_gpu, fp8_gpu
    print(f"1.3B weights: bf16 {bf16 / 2**20:.0f} MiB, fp8 {fp8 / 2**20:.0f} MiB, ratio {fp8 / bf16:.3f}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--cpu", action="store_true", help="the CPU smoke run even where a GPU is present")
    args = p.parse_args()
    gpu = torch.cuda.is_available() and not args.cpu
    device = torch.device("cuda" if gpu else "cpu")
    name = torch.cuda.get_device_name(device) if gpu else f"CPU ({os.cpu_count()} cores), smoke run"
    print(f"device: {name}, torch {torch.__version__}")
    gemm_table(device, (4096, 51000) if gpu else (64,), args.repeats if gpu else 1)
    weight_memory(device)


if __name__ == "__main__":
    main()
