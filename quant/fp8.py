"""FP8 weight quantization and FP8 linear layers, in plain PyTorch. Scales follow the host's `weight_scale`
convention: stored values are `weight / scale`, so `dequantized = qweight.float() * scale`."""
import torch
import torch.nn.functional as F

from . import act_quant, fp8_plan
from .fp8_plan import device_plan
from .scale import absmax, absmax_scale, row_blocks, saturate

FP8_DTYPES = {"e4m3fn": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}
DEQUANTIZE_VALUES = 1 << 20   # values per block of a CPU dequantization (a 4 MiB fp32 temporary)

_failed = {}
# Products per path since import, and why fp8 matmul fell back to upcast; Sample Video reports them over its run.
stats = {"w8a8": 0, "upcast": 0, "fallback": 0}
fallback_reasons = {}   # reason: products


def _check(dtype, granularity, weight):
    if dtype not in FP8_DTYPES.values():
        raise ValueError(f"dtype must be torch.float8_e4m3fn or torch.float8_e5m2, not {dtype}")
    if granularity not in ("tensor", "channel"):
        raise ValueError(f"granularity must be 'tensor' or 'channel', not {granularity!r}")
    if granularity == "channel" and weight.dim() < 2:
        raise ValueError(f"per-channel quantization needs a 2-D weight, got shape {tuple(weight.shape)}")


class NonFiniteWeight(ValueError):
    pass


def _scale_of(w, dtype, granularity):
    amax = absmax(w) if granularity == "tensor" else absmax(w.flatten(1), dim=1)
    # amax propagates NaN/Inf, so this one small check stands for a full isfinite pass over the weight.
    if not torch.isfinite(amax).all():
        raise NonFiniteWeight("the weight has NaN/Inf values")
    scale = absmax_scale(amax, dtype)
    return scale if granularity == "tensor" else scale.reshape(-1, *([1] * (w.dim() - 1)))


def quantize_weight(weight, *, dtype=torch.float8_e4m3fn, granularity="tensor"):
    """(qweight, scale) of `quantize_weight_chunked`, without its error."""
    return quantize_weight_chunked(weight, dtype=dtype, granularity=granularity)[:2]


def quantize_weight_chunked(weight, *, dtype=torch.float8_e4m3fn, granularity="tensor", chunk=1 << 18,
                            error_every=8):
    """Absmax-scale `weight` into `dtype`: (qweight, fp32 scale of shape () or (out, 1), error); ValueError for
    NaN/Inf. In blocks of about `chunk` values (small fp32 temporaries, in cache: 2x faster on CPU); the error is
    ||W - dequant||_F / ||W||_F from every `error_every`-th block: reading fp8 back is slow on CPU; rows err alike."""
    _check(dtype, granularity, weight)
    scale = _scale_of(weight, dtype, granularity)
    qweight = torch.empty(weight.shape, dtype=dtype, device=weight.device)
    err2 = norm2 = 0.0
    blocks = list(row_blocks(weight, chunk, scale))
    step = error_every if len(blocks) > error_every else 1
    for n, (i, j, s) in enumerate(blocks):
        # A copy even for fp32 input: dividing in place would overwrite the caller's weight.
        y = saturate(weight[i:j].to(torch.float32, copy=True), s, dtype)
        q = qweight[i:j].copy_(y)
        if n % step == 0:
            # Errors in scaled units, weighted back by scale^2 (per row for per-channel scales).
            w2 = s.square()
            norm2 += (y.square() * w2).sum().item()
            err2 += (y.sub_(q.float()).square_() * w2).sum().item()
    scale = scale.reshape(-1, 1) if granularity == "channel" else scale
    return qweight, scale, (err2 / norm2) ** 0.5 if norm2 > 0 else 0.0


def dequantize_weight(qweight, scale, dtype=torch.bfloat16):
    """Inverse of `quantize_weight`, in `dtype`: one copy in `dtype` (fp8 values are exact in bf16/fp16), the fp32
    scale applied with one rounding; an fp32 copy of the weight first would double or treble the peak."""
    # (1, ...) or (rows, 1, ...), never 0-d: promotion keeps the multiply in fp32 (CUDA would cast a 0-d scale to
    # bf16/fp16 first, a second rounding)
    scale = scale.float().reshape(-1, *([1] * (qweight.dim() - 1)))
    if dtype == torch.float32 or qweight.device.type != "cpu":
        return qweight.to(dtype).mul_(scale)   # a GPU kernel converts as it reads: no temporary
    # The CPU multiplies a bf16/fp16 tensor by an fp32 one through whole fp32 copies of both (4x the result's bytes,
    # 540 MiB for a 14B FFN weight, on every upcast product): row blocks bound them to one block's fp32 copy. The
    # same numbers: the product in fp32, rounded once to `dtype`.
    out = torch.empty(qweight.shape, dtype=dtype)
    for i, j, block in row_blocks(qweight, DEQUANTIZE_VALUES, scale):
        out[i:j] = qweight[i:j].to(torch.float32).mul_(block)
    return out


def relative_error(weight, qweight, scale):
    """||W - dequant(Q)||_F / ||W||_F, in fp32 (0 for an all-zero weight). In row blocks, as dequantize_weight: whole
    fp32 copies (W, dequant(Q), their difference) made the converter's --verify peak 3x its own."""
    scale = scale.float().reshape(-1, *([1] * (qweight.dim() - 1)))
    diff = norm = 0.0
    for i, j, block in row_blocks(qweight, DEQUANTIZE_VALUES, scale):
        w = weight[i:j].float()
        deq = qweight[i:j].float().mul_(block)
        diff += float(deq.sub_(w).norm()) ** 2
        norm += float(w.norm()) ** 2
    return (diff / norm) ** 0.5 if norm else 0.0


def _w8a8_plan(x, qweight, scale):
    """(plan, note) from quant/fp8_plan.py, or (None, why not) where torch._scaled_mm cannot take this call."""
    if x.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return None, f"activation dtype {x.dtype}"
    k, n = qweight.shape[1], qweight.shape[0]
    if k % 16 or n % 16:
        return None, f"weight shape {tuple(qweight.shape)} is not a multiple of 16"
    if scale.numel() not in (1, n):
        return None, f"weight scale of shape {tuple(scale.shape)}"
    return device_plan(x.device, "tensor" if scale.numel() == 1 else "channel")


def fp8_linear(x, qweight, scale, bias=None, *, mode="upcast"):
    """x @ dequant(qweight, scale).T + bias in x.dtype: "upcast" dequantizes the weight (runs everywhere), "w8a8"
    multiplies in FP8 with torch._scaled_mm, or falls back to upcast, counting why in `fallback_reasons`."""
    if mode == "w8a8":
        plan, reason = _w8a8_plan(x, qweight, scale)
        reason = _failed.get((x.device.type, qweight.dtype)) if plan else reason
        if reason is None:
            try:
                y = _w8a8(x, qweight, scale, bias, plan)
                stats["w8a8"] += 1   # counted once the product is made: a failure counts as a fallback only
                return y
            except RuntimeError as e:  # a kernel this torch build, GPU or Triton lacks (e.g. an e5m2 x e4m3 product)
                if act_quant.out_of_memory(e):
                    raise
                first = act_quant.first_line(e)
                if plan == "rowwise" and fp8_plan.NO_ROWWISE.search(first):
                    fp8_plan.without_rowwise(x.device, first)
                    return fp8_linear(x, qweight, scale, bias, mode=mode)
                reason = first if isinstance(e, act_quant.KernelFailed) else f"torch._scaled_mm failed: {first}"
                _failed[(x.device.type, qweight.dtype)] = reason  # don't retry a failing kernel on every call
        fallback_reasons[reason] = fallback_reasons.get(reason, 0) + 1
        stats["fallback"] += 1
    elif mode != "upcast":
        raise ValueError(f"mode must be 'upcast' or 'w8a8', not {mode!r}")
    stats["upcast"] += 1
    w = dequantize_weight(qweight, scale, x.dtype)
    return F.linear(x, w, None if bias is None else bias.to(x.dtype))


def _w8a8(x, qweight, scale, bias, plan):
    n = qweight.shape[0]
    xq, x_scale = act_quant.quantize_input(x, per_tensor=plan == "tensorwise")
    if plan == "tensorwise" and scale.numel() > 1:
        # Per-tensor scaling with a per-channel weight: a weight scale of 1 in the product, the channel scales on
        # its output, in bf16 (or fp32): without the weight scales (~amax/448) the products can pass fp16's max.
        # The scales multiply in fp32 (rounded to bf16 first, each channel was off by up to 0.4%, the same way at
        # every call).
        out_dtype = torch.float32 if x.dtype == torch.float32 else torch.bfloat16
        one = torch.ones((1, 1), dtype=torch.float32, device=xq.device)
        y = torch._scaled_mm(xq, qweight.t(), scale_a=x_scale, scale_b=one, out_dtype=out_dtype)
        y.mul_(scale.reshape(1, -1).float())
        if bias is not None:
            y.add_(bias.to(out_dtype))
    else:
        # CUDA's row-wise kernel only writes bf16; other dtypes are cast afterwards.
        out_dtype = torch.bfloat16 if x.device.type == "cuda" else x.dtype
        # Row-wise scaling needs both operands row-wise: a per-tensor weight scale is broadcast to (1, N).
        w_scale = scale.float().reshape(1, -1).expand(1, n if plan == "rowwise" else 1).contiguous()
        y = torch._scaled_mm(xq, qweight.t(), scale_a=x_scale, scale_b=w_scale,
                             bias=None if bias is None else bias.to(out_dtype), out_dtype=out_dtype)
    return y.to(x.dtype).reshape(*x.shape[:-1], n)
