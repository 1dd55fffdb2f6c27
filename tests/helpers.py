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


def write_tiny_release(folder, variant="T2V", seed=0, shards=2):
    """A tiny SkyReels-V2 model laid out as a downloaded release (shards and their index)."""
    tiny.write_release(str(folder), tiny.state_dict(tiny.info(variant), seed=seed), shards)


def linear_case():
    """(x [3, 40, 128], weight [96, 128], bias [96]) of fp32 values for the FP8 Linear tests."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 40, 128, generator=g)
    w = torch.randn(96, 128, generator=g) / 128 ** 0.5
    b = torch.randn(96, generator=g) * 0.1
    return x, w, b


def e4m3_neighbours():
    """One row of values next to every positive e4m3fn value and every midpoint between two of them (ties
    included), with signs, as fp32: what a rounding to e4m3fn can get wrong."""
    grid = torch.arange(0, 127, dtype=torch.uint8).view(torch.float8_e4m3fn).float()   # 0 ... 448
    mid = (grid[:-1] + grid[1:]) / 2
    points = torch.cat([grid, mid])
    ulp = torch.nextafter(points, torch.full_like(points, 1e3)) - points
    near = torch.cat([points, points + ulp, (points - ulp).clamp(min=0)]).clamp(max=448)
    return torch.cat([near, -near, torch.tensor([-0.0])]).reshape(1, -1)


DF_WIDGETS = ("base_num_frames", "overlap_history", "ar_step", "causal_block_size", "addnoise_condition",
              "causal_attention")


def nest_mode(widgets, api=False):
    """Sample Video's widgets written flat, as its node takes them: the DF ones under the dynamic combo `mode`, a
    dict for execute() or "mode.<name>" keys for an API prompt (api=True); in standard mode they are dropped."""
    w = dict(widgets)
    df = {k: w.pop(k) for k in DF_WIDGETS if k in w} if w["mode"] == "diffusion forcing" else {}
    for k in DF_WIDGETS:
        w.pop(k, None)
    if api:
        w.update({f"mode.{k}": v for k, v in df.items()})
    else:
        w["mode"] = {"mode": w["mode"], **df}
    return w
