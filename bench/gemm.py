#!/usr/bin/env python3
"""FP8 matmul vs bf16 at Wan-14B Linear shapes, and the weight memory of a 1.3B-shape model (a script, not a test).

    python bench/gemm.py [--repeats 10] [--cpu]

GPU, at M in {4096, 51000} tokens and the three Linear shapes of a 14B block (K x N: 5120 x 5120 for q/k/v/o and
cross-attention q/o, 5120 x 13824 for ffn.0, 13824 x 5120 for ffn.2):
- bf16 F.linear vs quant.fp8.fp8_linear w8a8 (per-token activation scales x per-tensor or per-channel weight scales,
  torch._scaled_mm; and the per-tensor activation scales that Windows and RTX 50xx get): ms, TFLOP/s, speed-up
  and the error vs the fp32 product; the activation quantization alone,
  fused (Triton) vs eager row chunks, ms and the extra memory it takes (bench/act_quant.py);
- torch._scaled_mm alone on an activation quantized beforehand, with its default accumulation (what the pack runs)
  and with use_fast_accum=True (Hopper's FP8 tensor cores then keep fewer bits of the running sum): ms, speed-up vs
  bf16, and how far the fast sums lie from the default ones;
- one block's Linears at the largest M, in the order the model runs them (q, k and v on one input, quantized once
  as act_quant's cache does; cross-attention k/v, on 512 text tokens, left out): bf16 vs w8a8, and w8a8 with fast
  accumulation.
Then the GPU memory the 1.3B model's weights take in bf16 vs FP8 (our loader's layout: block Linears FP8 with fp32
scales, the rest bf16), from the real shapes. CPU: the same at small M and an eighth of the widths as a smoke run
(it checks the paths, not the speed; the CPU kernel has no fast accumulation).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bench.act_quant import quant_stats, timed  # noqa: E402
from quant import act_quant  # noqa: E402
from quant.fp8 import fp8_linear, quantize_weight  # noqa: E402
from quant import fp8 as fp8_module  # noqa: E402
from quant.policy import should_quantize  # noqa: E402
from quant.tiny import REAL, info  # noqa: E402

DIM, FFN = REAL["14B"]["dim"], REAL["14B"]["ffn_dim"]
SHAPES = ((DIM, DIM), (DIM, FFN), (FFN, DIM))   # (K, N) of q/k/v/o, ffn.0, ffn.2
# One block's Linears in the model's order: (input, K, N); q, k and v read the same input.
BLOCK = (("norm1", DIM, DIM), ("norm1", DIM, DIM), ("norm1", DIM, DIM), ("attention", DIM, DIM),
         ("norm3", DIM, DIM), ("cross-attention", DIM, DIM), ("norm2", DIM, FFN), ("gelu", FFN, DIM))


def rel(y, ref):
    return ((y.float() - ref).norm() / ref.norm()).item()


def operands(m, k, n, device):
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(m, k, generator=g).to(device, torch.bfloat16)
    w = (torch.randn(n, k, generator=g) / k ** 0.5).to(device, torch.bfloat16)
    return x, w


def scaled_mm(x, qweight, scale, fast):
    """The pack's row-wise product (quant/fp8.py) with torch._scaled_mm's use_fast_accum set: per-token scales from
    act_quant (its cache applies), the per-channel weight scales, bf16 out."""
    xq, x_scale = act_quant.quantize_input(x)
    return torch._scaled_mm(xq, qweight.t(), scale_a=x_scale, scale_b=scale.float().reshape(1, -1),
                            out_dtype=torch.bfloat16, use_fast_accum=fast)


def gemm_table(device, ms, repeats):
    print("w8a8 times include the activation's quantization; quant: that quantization alone, fused (Triton) and "
          "eager (row chunks), ms and extra MiB beyond its output (GPU only)")
    print("per-tensor act: per-channel weights with one activation scale per product, the plan of Windows and "
          "RTX 50xx (quant/fp8_plan.py), forced here")
    print(f"{'M':>6s} {'K':>5s} {'N':>6s} {'bf16 ms':>8s} {'TFLOP/s':>8s} | {'w8a8 tensor':>11s} {'x':>6s} "
          f"{'err':>6s} | {'w8a8 channel':>12s} {'x':>6s} {'err':>6s} | {'per-tensor act':>14s} {'x':>6s} "
          f"{'err':>6s} | {'quant fused':>16s} | {'quant eager':>16s}")
    plan_of = fp8_module.device_plan
    for m in ms:
        for k, n in SHAPES:
            x, w = operands(m, k, n, device)
            exact = F.linear(x.float(), w.float())
            t_bf16 = timed(lambda: F.linear(x, w), repeats, device)
            flops = 2 * m * n * k
            row = f"{m:6d} {k:5d} {n:6d} {t_bf16 * 1e3:8.2f} {flops / t_bf16 / 1e12:8.1f} |"
            for granularity, width, plan in (("tensor", 11, None), ("channel", 12, None),
                                             ("channel", 14, "tensorwise")):
                q, scale = quantize_weight(w.float(), granularity=granularity)
                fp8_module.device_plan = (lambda device, g: (plan, "forced")) if plan else plan_of
                try:
                    before = dict(fp8_module.stats)
                    # forget(): each call quantizes x again, as a Linear with a new input does.
                    t = timed(lambda: (act_quant.forget(), fp8_linear(x, q, scale, mode="w8a8")), repeats, device)
                    ran_fp8 = fp8_module.stats["w8a8"] > before["w8a8"]
                    err = rel(fp8_linear(x, q, scale, mode="w8a8"), exact)
                finally:
                    fp8_module.device_plan = plan_of
                tag = f"{flops / t / 1e12:7.1f} TF" if ran_fp8 else "fallback"
                row += f" {tag:>{width}s} {t_bf16 / t:5.2f}x {err:6.4f} |"
            quant = quant_stats(x, repeats)
            for name in ("fused", "eager"):
                t_q, extra = quant.get(name, (None, None))
                mib = "" if extra is None else f" ({extra / 2**20:.0f} MiB)"
                row += f" {'n/a' if t_q is None else f'{t_q:.3f} ms{mib}':>16s} |"
            print(row.rstrip(" |"))
            del x, w, exact


def accumulation_table(device, ms, repeats):
    """torch._scaled_mm alone, default vs fast accumulation, on the same quantized operands."""
    print("torch._scaled_mm alone (activation quantized beforehand, per-channel weight scales), default vs "
          "use_fast_accum=True; x: vs bf16; fast vs default: ||fast - default|| / ||default||; err: vs fp32")
    print(f"{'M':>6s} {'K':>5s} {'N':>6s} | {'default ms':>10s} {'x':>6s} {'err':>6s} | {'fast ms':>8s} {'x':>6s} "
          f"{'err':>6s} {'fast vs default':>16s}")
    for m in ms:
        for k, n in SHAPES:
            x, w = operands(m, k, n, device)
            q, scale = quantize_weight(w.float(), granularity="channel")
            t_bf16 = timed(lambda: F.linear(x, w), repeats, device)
            exact = F.linear(x.float(), w.float())
            act_quant.forget()
            cells, outs = [], {}
            for fast, width in ((False, 10), (True, 8)):
                try:
                    outs[fast] = scaled_mm(x, q, scale, fast)
                    t = timed(lambda: scaled_mm(x, q, scale, fast), repeats, device)   # x's quantization cached
                except RuntimeError as e:   # e.g. a torch whose CPU kernel takes no row-wise scales
                    cells.append(f"failed: {act_quant.first_line(e)[:60]}")
                    break
                cells.append(f"{t * 1e3:{width}.2f} {t_bf16 / t:5.2f}x {rel(outs[fast], exact):6.4f}")
            if len(outs) == 2:
                cells[-1] += f" {rel(outs[True], outs[False].float()):16.5f}"
            row = f"{m:6d} {k:5d} {n:6d} | " + " | ".join(cells)
            act_quant.forget()
            print(row)
            del x, w, q, exact, outs


def block_linears(device, m, repeats):
    """One 14B block's Linears at m tokens: bf16, w8a8 (the pack's fp8_linear) and w8a8 with fast accumulation."""
    g = torch.Generator(device="cpu").manual_seed(1)
    inputs = {name: torch.randn(m, k, generator=g).to(device, torch.bfloat16) for name, k, _ in BLOCK}
    weights = [(torch.randn(n, k, generator=g) / k ** 0.5).to(device, torch.bfloat16) for _, k, n in BLOCK]
    fp8 = [quantize_weight(w.float(), granularity="channel") for w in weights]
    runs = {"bf16": lambda: [F.linear(inputs[name], w) for (name, _, _), w in zip(BLOCK, weights)],
            "w8a8": lambda: [fp8_linear(inputs[name], *qs, mode="w8a8") for (name, _, _), qs in zip(BLOCK, fp8)],
            "w8a8, fast accumulation": lambda: [scaled_mm(inputs[name], *qs, True)
                                                for (name, _, _), qs in zip(BLOCK, fp8)]}
    times = {}
    for label, run in runs.items():
        try:
            times[label] = timed(lambda: (act_quant.forget(), run()), repeats, device)
        except RuntimeError as e:
            print(f"  {label}: failed: {act_quant.first_line(e)}")
    act_quant.forget()
    base = times.get("bf16")
    print(f"one 14B block's Linears at {m} tokens (q/k/v share one quantization; cross-attention k/v on text left "
          "out), quantization included:")
    for label, t in times.items():
        print(f"  {label:24s} {t * 1e3:8.2f} ms {base / t:5.2f}x bf16")


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
    ms, repeats = ((4096, 51000), args.repeats) if gpu else ((64,), 1)
    if not gpu:   # the paths, not the figures: an eighth of the widths, as some CPUs' torch._scaled_mm with one
        global SHAPES, BLOCK     # activation scale is a slow loop (5 s for 64 x 2048 x 2048 on an AVX-512 Xeon)
        SHAPES = tuple((k // 8, n // 8) for k, n in SHAPES)
        BLOCK = tuple((name, k // 8, n // 8) for name, k, n in BLOCK)
    gemm_table(device, ms, repeats)
    accumulation_table(device, ms, repeats)
    block_linears(device, ms[-1], repeats)
    weight_memory(device)


if __name__ == "__main__":
    main()
