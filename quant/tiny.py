"""Tiny SkyReels-V2 checkpoints (real key names and structure, few blocks, small dims, seeded random weights) for
tests, demos and the embedded model of the headless job. Shapes of the real models come from the same code."""
import json
import math
import os

import safetensors.torch
import torch

from .model_info import ModelInfo

REAL = {"1.3B": dict(dim=1536, ffn_dim=8960, num_layers=30), "14B": dict(dim=5120, ffn_dim=13824, num_layers=40)}


def info(variant="T2V", dim=256, ffn_dim=512, num_layers=2, has_fps=None):
    """A ModelInfo; variant T2V, I2V or DF (DF gets DF-1.3B's fps embedding unless has_fps=False)."""
    has_fps = variant == "DF" if has_fps is None else has_fps
    return ModelInfo(variant=variant, dim=dim, ffn_dim=ffn_dim, num_layers=num_layers,
                     in_dim=36 if variant == "I2V" else 16, has_fps=has_fps)


def state_dict(model, seed=0, dtype=torch.bfloat16):
    """Seeded random weights in the layout of `model`. Linear weights ~ N(0, 1/fan_in), norms ~ 1, biases small."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in model.expected_shapes().items():
        if len(shape) >= 2 and "modulation" not in key:
            t = torch.randn(shape, generator=g) / math.prod(shape[1:]) ** 0.5
        elif "modulation" in key:
            t = torch.randn(shape, generator=g) / model.dim ** 0.5
        elif "norm" in key and key.endswith("weight") or key.endswith(("proj.0.weight", "proj.4.weight")):
            t = 1 + 0.1 * torch.randn(shape, generator=g)
        else:
            t = 0.02 * torch.randn(shape, generator=g)
        sd[key] = t.to(dtype)
    return sd


def write_release(folder, sd, shards=2):
    """`sd` laid out as a downloaded release: a folder of safetensors shards and their model.safetensors.index.json."""
    os.makedirs(folder, exist_ok=True)
    keys, weight_map = sorted(sd), {}
    for i in range(shards):
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        safetensors.torch.save_file({k: sd[k] for k in keys[i::shards]}, os.path.join(folder, name))
        weight_map.update({k: name for k in keys[i::shards]})
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump({"weight_map": weight_map}, f)
