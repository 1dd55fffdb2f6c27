"""The absmax scale convention of every fp8 cast in the pack: stored = value / scale, and the largest magnitude maps
to the format's largest finite value."""
import torch


def absmax(x, dim=None):
    """max |x|, over `dim` (kept) or all of x: aminmax reads x once and makes no |x| copy."""
    lo, hi = torch.aminmax(x) if dim is None else torch.aminmax(x, dim=dim, keepdim=True)
    return torch.maximum(-lo, hi)


def absmax_scale(amax, dtype):
    # All-zero rows/tensors get scale 1 so that 0 / scale stays 0 instead of NaN.
    scale = amax.float() / torch.finfo(dtype).max
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def saturate(y, scale, dtype):
    """y / scale clamped to the format's range, in place on `y` (fp32, the caller's): e4m3fn has no Inf (-> NaN)."""
    limit = torch.finfo(dtype).max
    return y.div_(scale).clamp_(-limit, limit)
