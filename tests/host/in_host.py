"""Code run inside a fresh host process that imports this pack as ComfyUI does (a package named after its folder),
and the tiny models those runs use."""
from comfy_host import IMPORT_PACK
from helpers import write_tiny

from quant import Options, convert

SETUP = IMPORT_PACK + r"""
import torch, folder_paths, comfy.sd, comfy.utils
from helpers import nest_mode
from skyreels_pack.nodes.loader import LoadFP8SkyReelsModel
folder_paths.add_model_folder_path("diffusion_models", {folder!r}, is_default=True)
g = torch.Generator().manual_seed(0)
x = torch.randn(1, 16, 2, 16, 16, generator=g)
t = torch.tensor([600.0])
ctx = torch.randn(1, 16, 4096, generator=g)

def load(name, fmt="auto", compute="upcast"):
    return LoadFP8SkyReelsModel.execute(name, fmt, compute).args

def rel(a, b):
    return ((a - b).norm() / b.norm()).item()
"""


def write_models(folder):
    write_tiny(folder / "t2v_bf16.safetensors", "T2V", seed=1)
    write_tiny(folder / "df_bf16.safetensors", "DF", seed=2)
    for g in ("tensor", "channel"):
        convert(str(folder / "t2v_bf16.safetensors"), str(folder / f"t2v_fp8_{g}.safetensors"), Options(granularity=g))
