"""The absmax scale convention shared by weight and activation quantization: stored = value / scale, and the largest
magnitude maps to the format's largest finite value."""
import torch


def fp8_max(dtype):
    return torch.finfo(dtype).max


def absmax_scale(amax, dtype):
    # All-zero rows/tensors get scale 1 so that 0 / scale stays 0 instead of NaN.
    scale = amax.float() / fp8_max(dtype)
    return torch.where(scale > 0, scale, torch.ones_like(scale))
