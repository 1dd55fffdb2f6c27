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


def write_tiny_gguf(path, sd):
    """`sd` as a ComfyUI-GGUF diffusion model file (architecture "wan"), laid out by the rules of that pack's own
    converter: 2-D weights with rows of whole 32-value blocks in Q8_0, the rest (norms, biases, modulation, the 5-D
    patch embedding, small tensors) in F32. Each Q8_0 block is first snapped to a power-of-two scale: its values are
    then exact in fp16 and fp32 alike, so however ComfyUI-GGUF dequantizes them it gets the values returned here
    (the state dict the file holds, fp32)."""
    import gguf

    writer = gguf.GGUFWriter(str(path), arch="wan")
    held = {}
    for key, t in sd.items():
        data = t.float()
        quantized = data.ndim == 2 and data.shape[1] % 32 == 0 and data.numel() > 1024 and "modulation" not in key
        if quantized:
            data = _snap_q8_blocks(data)
        qtype = gguf.GGMLQuantizationType.Q8_0 if quantized else gguf.GGMLQuantizationType.F32
        writer.add_tensor(key, gguf.quants.quantize(data.numpy(), qtype), raw_dtype=qtype)
        held[key] = data
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return held


def _snap_q8_blocks(w):
    """w [N, K] on Q8_0's grid with a power-of-two scale per block of 32: the scale is the power of two at or below
    amax / 127, so the block's largest values clip to 127 steps, and Q8_0's own scale (amax / 127) is that power.
    At least 2^-14, fp16's smallest normal number (an all-zero block stays zero, not NaN)."""
    blocks = w.reshape(-1, 32)
    amax = blocks.abs().amax(1, keepdim=True).clamp(min=127 * 2.0 ** -14)
    step = torch.exp2(torch.floor(torch.log2(amax / 127)))
    return (torch.round(blocks / step).clamp(-127, 127) * step).reshape(w.shape)
