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


def row_blocks(t, values, scale):
    """(start, stop, their scale) of `t`'s rows in blocks of at most `values` values (at least one row), so that the
    fp32 temporaries of a pass over a block stay a block's size; `scale`: one for all rows, or one per row."""
    rows = max(1, values // max(1, t[:1].numel()))     # [:1]: also with 0 rows
    for i in range(0, t.shape[0], rows):
        yield i, i + rows, scale if scale.numel() == 1 else scale[i:i + rows]
