#!/usr/bin/env python3
"""Benchmark the converter on a synthetic checkpoint with the real SkyReels-V2 1.3B shapes (a script, not a test).

    python bench/convert.py [--size 1.3B|14B] [--keep] [--policy]

Prints, all measured in this run on this machine:
  - conversion throughput relative to copying the same bytes (read + write + fsync), file in the page cache for both;
  - peak RSS of the conversion (the process's peak, reset just before it starts, minus its RSS then), relative
    to the largest tensor of the model;
  - output/input bytes; and the exact fp8/bf16 weight-byte ratio of the 1.3B and 14B models from shapes alone.
--policy prints the share of weight bytes in the quantized block Linears (the numbers quant/policy.py cites).
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import torch  # noqa: E402

from quant import tiny  # noqa: E402
from quant.policy import should_quantize  # noqa: E402
from quant.writer import SafetensorsWriter  # noqa: E402

MiB = 1024 ** 2


def numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def model_shapes(size, variant="T2V", num_layers=None):
    """{key: shape} of a SkyReels-V2 model of that size; num_layers: fewer blocks of the same widths."""
    return tiny.info(variant, **dict(tiny.REAL[size], **({"num_layers": num_layers} if num_layers else {}))
                     ).expected_shapes()


def byte_ratio(size):
    """fp8 file weight bytes / bf16 weight bytes, exactly, from shapes (scales and comfy_quant included)."""
    shapes = model_shapes(size)
    layers = tiny.REAL[size]["num_layers"]
    bf16 = sum(2 * numel(s) for s in shapes.values())
    conf = len(json.dumps({"format": "float8_e4m3fn"}))
    fp8 = sum(numel(s) + 4 + conf if should_quantize(k, layers) else 2 * numel(s) for k, s in shapes.items())
    linear = sum(2 * numel(s) for k, s in shapes.items() if should_quantize(k, layers))
    return fp8 / bf16, linear / bf16


def write_synthetic(path, size, num_layers=None):
    shapes = model_shapes(size, num_layers=num_layers)
    g = torch.Generator().manual_seed(0)
    with SafetensorsWriter(path, {k: (torch.bfloat16, s) for k, s in shapes.items()}) as out:
        for k, s in shapes.items():
            out.write(k, (torch.randn(s, generator=g) * 0.02).bfloat16())
    return max(2 * numel(s) for s in shapes.values())


def copy_with_fsync(src, dst, block=16 * MiB):
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        while chunk := fi.read(block):
            fo.write(chunk)
        fo.flush()
        os.fsync(fo.fileno())


CHILD = r"""
import sys, time, json
sys.path.insert(0, {repo!r})
import torch, safetensors
from quant import convert, Options

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024

before = status("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak (VmHWM) to the current RSS: the peak below is the conversion's alone
t = time.perf_counter()
convert({src!r}, {dst!r}, Options())
print(json.dumps(dict(before=before, peak=status("VmHWM"), seconds=time.perf_counter() - t)))
"""


def convert_in_child(src, dst):
    code = CHILD.format(repo=REPO, src=src, dst=dst)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--size", choices=list(tiny.REAL), default="1.3B")
    p.add_argument("--policy", action="store_true", help="only print the byte shares from shapes")
    p.add_argument("--keep", action="store_true", help="keep the temp folder")
    args = p.parse_args()
    print(f"device: CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores), torch {torch.__version__}")
    for size in tiny.REAL:
        ratio, share = byte_ratio(size)
        print(f"{size}: fp8/bf16 weight bytes = {ratio:.4f}; block Linears = {share * 100:.2f}% of bf16 weight bytes")
    if args.policy:
        return
    folder = tempfile.mkdtemp(prefix="skyreels-bench-")
    src, dst, copy = (os.path.join(folder, n) for n in ("src.safetensors", "fp8.safetensors", "copy.safetensors"))
    t = time.perf_counter()
    largest = write_synthetic(src, args.size)
    size_in = os.path.getsize(src)
    print(f"synthetic {args.size} bf16 checkpoint: {size_in / 1024 ** 3:.2f} GiB in {time.perf_counter() - t:.0f} s")

    copy_s = []
    for _ in range(2):
        t = time.perf_counter()
        copy_with_fsync(src, copy)
        copy_s.append(time.perf_counter() - t)
        os.remove(copy)
    conv = convert_in_child(src, dst)
    extra = conv["peak"] - conv["before"]
    print(f"copy (read+write+fsync): {min(copy_s):.2f} s   convert: {conv['seconds']:.2f} s")
    print(f"throughput vs copy: {min(copy_s) / conv['seconds']:.2f}x   (goal >= 0.7)")
    print(f"peak RSS of the conversion: {extra / MiB:.0f} MiB over the {conv['before'] / MiB:.0f} MiB of the "
          f"process before it; largest tensor {largest / MiB:.0f} MiB; excess {(extra - largest) / MiB:.0f} MiB "
          "(goal <= 512 MiB)")
    print(f"output/input bytes: {os.path.getsize(dst) / size_in:.4f}")
    if not args.keep:
        for f in (src, dst):
            os.remove(f)
        os.rmdir(folder)


if __name__ == "__main__":
    main()
