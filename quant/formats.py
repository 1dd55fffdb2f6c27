"""Read any SkyReels-V2 / Wan 2.1 file into one FP8 state dict in the host's key convention, tensor by tensor:
ComfyUI-format FP8 (ours and the host's), legacy `scaled_fp8`, plain FP8 casts (scale 1), and bf16/fp16/fp32 files,
which are quantized here."""
import json
from dataclasses import dataclass

import torch

from .checkpoint import CheckpointError
from .comfy_format import comfy_quant, format_name, format_of, is_quant_extra
from .fp8 import FP8_DTYPES, NonFiniteWeight, dequantize_weight, quantize_weight_chunked
from .policy import check_kept, layer_name, should_quantize
from .scale import absmax

WEIGHT_FORMATS = {  # node choice -> (fp8 type, granularity) or a plain dtype
    "auto": None,
    "fp8_e4m3fn (per-channel)": ("e4m3fn", "channel"),
    "fp8_e4m3fn (per-tensor)": ("e4m3fn", "tensor"),
    "fp8_e5m2": ("e5m2", "tensor"),
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}
AUTO = ("e4m3fn", "channel")  # high-precision sources: the most accurate scheme (our loader reads it)
# Every FP8 format the loader writes, as (fp8 type, granularity): ours per channel, the host's per tensor (saved under
# its own name, so a merged model that ModelSave writes still loads in core).
FORMATS = {format_name(f, g): (f, g) for f in FP8_DTYPES for g in ("tensor", "channel")}


@dataclass
class LoadSummary:
    source: str            # what the file holds, e.g. "bf16" or "fp8 e4m3fn per-tensor (ComfyUI format)"
    scheme: str            # what the model gets, e.g. "fp8 e4m3fn per-channel"
    quantized: int
    kept: int
    kept_dtype: str
    notes: list

    def describe(self):
        return f"{self.scheme}, {self.kept} of {self.quantized + self.kept} tensors kept {self.kept_dtype}"


def _layer_formats(ckpt):
    """{layer: (fp8, granularity)} declared by the file (comfy_quant tensors or _quantization_metadata)."""
    try:
        layers = json.loads(ckpt.metadata.get("_quantization_metadata") or "{}")
        layers = layers.get("layers", {}) if isinstance(layers, dict) else None
        if not isinstance(layers, dict) or not all(isinstance(v, dict) and isinstance(v.get("format"), str)
                                                   for v in layers.values()):
            raise ValueError("_quantization_metadata is no JSON object of layers and their format names")
        declared = {k: v["format"] for k, v in layers.items()}
        for name in (n for n in ckpt.names if n.endswith(".comfy_quant")):
            try:
                declared[name[: -len(".comfy_quant")]] = format_of(ckpt.load(name))
            except ValueError as e:
                raise ValueError(f"{name}: {e}") from None
    except ValueError as e:
        raise CheckpointError(f"{ckpt.path}: its FP8 layer formats (_quantization_metadata, comfy_quant) are not "
                              f"readable ({e}); the file is damaged: download or convert it again") from None
    for layer, fmt in declared.items():
        if fmt not in FORMATS:
            raise CheckpointError(f"{ckpt.path}: layer {layer} uses quantization format {fmt!r}, which this pack "
                                  "cannot read; use an fp8 file or the bf16 original")
    return {layer: FORMATS[fmt] for layer, fmt in declared.items()}


def describe_source(ckpt, declared):
    fp8_names = [n for n in ckpt.names if ckpt.spec(n)[1] in FP8_DTYPES.values()]
    if declared:
        kinds = sorted({f"fp8 {f} per-{g}" for f, g in declared.values()})
        origin = "this pack's format" if any(g == "channel" for _, g in declared.values()) else "ComfyUI format"
        return f"{', '.join(kinds)} ({origin})"
    kind = str(ckpt.spec(fp8_names[0])[1]).split("float8_")[-1] if fp8_names else None
    if "scaled_fp8" in ckpt.names:
        return f"fp8 {kind or 'e4m3fn'} per-tensor (legacy scaled_fp8)"
    if fp8_names:
        scaled = any(n.endswith((".weight_scale", ".scale_weight")) for n in ckpt.names)
        return f"fp8 {kind} " + ("(scales, no format tags)" if scaled else "(plain cast, no scales)")
    dtypes = sorted({str(ckpt.spec(n)[1]).replace("torch.", "") for n in ckpt.names if "weight" in n})
    return "/".join(dtypes)


def _fp8_weight(ckpt, name, declared):
    """(qweight, scale, granularity) of an fp8 weight in the file, or None if it is stored in high precision.
    The scale's size gives the granularity where the file declares none."""
    layer = layer_name(name)
    if ckpt.spec(name)[1] not in FP8_DTYPES.values():
        return None
    q = ckpt.load(name)
    if not q.dim():    # no weight of a model is a single number
        raise CheckpointError(f"{ckpt.path}: {name} is one FP8 number, not a weight; the file is damaged: download or "
                              "convert it again")
    key = next((k for k in (f"{layer}.weight_scale", f"{layer}.scale_weight") if k in ckpt.names), None)
    if key is None:
        others = [n for n in ckpt.names if n.startswith(layer + ".") and "scale" in n]
        if layer in declared or others:     # weights that need a scale this file lacks, or one we cannot read
            raise CheckpointError(f"{ckpt.path}: layer {layer} is FP8 with {', '.join(others) or 'no weight_scale'}: "
                                  "the file is damaged, or scaled in a way this pack cannot read; use the bf16 "
                                  "original or a ComfyUI FP8 file")
        return q, torch.ones((), dtype=torch.float32), "tensor"  # a plain cast: scale 1
    scale = ckpt.load(key).float().flatten()
    granularity = declared[layer][1] if layer in declared else "tensor" if scale.numel() == 1 else "channel"
    if scale.numel() != {"tensor": 1, "channel": q.shape[0]}[granularity] or (scale <= 0).any():
        smallest = f", smallest {scale.min():g}" if scale.numel() else ""
        raise CheckpointError(f"{ckpt.path}: {key} ({scale.numel()} values{smallest}) is no scale of {name} "
                              f"{list(q.shape)}; the file is damaged: download or convert it again")
    return q, scale.reshape((-1, 1) if granularity == "channel" else ()), granularity


def _in_range(path, name, t, plain):
    """`t`, a finite tensor turned to the kept dtype; fp16 holds at most 65504, and a larger value of a bf16/fp32 or
    scaled fp8 weight would have become Inf without a word. `plain`: the dtype weight_format asked for, if any."""
    if t.dtype == torch.float16 and t.numel() and not absmax(t).isfinite():
        why = ("" if plain == torch.float16 else
               ", the dtype ComfyUI keeps this model's other tensors in here (for this GPU, or --fp16-unet / --fast)")
        raise CheckpointError(f"{path}: tensor {name} holds values beyond float16's range (65504){why}; load the "
                              "model with weight_format bf16, on a GPU that computes in bf16 (RTX 30xx and newer)")
    return t


def load_fp8_state_dict(ckpt, info, weight_format="auto", keep_first_blocks=0, keep_last_blocks=0,
                        progress=None, check_interrupt=None, compute_dtype=torch.bfloat16):
    """Return (state_dict, LoadSummary) for `ckpt` (a Checkpoint) holding a model described by `info`.
    Tensors that stay high precision come in `compute_dtype` (the model holds them so; no second copy)."""
    if weight_format not in WEIGHT_FORMATS:
        raise CheckpointError(f"weight format must be one of {', '.join(WEIGHT_FORMATS)}, not {weight_format!r}")
    declared = _layer_formats(ckpt)
    source = describe_source(ckpt, declared)
    target = WEIGHT_FORMATS[weight_format]
    plain = target if isinstance(target, torch.dtype) else None
    if plain is None:
        check_kept(ckpt.path, info.num_layers, keep_first_blocks, keep_last_blocks)
    kept_dtype = plain or compute_dtype
    names = [n for n in ckpt.names if not is_quant_extra(n)]
    # auto takes an FP8 file as it is: the Linears it holds in high precision were kept so (a converter's keep blocks)
    as_is = target is None and any(ckpt.spec(n)[1] in FP8_DTYPES.values() for n in names if n.endswith(".weight"))
    sd, schemes = {}, []  # schemes: the (fp8, granularity) of each quantized weight
    for i, name in enumerate(names):
        if check_interrupt:
            check_interrupt()
        linear = should_quantize(name, info.num_layers, keep_first_blocks, keep_last_blocks)
        fp8 = _fp8_weight(ckpt, name, declared) if name.endswith(".weight") else None
        fmt = None
        if fp8 is not None:
            q, scale, granularity = fp8
            for t in (q, scale):
                ckpt.check_finite(name, t)
            if plain is not None or not linear:     # fp8 in the file, high precision wanted here
                sd[name] = _in_range(ckpt.path, name, dequantize_weight(q, scale, kept_dtype), plain)
            else:
                fmt = (str(q.dtype).split("float8_")[-1], granularity)
        elif linear and plain is None and not as_is:
            fmt = target or AUTO
            try:
                q, scale, _ = quantize_weight_chunked(ckpt.load(name), dtype=FP8_DTYPES[fmt[0]], granularity=fmt[1])
            except NonFiniteWeight:
                raise ckpt.non_finite(name) from None
        else:
            t = ckpt.load(name)
            ckpt.check_finite(name, t)
            sd[name] = _in_range(ckpt.path, name, t.to(kept_dtype), plain) if t.is_floating_point() else t
        if fmt:
            layer = layer_name(name)
            sd[name] = q
            sd[f"{layer}.weight_scale"] = scale
            sd[f"{layer}.comfy_quant"] = comfy_quant(format_name(*fmt))
            schemes.append(fmt)
        if progress:
            progress(i + 1, len(names))
    notes = []
    if weight_format != "auto" and plain is None and set(schemes) - {target}:    # fp8 weights of the file
        notes.append(f"the file is already {source}; its FP8 weights are used as they are")
    kept = str(kept_dtype).replace("torch.", "")
    scheme = ", ".join(f"fp8 {f} per-{g}" for f, g in sorted(set(schemes))) or kept
    return sd, LoadSummary(source=source, scheme=scheme, quantized=len(schemes), kept=len(names) - len(schemes),
                           kept_dtype=kept, notes=notes)
