"""8-bit attention: the `sageattention` kernels where they can run (else KernelsUnavailable, and the caller keeps
attention exact), or our PyTorch SageAttention; and the pack's log-once."""
import logging

import torch
import torch.nn.functional as F

from .dispatch import Installed, canonical, choose, device_capability, installed_packages, out_of_memory, sage_major
from .reference import sage_attention_reference

log = logging.getLogger("skyreels_fp8")
KERNEL_HEAD_DIMS = (64, 96, 128)
# sageattention 1.0.6's Triton kernels count the zero padding of the last 64-key block in the softmax denominator
# (measured: output 13% too small at 257 keys, the I2V image context). Such short calls go to exact attention, which is
# cheap there; from 16384 keys the padding is at most 63 keys and its bias stays under the 8-bit error (the guard still
# checks). 2.x on sm86 picks a Triton kernel that loads the padding the same way (read in its source, not measured).
RAGGED_EXACT_BELOW = 16384
_logged = set()
_kernel = None
_broken = None  # why the kernels failed at run time, once they have


def log_once(key, message, level=logging.WARNING, seen=None):
    """The pack's one log-once: `message` the first time `key` is seen (in `seen`, the process's set by default)."""
    seen = _logged if seen is None else seen
    if key not in seen:
        seen.add(key)
        log.log(level, message)


def kernel_unavailable(device):
    """None if the sageattention kernels can run on `device`, else why not (nothing is probed per call)."""
    backend, reason = choose("sageattention", device.type, device_capability(device), Installed(*installed_packages()))
    return _broken or (None if backend == "sageattention" else reason)


def _sage2():
    return sage_major(installed_packages()[0]) >= 2


def _kernel_call(q, k, v, layout):
    global _kernel
    if _kernel is None:
        from sageattention import sageattn  # imports triton: only on first use, never at pack import

        _kernel = sageattn
    d, pad, extra = q.shape[-1], None, {}
    if not _sage2():  # 1.0.6 smooths K in place (so smooth a copy) and takes only KERNEL_HEAD_DIMS; 2.x does both
        k = k - k.mean(dim=1 if layout == "NHD" else 2, keepdim=True)
        pad = next((p - d for p in KERNEL_HEAD_DIMS if p >= d), None)
        if pad:  # zero-padded head dims change neither q.k nor the kept part of the output
            q, k, v = (F.pad(t, (0, pad)) for t in (q, k, v))
        extra = {"smooth_k": False, "sm_scale": d ** -0.5}   # the unpadded head dim's
    q, k, v = (t.contiguous() if t.stride(-1) != 1 else t for t in (q, k, v))
    out = _kernel(q, k, v, tensor_layout=layout, **extra)
    return out[..., :d] if pad else out


class KernelsUnavailable(RuntimeError):
    """The sageattention kernels cannot run these inputs here (the caller falls back to exact attention)."""


def sage_attention(q, k, v, *, layout="HND", mode="sageattention"):
    """8-bit attention, same shape and dtype as q; q, k and v are never modified. "sageattention": the kernels, or
    KernelsUnavailable where they cannot run; "reference": the PyTorch implementation."""
    global _broken
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"sage_attention takes fp32/bf16/fp16 tensors, not {q.dtype}")
    if canonical(mode) == "reference":
        return sage_attention_reference(q, k, v, layout=layout)
    reason = kernel_unavailable(q.device) or _shape_unsupported(q)
    if reason is None:
        try:
            return _kernel_call(q, k, v, layout)
        except Exception as e:  # an import or compile failure, a wheel without this GPU's kernels ("no kernel image
            # is available"): never fail the graph for it
            if out_of_memory(e):
                raise
            reason = _broken = f"the sageattention kernels failed ({type(e).__name__}: {e})"
    raise KernelsUnavailable(reason)


def miscounted_padding(kv_len, device):
    """Why calls with kv_len keys use exact attention where the installed kernels would miscount the padding of the
    last 64-key block (RAGGED_EXACT_BELOW), or None."""
    if kv_len % 64 and kv_len < RAGGED_EXACT_BELOW and (not _sage2() or device_capability(device) == (8, 6)):
        return (f"{kv_len} keys is not a multiple of 64: sageattention here would miscount the padding, so these "
                "calls use exact attention")
    return None


def _shape_unsupported(q):
    """Why the kernels cannot take these inputs, or None."""
    if q.shape[-1] > max(KERNEL_HEAD_DIMS):
        return f"head dim {q.shape[-1]} (the kernels take up to {max(KERNEL_HEAD_DIMS)})"
    if q.dtype == torch.float32 and _sage2():
        return "fp32 inputs (sageattention 2.x takes fp16/bf16)"
    return None


def agreement(out, exact):
    """How far an attention output is from the exact one: cosine similarity, max and relative error."""
    a, e = out.float(), exact.float()
    cos = F.cosine_similarity(a.flatten(), e.flatten(), dim=0).item()
    return {"cosine": cos, "max_error": (a - e).abs().max().item(), "rel_error": ((a - e).norm() / e.norm()).item()}
