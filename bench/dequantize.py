#!/usr/bin/env python3
"""Memory of dequantizing one FP8 weight to bf16 on the CPU, as every upcast product and every host cast of our FP8
layers does (a script, not a test).

    python bench/dequantize.py [--n 13824] [--k 5120]

Each method runs in a fresh process; its peak resident bytes beyond the FP8 weight, less the bf16 result, is what
it takes in temporaries (Linux VmHWM, reset through /proc/self/clear_refs). Methods: quant.fp8.dequantize_weight (row
blocks), the whole-tensor in-place formula it replaced, and a plain fp32 round trip. The default is Wan-14B's FFN
weight (13824 x 5120, per-channel scales).
"""
import argparse
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from bench.act_quant import MiB, _status_kib  # noqa: E402
from quant.fp8 import dequantize_weight  # noqa: E402

METHODS = {
    "row blocks": lambda q, s: dequantize_weight(q, s, torch.bfloat16),
    "whole, in place": lambda q, s: q.to(torch.bfloat16).mul_(s.float().reshape(-1, 1)),   # before the fix
    "via fp32": lambda q, s: (q.float() * s.float().reshape(-1, 1)).to(torch.bfloat16),
}


def measure(method, n, k):
    """In a fresh process: temporaries' peak bytes (beyond the FP8 weight and the bf16 result), and seconds."""
    q = torch.randn(n, k).to(torch.float8_e4m3fn)
    scale = torch.rand(n, 1) / 448
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")   # resets VmHWM to the current VmRSS
    base = _status_kib("VmRSS")
    start = time.perf_counter()
    out = METHODS[method](q, scale)
    seconds = time.perf_counter() - start
    return (_status_kib("VmHWM") - base) * 1024 - out.nbytes, seconds


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=13824)
    p.add_argument("--k", type=int, default=5120)
    p.add_argument("--measure", choices=list(METHODS), help=argparse.SUPPRESS)   # main's child processes
    args = p.parse_args()
    if args.measure:
        print(*measure(args.measure, args.n, args.k))
        return
    result = args.n * args.k * 2
    print(f"CPU ({os.cpu_count()} cores), torch {torch.__version__}: FP8 weight {args.n}x{args.k} to bf16 "
          f"({result / MiB:.0f} MiB), temporaries beyond the result:")
    for method in METHODS:   # each in a fresh process: memory one frees would hide the next one's peak
        out = subprocess.run([sys.executable, os.path.abspath(__file__), "--n", str(args.n), "--k", str(args.k),
                              "--measure", method], capture_output=True, text=True, check=True)
        extra, seconds = map(float, out.stdout.split())
        print(f"  {method:16s} {extra / MiB:7.0f} MiB = {extra / result:.2f}x the result, {seconds:.2f} s")


if __name__ == "__main__":
    main()
