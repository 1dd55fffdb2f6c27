"""A converted tiny checkpoint in the real host's own loader (core UNETLoader), on CPU."""
from comfy_host import run_in_host
from helpers import write_tiny

from quant import Options, convert

CODE = r"""
import torch, folder_paths, nodes
from comfy_kitchen.tensor.base import QuantizedTensor
from quant.policy import block_index
folder_paths.add_model_folder_path("diffusion_models", {folder!r}, is_default=True)
g = torch.Generator().manual_seed(0)
x = torch.randn(1, 16, 2, 16, 16, generator=g)
t = torch.tensor([700.0])
ctx = torch.randn(1, 24, 4096, generator=g)

def load(name, weight_dtype="default"):
    return nodes.UNETLoader().load_unet(name, weight_dtype)[0]

def run(patcher):
    with torch.no_grad():
        return patcher.model.diffusion_model(x, t, ctx).float()

def block_linears(patcher):
    return [m for n, m in patcher.model.diffusion_model.named_modules() if block_index(n + ".weight") is not None]

ref_model = load("src.safetensors")
ref = run(ref_model)
ours = load("ours.safetensors")
quantized = [m for m in block_linears(ours) if isinstance(m.weight, QuantizedTensor)]
storage = {{str(m.weight._qdata.dtype) for m in quantized}}

# A plain per-tensor absmax conversion done here, independently of the pack: scale = absmax / 448.
for m in block_linears(ref_model):
    w = m.weight.data.float()
    s = w.abs().max() / 448
    m.weight.data = ((w / s).to(torch.float8_e4m3fn).float() * s).to(m.weight.dtype)
absmax = run(ref_model)
cast = run(load("src.safetensors", "fp8_e4m3fn"))

def err(y):
    return ((y - ref).norm() / ref.norm()).item()

result = dict(n_linears=len(block_linears(ours)), n_quantized=len(quantized), storage=sorted(storage),
              ours=err(run(ours)), absmax=err(absmax), cast=err(cast))
"""


def test_converted_file_loads_in_core_unet_loader_as_fp8(host, tmp_path):
    write_tiny(tmp_path / "src.safetensors", "T2V", seed=3)
    convert(str(tmp_path / "src.safetensors"), str(tmp_path / "ours.safetensors"), Options())
    r = run_in_host(host, CODE.format(folder=str(tmp_path)))
    assert r["n_quantized"] == r["n_linears"] == 20 and r["storage"] == ["torch.float8_e4m3fn"]
    # Same scheme as the independent absmax conversion: the same error, to rounding.
    assert r["ours"] <= r["absmax"] * 1.001 + 1e-6, r
    # And better than the host's plain cast to fp8 (no scale), which the pack exists to beat.
    assert r["ours"] < r["cast"], r
    assert r["ours"] <= 0.05, r
