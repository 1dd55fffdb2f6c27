"""FP8 weight quantization and FP8 linear layers, in plain PyTorch.

Scales follow the convention of the ComfyUI host's `weight_scale`: stored values are `weight / scale`, so
`dequantized = qweight.float() * scale`.
"""
import logging

import torch
import torch.nn.functional as F

FP8_DTYPES = {"e4m3fn": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}

log = logging.getLogger("skyreels_fp8")
_logged = set()
_failed = {}
# Products per path since import; Sample Video reports the difference over its run.
stats = {"w8a8": 0, "upcast": 0, "fallback": 0}


def _log_once(key, message):
    if key not in _logged:
        _logged.add(key)
        log.warning(message)


def fp8_max(dtype):
    return torch.finfo(dtype).max


def absmax_scale(amax, dtype):
    # All-zero rows/tensors get scale 1 so that 0 / scale stays 0 instead of NaN.
    scale = amax.float() / fp8_max(dtype)
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def _check(dtype, granularity, weight):
    if dtype not in FP8_DTYPES.values():
        raise ValueError(f"dtype must be torch.float8_e4m3fn or torch.float8_e5m2, not {dtype}")
    if granularity not in ("tensor", "channel"):
        raise ValueError(f"granularity must be 'tensor' or 'channel', not {granularity!r}")
    if granularity == "channel" and weight.dim() < 2:
        raise ValueError(f"per-channel quantization needs a 2-D weight, got shape {tuple(weight.shape)}")


class NonFiniteWeight(ValueError):
    pass


def _amax(w, granularity):
    # aminmax reads the weight once and makes no |w| copy.
    lo, hi = torch.aminmax(w) if granularity == "tensor" else torch.aminmax(w.flatten(1), dim=1)
    amax = torch.maximum(-lo, hi)
    # amax propagates NaN/Inf, so this one small check stands for a full isfinite pass over the weight.
    if not torch.isfinite(amax).all():
        raise NonFiniteWeight("the weight has NaN/Inf values")
    return amax


def _scale_of(w, dtype, granularity):
    scale = absmax_scale(_amax(w, granularity), dtype)
    return scale if granularity == "tensor" else scale.reshape(-1, *([1] * (w.dim() - 1)))


def _cast(w, scale, dtype):
    limit = fp8_max(dtype)
    # Clamp before the cast: float8_e4m3fn has no Inf, so an overflow would become NaN.
    return (w.float() / scale).clamp_(-limit, limit).to(dtype)


def quantize_weight(weight, *, dtype=torch.float8_e4m3fn, granularity="tensor"):
    """Absmax-scale `weight` into `dtype`. Returns (qweight, scale) with scale fp32 of shape () or (out, 1).
    Raises ValueError for NaN/Inf weights (a scale cannot be chosen for them)."""
    _check(dtype, granularity, weight)
    w = weight.float()
    scale = _scale_of(w, dtype, granularity)
    qweight = _cast(w, scale, dtype)
    return qweight, scale.reshape(-1, 1) if granularity == "channel" else scale


def quantize_weight_chunked(weight, *, dtype=torch.float8_e4m3fn, granularity="tensor", chunk=1 << 18,
                            error_every=8):
    """`quantize_weight` over blocks of rows (about `chunk` elements each): the fp32 temporaries stay in cache
    (2x faster than whole-tensor passes on CPU) and small whatever the weight's size. Also returns the relative
    error ||W - dequant||_F / ||W||_F, measured on every `error_every`-th block (all of it for weights of up to
    that many blocks): reading fp8 back to fp32 is the slowest step on CPU, and the error is uniform across rows."""
    _check(dtype, granularity, weight)
    if weight.dim() == 0:
        q, scale = quantize_weight(weight, dtype=dtype, granularity=granularity)
        return q, scale, relative_error(weight, q, scale)
    rows = max(1, chunk // max(1, weight[0].numel()))
    limit = fp8_max(dtype)
    scale = _scale_of(weight, dtype, granularity)
    qweight = torch.empty(weight.shape, dtype=dtype)
    err2 = norm2 = 0.0
    starts = range(0, weight.shape[0], rows)
    step = error_every if len(starts) > error_every else 1
    for n, i in enumerate(starts):
        s = scale if granularity == "tensor" else scale[i:i + rows]
        # A copy even for fp32 input: dividing in place would overwrite the caller's weight.
        y = weight[i:i + rows].to(torch.float32, copy=True).div_(s).clamp_(-limit, limit)
        q = qweight[i:i + rows]
        q.copy_(y)
        if n % step:
            continue
        # Errors in scaled units, weighted back by scale^2 (per row for per-channel scales).
        w2 = s.square()
        norm2 += (y.square() * w2).sum().item()
        err2 += (y.sub_(q.float()).square_() * w2).sum().item()
    if granularity == "channel":
        scale = scale.reshape(-1, 1)
    return qweight, scale, (err2 / norm2) ** 0.5 if norm2 > 0 else 0.0


def dequantize_weight(qweight, scale, dtype=torch.bfloat16):
    """Inverse of `quantize_weight`, in `dtype`."""
    s = scale.float()
    if s.dim() == 2 and qweight.dim() > 2:
        s = s.reshape(-1, *([1] * (qweight.dim() - 1)))
    return (qweight.float() * s).to(dtype)


def relative_error(weight, qweight, scale):
    """||W - dequant(Q)||_F / ||W||_F, in fp32 (0 for an all-zero weight)."""
    w = weight.float()
    norm = w.norm()
    if norm == 0:
        return 0.0
    return ((w - dequantize_weight(qweight, scale, torch.float32)).norm() / norm).item()


def _w8a8_unsupported(x, qweight, scale):
    """Why torch._scaled_mm cannot run this call, or None."""
    if x.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return f"activation dtype {x.dtype}"
    k, n = qweight.shape[1], qweight.shape[0]
    if k % 16 or n % 16:
        return f"weight shape {tuple(qweight.shape)} is not a multiple of 16"
    if scale.numel() not in (1, n):
        return f"weight scale of shape {tuple(scale.shape)}"
    if x.device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(x.device)
        if (major, minor) < (8, 9):
            return f"GPU compute capability {major}.{minor} has no FP8 tensor cores (needs 8.9+)"
    elif x.device.type != "cpu":
        return f"device {x.device.type}"
    return None


def fp8_linear(x, qweight, scale, bias=None, *, mode="upcast"):
    """y = x @ dequant(qweight, scale).T + bias, returned in x.dtype.

    mode="upcast" dequantizes the weight to x.dtype and calls F.linear (runs everywhere).
    mode="w8a8" quantizes x per token (row absmax, no clamp of the activation scale) and multiplies in FP8 with
    torch._scaled_mm, per-token x per-channel (or per-tensor) scales. If this call cannot take it, it falls back to
    upcast and logs the reason once.
    """
    if mode == "w8a8":
        reason = _w8a8_unsupported(x, qweight, scale) or _failed.get((x.device.type, qweight.dtype))
        if reason is None:
            try:
                y = _w8a8(x, qweight, scale, bias)
                stats["w8a8"] += 1
                return y
            except RuntimeError as e:  # a kernel this torch build or GPU lacks (e.g. an e5m2 x e4m3 product)
                reason = f"torch._scaled_mm failed: {str(e).splitlines()[0]}"
                _failed[(x.device.type, qweight.dtype)] = reason  # don't retry a failing kernel on every call
        _log_once(("w8a8", reason), f"fp8 matmul unavailable ({reason}); using upcast")
        stats["fallback"] += 1
    elif mode != "upcast":
        raise ValueError(f"mode must be 'upcast' or 'w8a8', not {mode!r}")
    stats["upcast"] += 1
    w = dequantize_weight(qweight, scale, x.dtype)
    return F.linear(x, w, None if bias is None else bias.to(x.dtype))


def _w8a8(x, qweight, scale, bias):
    shape = x.shape
    x2 = x.reshape(-1, shape[-1])
    act_dtype = torch.float8_e4m3fn
    x_scale = absmax_scale(x2.abs().amax(dim=1, keepdim=True), act_dtype)
    limit = fp8_max(act_dtype)
    xq = (x2.float() / x_scale).clamp_(-limit, limit).to(act_dtype)
    n = qweight.shape[0]
    # Row-wise scaling needs both operands row-wise: a per-tensor weight scale is broadcast to (1, N).
    w_scale = scale.float().reshape(1, -1).expand(1, n).contiguous()
    # CUDA's row-wise kernel only writes bf16; other dtypes are cast afterwards.
    out_dtype = torch.bfloat16 if x.device.type == "cuda" else x.dtype
    y = torch._scaled_mm(xq, qweight.t(), scale_a=x_scale, scale_b=w_scale,
                         bias=None if bias is None else bias.to(out_dtype), out_dtype=out_dtype)
    return y.to(x.dtype).reshape(*shape[:-1], n)
