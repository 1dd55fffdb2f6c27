#!/usr/bin/env python3
"""8-bit attention vs PyTorch SDPA, measured in one run on one device (a script, not a test).

    python bench/attention.py [--lengths 51000 111600] [--repeats 3]

CPU: our PyTorch SageAttention vs SDPA at small shapes (it exists for correctness and for machines without
the kernels, not for speed). CUDA: `sage_attention` (the sageattention kernels) vs SDPA at Wan 14B shapes
(bf16, 40 heads, head dim 128), with TOPS, the ratio, cosine vs SDPA and the SDPA backend that ran.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from attention import sage_attention, sage_attention_reference  # noqa: E402


def timed(fn, repeats, sync):
    fn()
    sync()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t)
    return best


def sdpa_backend(q, k, v):
    """The SDPA backend PyTorch picks for these inputs (tried in its own order)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    for backend in (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                    SDPBackend.MATH):
        try:
            with sdpa_kernel([backend]):
                F.scaled_dot_product_attention(q[:, :, :256], k[:, :, :256], v[:, :, :256])
            return backend.name
        except RuntimeError:
            continue
    return "unknown"


def cosine(a, b):
    return F.cosine_similarity(a.float().flatten(), b.float().flatten(), dim=0).item()


def run_cpu(repeats):
    print(f"device: CPU ({os.cpu_count()} cores), torch {torch.__version__}")
    print(f"{'shape [B,H,L,D]':24s} {'SDPA':>9s} {'ours':>9s} {'ours/SDPA':>10s} {'cosine':>8s}")
    for heads, length, d in ((2, 1024, 64), (4, 2048, 128), (12, 1560, 128)):
        q, k, v = (torch.randn(1, heads, length, d, dtype=torch.bfloat16) for _ in range(3))
        t_sdpa = timed(lambda: F.scaled_dot_product_attention(q, k, v), repeats, lambda: None)
        t_ours = timed(lambda: sage_attention_reference(q, k, v), repeats, lambda: None)
        cos = cosine(sage_attention_reference(q, k, v), F.scaled_dot_product_attention(q.float(), k.float(),
                                                                                       v.float()))
        print(f"{str([1, heads, length, d]):24s} {t_sdpa * 1e3:7.1f}ms {t_ours * 1e3:7.1f}ms {t_ours / t_sdpa:9.2f}x "
              f"{cos:8.5f}")


def run_cuda(lengths, repeats):
    dev = torch.device("cuda")
    print(f"device: {torch.cuda.get_device_name(dev)}, torch {torch.__version__}")
    print(f"{'L':>7s} {'SDPA ms':>9s} {'sage ms':>9s} {'SDPA TOPS':>10s} {'sage TOPS':>10s} {'speedup':>8s} "
          f"{'cosine':>8s} SDPA backend")
    for length in lengths:
        try:
            q, k, v = (torch.randn(1, 40, length, 128, dtype=torch.bfloat16, device=dev) for _ in range(3))
            sync = torch.cuda.synchronize
            t_sdpa = timed(lambda: F.scaled_dot_product_attention(q, k, v), repeats, sync)
            t_sage = timed(lambda: sage_attention(q, k, v), repeats, sync)
            ref = F.scaled_dot_product_attention(q, k, v)
            cos = cosine(sage_attention(q, k, v), ref)
            flops = 4 * 40 * length * length * 128
            print(f"{length:7d} {t_sdpa * 1e3:9.1f} {t_sage * 1e3:9.1f} {flops / t_sdpa / 1e12:10.1f} "
                  f"{flops / t_sage / 1e12:10.1f} {t_sdpa / t_sage:7.2f}x {cos:8.5f} {sdpa_backend(q, k, v)}")
            del q, k, v, ref
            torch.cuda.empty_cache()
        except torch.cuda.OutOfMemoryError:
            print(f"{length:7d} out of memory")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--lengths", type=int, nargs="+", default=[51000, 111600],
                   help="sequence lengths for the GPU run (540P x 97 frames and 720P x 121 frames)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--cpu", action="store_true", help="the CPU part even where a GPU is present")
    args = p.parse_args()
    if torch.cuda.is_available() and not args.cpu:
        run_cuda(args.lengths, args.repeats)
    else:
        run_cpu(args.repeats)


if __name__ == "__main__":
    main()
