"""FP8 Linear layers for one model on the host's mixed-precision ops (no global patch), with an FP8 layout of our own
for per-tensor and per-channel weights (registered, so the host's LoRA re-quantization and lowvram casting handle it)
and "fp8 matmul": FP8 products with a dynamic per-token activation scale (quant.fp8.fp8_linear) instead of the host's
static input scale of 1.0."""
import torch
import comfy.float
import comfy.ops
from comfy_kitchen.tensor import BaseLayoutParams, QuantizedLayout, QuantizedTensor, register_layout_class

from ...attention.sage import log_once
from ...quant import act_quant, fp8
from ...quant.comfy_format import format_of
from ...quant.formats import FORMATS
from ...quant.fp8 import FP8_DTYPES
from ...quant.scale import absmax, absmax_scale, row_blocks, saturate

LAYOUT = "SkyReelsFP8Layout"
REQUANTIZE_VALUES = 1 << 22   # values per block when a LoRA merge re-quantizes a layer (a 16 MiB fp32 temporary)


# One opaque op, so that torch.compile never writes the fp8 cast as a Triton kernel of its own: Triton refuses
# fp8_e4m3fn before compute capability 8.9 ("type fp8e4nv not supported in this architecture": RTX 30xx, A100;
# pytorch issue 167082), and TorchCompileModel failed there. Compiled code calls this as PyTorch's own cast.
@torch.library.custom_op("skyreels_fp8::dequantize", mutates_args=())
def dequantize_fp8(qdata: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return fp8.dequantize_weight(qdata, scale.to(qdata.device), dtype)    # one rounding, one copy of the weight


@dequantize_fp8.register_fake
def _(qdata, scale, dtype):
    return torch.empty_like(qdata, dtype=dtype)


@torch.compiler.disable
def _uncompiled(fn, *args, **kwargs):
    return fn(*args, **kwargs)


class FP8Layout(QuantizedLayout):
    """fp8 weight with one fp32 scale, of shape () for the tensor or (out, 1) per output row: weight = qdata * scale.
    The host's own per-tensor layout copies fp8 weights inside a compiled graph (which Triton refuses before sm89)."""

    Params = BaseLayoutParams

    @classmethod
    def quantize(cls, tensor, scale=None, stochastic_rounding=0, inplace_ops=False, fp8_dtype=None, per_channel=True,
                 **kwargs):
        # The host calls this to re-quantize a weight after merging a LoRA ("recalculate": new scales), always with
        # a seed: its LoRA merge and low-VRAM patching both round stochastically.
        dtype = fp8_dtype or torch.float8_e4m3fn
        w = tensor.detach()
        if scale is None or isinstance(scale, str):
            scale = absmax_scale(absmax(w, dim=1 if per_channel else None), dtype)
        scale = scale.float()
        if stochastic_rounding:   # the host's seeded rounding, over the whole tensor as the host does it
            # inplace_ops: the tensor is the merge's own fp32 temporary, scaled in place as the host's layout does,
            # so no second fp32 copy of the layer (270 MiB for a 14B FFN) is made.
            y = w if inplace_ops and w.dtype == torch.float32 else w.to(torch.float32, copy=True)
            qdata = comfy.float.stochastic_rounding(saturate(y, scale, dtype), dtype, seed=stochastic_rounding)
        else:   # in row blocks, adding no fp32 copy of the layer
            qdata = torch.empty(w.shape, dtype=dtype, device=w.device)
            for i, j, block in row_blocks(w, REQUANTIZE_VALUES, scale):
                qdata[i:j] = saturate(w[i:j].to(torch.float32, copy=True), block, dtype)
        return qdata, cls.Params(scale=scale, orig_dtype=tensor.dtype, orig_shape=tuple(tensor.shape))

    @classmethod
    def requantize_kwargs(cls, qtensor):
        return {"fp8_dtype": qtensor._qdata.dtype, "per_channel": qtensor._params.scale.dim() > 0}

    @classmethod
    def dequantize(cls, qdata, params):
        return dequantize_fp8(qdata, params.scale, params.orig_dtype)

    @classmethod
    def get_plain_tensors(cls, qtensor):
        return qtensor._qdata, qtensor._params.scale

    @classmethod
    def state_dict_tensors(cls, qdata, params):
        return {"": qdata, "_scale": params.scale}


register_layout_class(LAYOUT, FP8Layout)


def make_operations(compute_dtype, fp8_matmul):
    """The host's mixed-precision ops in `compute_dtype`, and with `fp8_matmul` FP8 products for every FP8 layer."""
    # full_precision_mm: the host never quantizes activations itself (it would use a static scale of 1.0).
    base = comfy.ops.mixed_precision_ops({}, compute_dtype, full_precision_mm=True)

    class SkyReelsFP8Ops(base):
        class Linear(base.Linear):
            skyreels_fp8_matmul = fp8_matmul    # read by Sample Video's report

            def _load_from_state_dict(self, state_dict, prefix, metadata, strict, missing_keys, *rest):
                conf = state_dict.get(prefix + "comfy_quant")
                fmt = None if conf is None else format_of(conf)
                if fmt not in FORMATS:
                    return super()._load_from_state_dict(state_dict, prefix, metadata, strict, missing_keys, *rest)
                state_dict.pop(prefix + "comfy_quant")
                device, (fp8_type, granularity) = self.factory_kwargs["device"], FORMATS[fmt]
                weight = state_dict.pop(prefix + "weight").to(device=device, dtype=FP8_DTYPES[fp8_type])
                scale = state_dict.pop(prefix + "weight_scale").to(device=device, dtype=torch.float32)
                scale = scale.reshape(-1, 1) if granularity == "channel" else scale.reshape(())
                self.quant_format, self.layout_type = fmt, LAYOUT
                params = FP8Layout.Params(scale=scale, orig_dtype=compute_dtype, orig_shape=self._orig_shape)
                self.weight = torch.nn.Parameter(QuantizedTensor(weight, LAYOUT, params), requires_grad=False)
                torch.nn.Module._load_from_state_dict(self, state_dict, prefix, metadata, strict, missing_keys, *rest)
                if prefix + "weight" in missing_keys:
                    missing_keys.remove(prefix + "weight")

            def forward_comfy_cast_weights(self, input, *args, **kwargs):
                # A weight copied before use (a LoRA applied on the fly, a layer offloaded in low-VRAM mode) would be
                # copied as fp8 inside a compiled graph, which Triton refuses before sm89: that cast runs uncompiled.
                if self.weight_function or self.bias_function or self.weight.device != input.device:
                    return _uncompiled(super().forward_comfy_cast_weights, input, *args, **kwargs)
                return super().forward_comfy_cast_weights(input, *args, **kwargs)

            def _forward(self, input, weight, bias):
                # `weight` is still quantized here unless the host had to cast it (LoRA in lowvram mode, offload).
                if fp8_matmul and isinstance(weight, QuantizedTensor) and weight._qdata.dtype in FP8_DTYPES.values():
                    return _fp8_product(input, weight, bias)
                return super()._forward(input, weight, bias)

    return SkyReelsFP8Ops


# Under TorchCompileModel this runs eagerly, between compiled parts: inductor cannot lower the eager quantization's
# writes into fp8 slices, and the activation cache and the counters are Python state a compiled graph would freeze.
@torch.compiler.disable
def _fp8_product(input, weight, bias):
    qdata, scale = weight.layout_cls.get_plain_tensors(weight)[:2]
    fell = fp8.stats["fallback"]
    y = fp8.fp8_linear(input, qdata, scale, bias, mode="w8a8")
    if fp8.stats["fallback"] != fell:    # also in the log: core samplers have no report
        for reason in fp8.fallback_reasons:
            log_once(("w8a8", reason), f"fp8 matmul unavailable ({reason}); using upcast")
    return y


def share_attention_inputs(model):
    """Lets each attention's q, k and v Linears quantize their shared input once: the host's attention code writes no
    input in place while it computes them (inference tensors have no version counter to prove it). The v Linear, the
    last of the three, drops the cached activation before the attention; each model call closes scopes a Cancel left."""
    for module in model.modules():
        if all(getattr(getattr(module, name, None), "skyreels_fp8_matmul", False) for name in ("q", "k", "v")):
            module.register_forward_pre_hook(lambda *args: act_quant.enter_shared_scope())
            module.register_forward_hook(lambda *args: act_quant.exit_shared_scope(), always_call=True)
            module.v.register_forward_hook(lambda *args: act_quant.forget())
    model.diffusion_model.register_forward_pre_hook(lambda *args: act_quant.close_scopes())
