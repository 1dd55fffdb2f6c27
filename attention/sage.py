"""8-bit attention with a safe path everywhere: the `sageattention` kernels where they can run, our PyTorch
SageAttention elsewhere, exact attention where 8-bit cannot apply (masks). Each fallback is logged once."""
import importlib.util
import logging

import torch
import torch.nn.functional as F

from .reference import sage_attention_reference, to_hnd

log = logging.getLogger("skyreels_fp8")
KERNEL_HEAD_DIMS = (64, 96, 128)
# sageattention 1.0.6's kernels count the zero padding of the last 64-key block in the softmax denominator when
# the key length is not a multiple of 64 (measured on its Triton kernels: output 13% too small at 257 keys, the
# I2V image context). Below this length such calls go to exact attention, which is cheap there; above it the
# padding is at most 63 of >= 16384 keys and the bias stays under the 8-bit error (the node's guard still checks).
RAGGED_EXACT_BELOW = 16384
_logged = set()
_kernel = None
_broken = None  # why the kernels failed at run time, once they have


def log_once(key, message):
    if key not in _logged:
        _logged.add(key)
        log.warning(message)


def kernel_unavailable(device):
    """None if the sageattention kernels can run on `device`, else why not (checked without importing it)."""
    if _broken:
        return _broken
    if importlib.util.find_spec("sageattention") is None:
        return "No module named 'sageattention' (pip install sageattention)"
    if importlib.util.find_spec("triton") is None:  # sageattention does not declare it; Windows torch lacks it
        return "No module named 'triton' (sageattention's kernels need it: pip install triton, or triton-windows)"
    if device.type != "cuda":
        return f"{device.type} device (the sageattention kernels need an NVIDIA GPU)"
    major, minor = torch.cuda.get_device_capability(device)
    if major < 8:
        return f"GPU compute capability {major}.{minor} (the sageattention 1.x kernels need 8.0+)"
    return None


def _mark_broken(reason):
    global _broken
    _broken = reason
    return reason


def _sageattn():
    global _kernel
    if _kernel is None:
        from sageattention import sageattn  # imports triton: only on first use, never at pack import

        _kernel = sageattn
    return _kernel


def exact_attention(q, k, v, *, layout="HND", is_causal=False, sm_scale=None, attn_mask=None):
    """PyTorch SDPA in the given layout (the reference every other path is compared with)."""
    qh, kh, vh = (to_hnd(t, layout) for t in (q, k, v))
    if kh.shape[1] != qh.shape[1]:
        kh, vh = (t.repeat_interleave(qh.shape[1] // kh.shape[1], dim=1) for t in (kh, vh))
    out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=attn_mask, is_causal=is_causal, scale=sm_scale)
    return out if layout == "HND" else out.transpose(1, 2)


def _kernel_call(q, k, v, layout, is_causal, sm_scale):
    d = q.shape[-1]
    sm_scale = d ** -0.5 if sm_scale is None else sm_scale
    # sageattention 1.0.6 subtracts the K mean from k in place: hand it a copy, smoothed here.
    seq = 1 if layout == "NHD" else 2
    k = k - k.mean(dim=seq, keepdim=True)
    pad = next((p - d for p in KERNEL_HEAD_DIMS if p >= d), None)
    if pad:  # zero-padded head dims change neither q.k nor the kept part of the output
        q, k, v = (F.pad(t, (0, pad)) for t in (q, k, v))
    q, k, v = (t.contiguous() if t.stride(-1) != 1 else t for t in (q, k, v))
    out = _sageattn()(q, k, v, tensor_layout=layout, is_causal=is_causal, sm_scale=sm_scale, smooth_k=False)
    return out[..., :d] if pad else out


def sage_attention(q, k, v, *, layout="HND", is_causal=False, sm_scale=None, attn_mask=None, mode="auto"):
    """8-bit attention, same shape and dtype as q; q, k and v are never modified.

    mode "auto": the sageattention kernels where they can run, else our PyTorch implementation;
    "sageattn": the kernels (falls back like auto, with a log line, where they cannot run);
    "reference": our PyTorch implementation. A mask always means exact attention.
    """
    if attn_mask is not None:
        log_once("mask", "8-bit attention has no mask support: masked attention calls stay exact")
        return exact_attention(q, k, v, layout=layout, is_causal=is_causal, sm_scale=sm_scale, attn_mask=attn_mask)
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"sage_attention takes fp32/bf16/fp16 tensors, not {q.dtype}")
    if mode in ("auto", "sageattn"):
        reason = kernel_unavailable(q.device)
        if reason is None and q.shape[-1] > max(KERNEL_HEAD_DIMS):
            reason = f"head dim {q.shape[-1]} (the kernels take up to {max(KERNEL_HEAD_DIMS)})"
        if reason is None and is_causal and q.shape[-2 if layout == "HND" else 1] != k.shape[-2 if layout == "HND" else 1]:
            reason = "causal attention with different query and key lengths"
        kv_len = k.shape[2 if layout == "HND" else 1]
        if reason is None and kv_len % 64 and kv_len < RAGGED_EXACT_BELOW:
            log_once(("ragged", kv_len), f"{kv_len} keys is not a multiple of 64: sageattention 1.0.6 would "
                                         "miscount the padding, so these calls use exact attention")
            return exact_attention(q, k, v, layout=layout, is_causal=is_causal, sm_scale=sm_scale)
        if reason is None:
            try:
                return _kernel_call(q, k, v, layout, is_causal, sm_scale)
            except Exception as e:  # an import or compile failure of the kernels: never fail the graph for it
                reason = _mark_broken(f"the sageattention kernels failed ({type(e).__name__}: {e})")
        log_once(("kernel", reason), f"SageAttention kernels not used: {reason}; using the PyTorch SageAttention")
    elif mode != "reference":
        raise ValueError(f"mode must be 'auto', 'sageattn' or 'reference', not {mode!r}")
    return sage_attention_reference(q, k, v, layout=layout, is_causal=is_causal, sm_scale=sm_scale)


def compare(q, k, v, *, layout="HND", is_causal=False, sm_scale=None, mode="auto"):
    """How far sage_attention is from exact attention on these inputs: cosine similarity, max and relative error."""
    a = sage_attention(q, k, v, layout=layout, is_causal=is_causal, sm_scale=sm_scale, mode=mode).float()
    e = exact_attention(q.float(), k.float(), v.float(), layout=layout, is_causal=is_causal, sm_scale=sm_scale)
    cos = F.cosine_similarity(a.flatten(), e.flatten(), dim=0).item()
    return {"cosine": cos, "max_error": (a - e).abs().max().item(), "rel_error": ((a - e).norm() / e.norm()).item()}
