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


def _log_once(key, message):
    if key not in _logged:
        _logged.add(key)
        log.warning(message)


def fp8_max(dtype):
    return torch.finfo(dtype).max


def _absmax_scale(amax, dtype):
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


def _scale_of(w, dtype, granularity):
    if granularity == "tensor":
        return _absmax_scale(w.abs().amax(), dtype)
    return _absmax_scale(w.abs().flatten(1).amax(dim=1), dtype).reshape(-1, *([1] * (w.dim() - 1)))


def _cast(w, scale, dtype):
    limit = fp8_max(dtype)
    # Clamp before the cast: float8_e4m3fn has no Inf, so an overflow would become NaN.
    return (w.float() / scale).clamp_(-limit, limit).to(dtype)


def quantize_weight(weight, *, dtype=torch.float8_e4m3fn, granularity="tensor"):
    """Absmax-scale `weight` into `dtype`. Returns (qweight, scale) with scale fp32 of shape () or (out, 1)."""
    _check(dtype, granularity, weight)
    w = weight.float()
    scale = _scale_of(w, dtype, granularity)
    qweight = _cast(w, scale, dtype)
    return qweight, scale.reshape(-1, 1) if granularity == "channel" else scale


def quantize_weight_chunked(weight, *, dtype=torch.float8_e4m3fn, granularity="tensor", chunk=1 << 22):
    """`quantize_weight` over blocks of rows (about `chunk` elements each), so fp32 temporaries stay small
    whatever the weight's size. Also returns the relative error ||W - dequant||_F / ||W||_F."""
    _check(dtype, granularity, weight)
    rows = max(1, chunk // max(1, weight[0].numel())) if weight.dim() else 1
    parts = [weight] if weight.dim() == 0 else list(weight.split(rows))
    scale = None
    if granularity == "tensor":
        scale = _absmax_scale(torch.stack([p.abs().amax().float() for p in parts]).amax(), dtype)
    qweight = torch.empty(weight.shape, dtype=dtype)
    q_parts = [qweight] if weight.dim() == 0 else qweight.split(rows)
    scales, err2, norm2 = [], 0.0, 0.0
    for p, q in zip(parts, q_parts):
        w = p.float()
        s = scale if scale is not None else _scale_of(w, dtype, granularity)
        q.copy_(_cast(w, s, dtype))
        err2 += (w - q.float() * s).square().sum().item()
        norm2 += w.square().sum().item()
        scales.append(s)
    if granularity == "channel":
        scale = torch.cat([s.reshape(-1) for s in scales]).reshape(-1, 1)
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
        reason = _w8a8_unsupported(x, qweight, scale)
        if reason is None:
            return _w8a8(x, qweight, scale, bias)
        _log_once(("w8a8", reason), f"fp8 matmul unavailable ({reason}); using upcast")
    elif mode != "upcast":
        raise ValueError(f"mode must be 'upcast' or 'w8a8', not {mode!r}")
    w = dequantize_weight(qweight, scale, x.dtype)
    return F.linear(x, w, None if bias is None else bias.to(x.dtype))


def _w8a8(x, qweight, scale, bias):
    shape = x.shape
    x2 = x.reshape(-1, shape[-1])
    act_dtype = torch.float8_e4m3fn
    x_scale = _absmax_scale(x2.abs().amax(dim=1, keepdim=True), act_dtype)
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
