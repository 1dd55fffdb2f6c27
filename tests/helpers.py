"""Tiny SkyReels-V2 files for tests (see quant/tiny.py for the layout)."""
import os

import safetensors.torch
import torch

from quant import tiny

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_tiny(path, variant="T2V", seed=0, dtype=torch.bfloat16, prefix="", **dims):
    """Write a tiny checkpoint of `variant` to `path` and return its state dict (without the prefix)."""
    sd = tiny.state_dict(tiny.info(variant, **dims), seed=seed, dtype=dtype)
    safetensors.torch.save_file({prefix + k: v for k, v in sd.items()}, str(path))
    return sd
