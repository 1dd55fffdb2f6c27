#!/usr/bin/env python3
"""8-bit attention backends vs PyTorch SDPA, measured in one run on one device (a script, not a test).

    python bench/attention.py [--lengths 51000 111600] [--repeats 3] [--host PATH] [--cpu]

First what Patch SageAttention's dispatch decides here for each mode. CUDA: every 8-bit backend that can run on
this GPU (the sageattention kernels through this pack's wrapper; ComfyUI's comfy_kitchen_int8 and sage3 where a
host is found and registers them) vs SDPA at Wan 14B shapes (bf16, 40 heads, head dim 128), in PyTorch's own order
and with FlashAttention or cuDNN forced (ComfyUI's order runs FlashAttention first; PyTorch's own runs cuDNN first on
sm90/sm100, and the line after each length names what it ran): time, TOPS, speedup,
cosine vs SDPA, peak VRAM the call adds to q, k and v, and the cost of the guard's NaN/Inf check relative to the
call. CPU: our PyTorch SageAttention vs SDPA at small shapes (it exists for correctness and for machines without
the kernels, not for speed).
"""
import argparse
import inspect
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from attention.reference import sage_attention_reference  # noqa: E402
from attention.sage import sage_attention  # noqa: E402
from attention.dispatch import MODES, Installed, choose, device_capability, installed_packages  # noqa: E402
from attention.guard import all_finite  # noqa: E402
from generate_video_fp8 import find_host  # noqa: E402

HOST_NAMES = {"comfy-kitchen int8": "comfy_kitchen_int8", "sage3": "sage3"}


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
    """The SDPA backend PyTorch's own order picks for these inputs (its dispatcher's choice)."""
    from torch.nn.attention import SDPBackend

    try:
        return SDPBackend(torch._fused_sdp_choice(q, k, v)).name
    except Exception as e:  # a private function: a torch without it
        return f"unknown ({type(e).__name__})"


def forced_sdpa(name):
    """SDPA with one backend only: ComfyUI's order runs FlashAttention first, PyTorch's own cuDNN on sm90/sm100."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def run(q, k, v):
        with sdpa_kernel([getattr(SDPBackend, name)]):
            return F.scaled_dot_product_attention(q, k, v)
    return run


def cosine(a, b):
    return F.cosine_similarity(a.float().flatten(), b.float().flatten(), dim=0).item()


def host_functions(host, cpu):
    """The host's registered comfy_kitchen_int8 / sage3 attention functions (unwrapped), {} without a host."""
    if host is None:
        return {}
    try:
        sys.path.insert(0, host)
        import comfy.cli_args

        comfy.cli_args.args.cpu = cpu
        from comfy.ldm.modules.attention import get_attention_function
    except Exception as e:  # a host that does not import here: measure without its backends, and say so
        print(f"host at {host} not imported ({type(e).__name__}: {e}): its attention functions are not measured")
        return {}
    found = {name: get_attention_function(name, None) for name in HOST_NAMES.values()}
    return {name: inspect.unwrap(fn) for name, fn in found.items() if fn is not None}


def decisions(device, host_fns):
    """Print what each mode runs here; return the 8-bit backends to measure: label -> f(q, k, v) in HND."""
    version, triton = installed_packages()
    pkgs = Installed(version, triton, "comfy_kitchen_int8" in host_fns, "sage3" in host_fns)
    cc = device_capability(device)
    print(f"dispatch on {device.type}{f' sm{cc[0]}{cc[1]}' if cc else ''}, {pkgs}:")
    runnable = {}
    for mode in MODES:
        backend, why = choose(mode, device.type, cc, pkgs)
        print(f"  {mode:20s} -> {backend}: {why}")
        if backend == "sageattention":
            runnable[f"sageattention {version}"] = lambda q, k, v: sage_attention(q, k, v, mode="sageattention")
        elif backend in HOST_NAMES:
            fn = host_fns[HOST_NAMES[backend]]
            runnable[backend] = lambda q, k, v, fn=fn: fn(q, k, v, q.shape[1], skip_reshape=True,
                                                          skip_output_reshape=True)
    return runnable


def run_cpu(repeats, host):
    print(f"device: CPU ({os.cpu_count()} cores), torch {torch.__version__}")
    decisions(torch.device("cpu"), host_functions(host, cpu=True))
    print(f"{'shape [B,H,L,D]':24s} {'SDPA':>9s} {'ours':>9s} {'ours/SDPA':>10s} {'cosine':>8s} {'NaN check':>10s}")
    for heads, length, d in ((2, 1024, 64), (4, 2048, 128), (12, 1560, 128)):
        q, k, v = (torch.randn(1, heads, length, d, dtype=torch.bfloat16) for _ in range(3))
        t_sdpa = timed(lambda: F.scaled_dot_product_attention(q, k, v), repeats, lambda: None)
        t_ours = timed(lambda: sage_attention_reference(q, k, v), repeats, lambda: None)
        out = sage_attention_reference(q, k, v)
        check = timed(lambda: all_finite(out), repeats, lambda: None)
        cos = cosine(out, F.scaled_dot_product_attention(q.float(), k.float(), v.float()))
        print(f"{str([1, heads, length, d]):24s} {t_sdpa * 1e3:7.1f}ms {t_ours * 1e3:7.1f}ms {t_ours / t_sdpa:9.2f}x "
              f"{cos:8.5f} {check / t_ours:9.3%}")


def measure(fn, q, k, v, repeats):
    """(output, best seconds, peak bytes the call adds, best seconds of the NaN/Inf check on its output)."""
    sync = torch.cuda.synchronize
    sync()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = fn(q, k, v)
    sync()
    peak = torch.cuda.max_memory_allocated() - base
    return out, timed(lambda: fn(q, k, v), repeats, sync), peak, timed(lambda: all_finite(out), repeats, sync)


def run_cuda(lengths, repeats, host):
    dev = torch.device("cuda")
    print(f"device: {torch.cuda.get_device_name(dev)}, torch {torch.__version__}")
    backends = {"SDPA": lambda q, k, v: F.scaled_dot_product_attention(q, k, v),
                "SDPA FlashAttention only": forced_sdpa("FLASH_ATTENTION"),
                "SDPA cuDNN only": forced_sdpa("CUDNN_ATTENTION")}
    backends.update(decisions(dev, host_functions(host, cpu=False)))
    print(f"{'L':>7s} {'backend':24s} {'ms':>8s} {'TOPS':>6s} {'speedup':>8s} {'cosine':>8s} {'peak GiB':>9s} "
          f"{'NaN check':>10s}")
    for length in lengths:
        q, k, v = (torch.randn(1, 40, length, 128, dtype=torch.bfloat16, device=dev) for _ in range(3))
        flops = 4 * 40 * length * length * 128
        ref, t_ref = None, None
        for name, fn in backends.items():
            try:
                out, t, peak, check = measure(fn, q, k, v, repeats)
            except torch.cuda.OutOfMemoryError:
                print(f"{length:7d} {name:24s} out of memory")
                continue
            except Exception as e:  # a backend that fails here: the others are still measured
                print(f"{length:7d} {name:24s} failed: {type(e).__name__}: {e}")
                continue
            if ref is None:
                ref, t_ref = out, t
            print(f"{length:7d} {name:24s} {t * 1e3:8.1f} {flops / t / 1e12:6.1f} {t_ref / t:7.2f}x "
                  f"{cosine(out, ref):8.5f} {peak / 2**30:9.2f} {check / t:9.3%}")
            del out
        print(f"{length:7d} SDPA (PyTorch's own order) ran: {sdpa_backend(q, k, v)}")
        del q, k, v, ref
        torch.cuda.empty_cache()
    cross_attention(dev)


def cross_attention(dev):
    """cuDNN's attention (which Patch SageAttention's exact attention runs first where PyTorch does) against SDPA in
    fp32 on Wan's other calls: text cross-attention (512 keys) and I2V's image tokens (257 keys), the 14B model's 40
    heads, bf16 and fp16 (self-attention too), in the layout ComfyUI hands over (a view of [B, L, heads * D])."""
    for keys, dtype in [(512, torch.bfloat16), (257, torch.bfloat16), (257, torch.float16), (51000, torch.float16)]:
        q = torch.randn(1, 51000, 40 * 128, dtype=dtype, device=dev).view(1, 51000, 40, 128).transpose(1, 2)
        k, v = (torch.randn(1, keys, 40 * 128, dtype=dtype, device=dev).view(1, keys, 40, 128).transpose(1, 2)
                for _ in range(2))
        try:
            out = forced_sdpa("CUDNN_ATTENTION")(q, k, v)
            ref = torch.cat([F.scaled_dot_product_attention(*(t[:, h:h + 8].float() for t in (q, k, v)))
                             for h in range(0, 40, 8)], dim=1)    # in fp32, 8 heads at a time
            err = ((out.float() - ref).norm() / ref.norm()).item()
            print(f"cuDNN attention, 51000 queries x {keys} keys, {str(dtype)[6:]}: error vs fp32 {err:.2e}, "
                  f"cosine {cosine(out, ref):.6f}")
        except Exception as e:  # cuDNN refusing a shape is what this row is for
            print(f"cuDNN attention, 51000 queries x {keys} keys, {str(dtype)[6:]}: failed: {type(e).__name__}: {e}")
        del q, k, v
        torch.cuda.empty_cache()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--lengths", type=int, nargs="+", default=[51000, 111600],
                   help="sequence lengths for the GPU run (540P x 97 frames and 720P x 121 frames)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--host", default=None, help="ComfyUI folder (default: the usual search, as the tests do)")
    p.add_argument("--cpu", action="store_true", help="the CPU part even where a GPU is present")
    args = p.parse_args()
    host = args.host or find_host()
    if torch.cuda.is_available() and not args.cpu:
        run_cuda(args.lengths, args.repeats, host)
    else:
        run_cpu(args.repeats, host)


if __name__ == "__main__":
    main()
