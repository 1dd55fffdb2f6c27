#!/usr/bin/env python3
"""Memory and time of the activation quantization before each FP8 product (a script, not a test).

    python bench/act_quant.py [--m 32768] [--k 5120] [--repeats 5] [--sweep]

CPU: the peak memory that quant.act_quant.quantize (eager chunks) takes beyond its output (FP8 values + scales)
for a bf16 activation, vs the one-shot eager formula it replaced, each in a fresh process (Linux VmHWM, reset
through /proc/self/clear_refs), and as a ratio to the activation's size. GPU: the fused Triton kernel vs the eager
chunks, ms, GB/s and extra memory (torch.cuda.max_memory_allocated beyond the output); with --sweep, the fused
kernel's launch settings and rounding at the 14B model's activations in a 544x960, 97-frame step (cond and
uncond: 102,000 rows of 5120 and of 13824), each checked bit for bit against the software rounding; and per-tensor
scales (Windows, RTX 50xx) through the Triton kernel, comfy-kitchen's CUDA kernel and the eager chunks.
"""
import argparse
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from quant import act_quant  # noqa: E402

MiB = 2 ** 20


def one_shot(x):
    """The quantization fp8_linear did before act_quant: whole-tensor passes with fp32 copies."""
    scale = x.abs().amax(dim=1, keepdim=True).float() / 448
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return (x.float() / scale).clamp_(-448, 448).to(torch.float8_e4m3fn), scale


METHODS = {"chunked": lambda x: act_quant.quantize(x, fused=False), "one-shot": one_shot}


def _status_kib(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def cpu_extra(method, m, k):
    """Run in a fresh process: peak resident bytes beyond the input and the output, and seconds."""
    x = torch.randn(m, k, dtype=torch.bfloat16)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")   # resets VmHWM to the current VmRSS
    base = _status_kib("VmRSS")
    start = time.perf_counter()
    q, scale = METHODS[method](x)
    seconds = time.perf_counter() - start
    peak = _status_kib("VmHWM")
    return (peak - base) * 1024 - q.nbytes - scale.nbytes, seconds


def cpu_report(m, k):
    act = m * k * 2
    print(f"CPU, bf16 activation {m}x{k} ({act / MiB:.0f} MiB), extra memory beyond the output (fp8 + scales):")
    for method in METHODS:   # each in a fresh process: memory freed by one would hide the next one's peak
        out = subprocess.run([sys.executable, os.path.abspath(__file__), "--m", str(m), "--k", str(k), "--measure",
                              method], capture_output=True, text=True, check=True)
        extra, seconds = map(float, out.stdout.split())
        print(f"  {method:9s} {extra / MiB:7.0f} MiB = {extra / act:.2f}x the activation, {seconds:.2f} s")


def timed(fn, repeats, device):
    fn()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync()
    return (time.perf_counter() - start) / repeats


def quant_stats(x, repeats):
    """{method: (ms, extra bytes beyond the output, None off CUDA)} of quantizing x [M, K]: the fused kernel (where
    it runs) and the eager chunks."""
    methods = {"fused": True, "eager": False} if x.is_cuda and act_quant.fused_available()[0] else {"eager": False}
    stats = {}
    for name, fused in methods.items():
        extra = None
        if x.is_cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(x.device)
            base = torch.cuda.memory_allocated(x.device)
            q, scale = act_quant.quantize(x, fused=fused)
            extra = torch.cuda.max_memory_allocated(x.device) - base - q.nbytes - scale.nbytes
            del q, scale
        stats[name] = (timed(lambda: act_quant.quantize(x, fused=fused), repeats, x.device) * 1e3, extra)
    return stats


def gpu_report(shapes, repeats):
    print(f"GPU {torch.cuda.get_device_name()}: per-token quantization of a bf16 activation")
    for m, k in shapes:
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        moved = m * k * 3 + m * 4   # read bf16, write fp8 and scales
        for name, (ms, extra) in quant_stats(x, repeats).items():
            print(f"  {m:6d}x{k:<5d} {name:5s} {ms:7.3f} ms {moved / ms / 1e6:7.0f} GB/s, extra "
                  f"{extra / MiB:6.1f} MiB = {extra / x.nbytes:.3f}x the activation")
        del x


def per_tensor_report(shapes, repeats):
    """Per-tensor activation scales (Windows, RTX 50xx), each way with its absmax pass: the Triton kernel, comfy-kitchen's
    CUDA kernel (what runs there without Triton; present where the carried comfy-kitchen has its CUDA extension:
    --prepare-kitchen) and the eager chunks, whose bytes the others are compared with."""
    kernel = act_quant.kitchen_per_tensor()

    def kitchen(x):
        scale = act_quant.tensor_scale(x)
        return act_quant.kitchen_quantize(kernel, x, scale), scale

    print("per-tensor scales: ms, GB/s (read bf16 twice, write fp8), bytes the same as the eager chunks'"
          + ("" if kernel else "; comfy-kitchen's CUDA backend is not available here"))
    for m, k in shapes:
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16) * 4
        ways = {"eager": lambda: act_quant.quantize(x, per_tensor=True, fused=False)}
        if act_quant.fused_available()[0]:
            ways["fused"] = lambda: act_quant.quantize(x, per_tensor=True, fused=True)
        if kernel:
            ways["comfy-kitchen"] = lambda: kitchen(x)
        ref = ways["eager"]()[0].view(torch.uint8)
        for name, run in ways.items():
            same = (run()[0].view(torch.uint8) == ref).float().mean().item()
            ms = timed(run, repeats, x.device) * 1e3
            print(f"  {m:6d}x{k:<5d} {name:13s} {ms:7.3f} ms {m * k * 5 / ms / 1e6:6.0f} GB/s same: {same:.6%}")
        del x, ref


# The first row is the software rounding at the default tile: the bits every other row must match. 2026-12-04 (H200,
# the 1.3B widths): 4096 ran 2.2-2.8x faster than 16384 and the GPU's rounding gave the same bits, 1.1-1.3x faster.
# Now the 14B widths, where 4096 reads a 5120-wide row twice: does one 8192 tile (3/8 of it masked) pay?
SWEEP = [(4096, 8, False), (4096, 8, True), (4096, 4, True), (8192, 4, True), (8192, 8, True), (8192, 16, True)]


def sweep(shapes, repeats):
    """The fused kernel's settings (max_tile, num_warps, gpu_round) at each shape: ms, GB/s and whether its FP8
    values and scales are the defaults' (the first row), bit for bit."""
    from quant.act_quant_triton import quantize_rows

    print("fused kernel settings: max_tile, num_warps, the GPU's own fp8 rounding; same: bits as the first row")
    for m, k in shapes:
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16) * 4
        moved, first = m * k * 3 + m * 4, None
        for tile, warps, gpu_round in SWEEP:
            run = lambda: quantize_rows(x, max_tile=tile, num_warps=warps, gpu_round=gpu_round)  # noqa: E731
            q, scale = run()
            if first is None:
                first = q.view(torch.uint8), scale
            same = torch.equal(q.view(torch.uint8), first[0]) and torch.equal(scale, first[1])
            ms = timed(run, repeats, x.device) * 1e3
            print(f"  {m:6d}x{k:<5d} {tile:5d} {warps} {str(gpu_round):5s} {ms:7.3f} ms {moved / ms / 1e6:6.0f} GB/s "
                  f"same: {same}")
        del x, first


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--m", type=int, default=32768)
    p.add_argument("--k", type=int, default=5120)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--measure", choices=list(METHODS), help=argparse.SUPPRESS)  # cpu_report's child processes
    p.add_argument("--sweep", action="store_true", help="GPU: the fused kernel's settings (gpu_check.sh)")
    args = p.parse_args()
    if args.measure:
        print(*cpu_extra(args.measure, args.m, args.k))
        return
    if torch.cuda.is_available():
        gpu_report([(args.m, args.k), (51000, 5120), (51000, 13824)], args.repeats)
        per_tensor_report([(51000, 5120), (51000, 13824)], args.repeats)
        if args.sweep:
            sweep([(102000, 5120), (102000, 13824)], args.repeats)
    elif args.sweep:
        print("--sweep: the fused kernel runs on CUDA only")
    cpu_report(args.m, args.k)


if __name__ == "__main__":
    main()
