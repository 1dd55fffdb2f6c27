"""ComfyUI's key convention for quantized layers, in one place: `<layer>.weight` (fp8), `<layer>.weight_scale`
(fp32) and `<layer>.comfy_quant`, a uint8 tensor holding JSON that names the layer's format."""
import json

import torch

# Tensors that belong to a quantized layer beside its weight (ours and the host's, and legacy `scaled_fp8` files').
QUANT_SUFFIXES = (".weight_scale", ".scale_weight", ".comfy_quant", ".input_scale", ".scale_input")


def is_quant_extra(name):
    """A scale, a format tag or legacy scaled_fp8's marker: not a model tensor of its own."""
    return name.endswith(QUANT_SUFFIXES) or name == "scaled_fp8"


def format_name(fp8, granularity):
    """The layer format: the host's own name per tensor, ours per channel."""
    return f"float8_{fp8}" if granularity == "tensor" else f"skyreels_fp8_{fp8}_per_channel"


def comfy_quant(fmt):
    return torch.frombuffer(bytearray(json.dumps({"format": fmt}).encode()), dtype=torch.uint8)


def format_of(conf):
    """The format a comfy_quant tensor names, read as the host reads it (its bytes, whatever their shape). ValueError
    if it is not what the convention writes: a tool that cast every tensor of a file to bf16 (a merge script's
    `.to(dtype)`) turns the bytes into numbers."""
    if conf.element_size() != 1 or conf.is_floating_point():
        raise ValueError(f"it is {str(conf.dtype).replace('torch.', '')}, where ComfyUI's format writes JSON text as "
                         "uint8 bytes")
    conf = json.loads(bytes(conf.flatten().view(torch.uint8).tolist()))
    if not isinstance(conf, dict) or not isinstance(conf.get("format"), str):
        raise ValueError(f"it holds {json.dumps(conf)[:60]}, not a format name")
    return conf["format"]
