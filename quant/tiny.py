"""Tiny SkyReels-V2 checkpoints (real key names and structure, few blocks, small dims, seeded random weights) for
tests, demos and the embedded model of the headless job. Shapes of the real models come from the same code."""
import json
import math
import os
import re

import safetensors.torch
import torch

from .model_info import ModelInfo

REAL = {"1.3B": dict(dim=1536, ffn_dim=8960, num_layers=30), "14B": dict(dim=5120, ffn_dim=13824, num_layers=40)}
_SQUARE = re.compile(r"(^|\.)([qkvo]|k_img|v_img|text_embedding\.2|time_embedding\.2|fps_projection\.0)\.weight$")
TEXT_DIM, FREQ_DIM, CLIP_DIM, OUT_DIM = 4096, 256, 1280, 16


def info(variant="T2V", dim=256, ffn_dim=512, num_layers=2, has_fps=None):
    """A ModelInfo; variant T2V, I2V or DF (DF gets DF-1.3B's fps embedding unless has_fps=False)."""
    has_fps = variant == "DF" if has_fps is None else has_fps
    return ModelInfo(variant=variant, dim=dim, ffn_dim=ffn_dim, num_layers=num_layers,
                     in_dim=36 if variant == "I2V" else 16, has_fps=has_fps)


def shapes(model):
    """{original Wan key: shape} of a model described by a ModelInfo."""
    return {key: _shape(key, model) for key in model.expected_keys()}


def _shape(key, model):
    name = key.split(".", 2)[-1] if key.startswith("blocks.") else key   # block keys without "blocks.N."
    d, f = model.dim, model.ffn_dim
    fixed = {
        "patch_embedding.weight": (d, model.in_dim, 1, 2, 2), "text_embedding.0.weight": (d, TEXT_DIM),
        "time_embedding.0.weight": (d, FREQ_DIM), "time_projection.1.weight": (6 * d, d),
        "time_projection.1.bias": (6 * d,), "head.modulation": (1, 2, d), "head.head.weight": (4 * OUT_DIM, d),
        "head.head.bias": (4 * OUT_DIM,), "modulation": (1, 6, d), "ffn.0.weight": (f, d), "ffn.0.bias": (f,),
        "ffn.2.weight": (d, f), "img_emb.proj.0.weight": (CLIP_DIM,), "img_emb.proj.0.bias": (CLIP_DIM,),
        "img_emb.proj.1.weight": (CLIP_DIM, CLIP_DIM), "img_emb.proj.1.bias": (CLIP_DIM,),
        "img_emb.proj.3.weight": (d, CLIP_DIM), "fps_embedding.weight": (2, d),
        "fps_projection.2.weight": (6 * d, d), "fps_projection.2.bias": (6 * d,),
    }
    return fixed.get(name, (d, d) if _SQUARE.search(name) else (d,))


def state_dict(model, seed=0, dtype=torch.bfloat16):
    """Seeded random weights in the layout of `model`. Linear weights ~ N(0, 1/fan_in), norms ~ 1, biases small."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in shapes(model).items():
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
