"""Load FP8 SkyReels Model: any SkyReels-V2 file as an FP8 ComfyUI MODEL (a real ModelPatcher)."""
import functools
import logging

import torch
import comfy.cli_args
import comfy.model_management
import comfy.sd
import comfy.supported_models
import comfy.utils
from comfy_api.latest import io

from ..quant import Checkpoint, CheckpointError
from ..quant.comfy_format import QUANT_SUFFIXES
from ..quant.formats import WEIGHT_FORMATS, load_fp8_state_dict
from ..quant.fp8_plan import compute_dtype as fp8_plan_dtype
from ..quant.fp8_plan import device_plan, fused_quant_available
from .adapters import fps, model_files
from .adapters.ffn import gelu_in_place
from .adapters.fp8_ops import make_operations, share_attention_inputs

WAN_DTYPES = comfy.supported_models.WAN21_T2V.supported_inference_dtypes
# ComfyUI's options that set the dtype its loader stores a model in (comfy.model_management.unet_dtype)
UNET_OPTIONS = ("fp32_unet", "fp64_unet", "bf16_unet", "fp16_unet", "fp8_e4m3fn_unet", "fp8_e5m2_unet",
                "fp8_e8m0fnu_unet")
log = logging.getLogger("skyreels_fp8")
COMPUTE = ["auto", "upcast", "fp8 matmul"]


class LoadFP8SkyReelsModel(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SkyReelsFP8ModelLoader",
            display_name="Load FP8 SkyReels Model",
            category="SkyReels-V2",
            search_aliases=["wan 2.1 fp8", "load diffusion model fp8", "fp8 model loader"],
            description="Loads a SkyReels-V2 (Wan 2.1) diffusion model in FP8: FP8 files as they are, bf16/fp16/fp32 "
                        "files quantized while loading, tensor by tensor.",
            inputs=[
                io.Combo.Input("model_name", options=model_files.model_list(),
                               tooltip="A file, or a downloaded release folder (name/), in models/diffusion_models."),
                io.Combo.Input("weight_format", options=list(WEIGHT_FORMATS), default="auto",
                               tooltip="auto: FP8 files as they are, others as fp8_e4m3fn per-channel."),
                io.Combo.Input("compute", options=COMPUTE, default="auto",
                               tooltip="fp8 matmul: FP8 products with per-token activation scales (per-tensor on "
                                       "RTX 50xx and most Windows builds; GPUs of compute capability 8.9+). upcast: "
                                       "weights turned to bf16/fp16 (float32 on a CPU) for each product. auto: fp8 "
                                       "matmul where the GPU can and Triton quantizes the activations (for per-tensor "
                                       "scales, Triton or comfy-kitchen's CUDA kernel)."),
                io.Int.Input("keep_first_blocks", default=0, min=0, max=64, advanced=True,
                             tooltip="Keep the first N transformer blocks in high precision."),
                io.Int.Input("keep_last_blocks", default=0, min=0, max=64, advanced=True,
                             tooltip="Keep the last N transformer blocks in high precision."),
            ],
            outputs=[io.Model.Output(), io.String.Output(display_name="report",
                                                         tooltip="What was detected and how it was loaded.")],
        )

    @classmethod
    def fingerprint_inputs(cls, model_name, **kwargs):
        # the host serves the cached MODEL while this stays the same: every file of the model, not a folder's mtime
        try:
            return model_files.signature(model_files.resolve(model_name))
        except OSError:      # FileNotFoundError from resolve, or a file gone while listed
            return ""

    @classmethod
    @model_files.plain_errors
    def execute(cls, model_name, weight_format, compute, keep_first_blocks=0, keep_last_blocks=0):
        return io.NodeOutput(*load(model_files.resolve(model_name), weight_format, compute, keep_first_blocks,
                                   keep_last_blocks))


def load(path, weight_format, compute, keep_first_blocks=0, keep_last_blocks=0, disable_dynamic=False):
    """(MODEL, report). Also the MODEL's cached_patcher_init: ComfyUI calls it again with disable_dynamic for a copy
    outside Dynamic VRAM (TorchCompileModel, hooked conditioning, its multi-GPU clones)."""
    if comfy.model_management.force_channels_last():     # the host lays out 4-D weights only, and stops at a 5-D one
        raise ValueError("Load FP8 SkyReels Model: ComfyUI runs with --force-channels-last, which no Wan model can "
                         "take (its patch embedding is a 3-D convolution; core's Load Diffusion Model stops too: "
                         "'required rank 4 tensor to use channels_last format'); start ComfyUI without it")
    with Checkpoint(path) as ckpt:
        info = ckpt.model_info()
        ckpt.require_keys(info)
        pbar = comfy.utils.ProgressBar(len(ckpt.names))
        load_device = comfy.model_management.get_torch_device()
        # What the host computes a quantized Wan model in on this device (its own rule, as in its loader), or bf16
        # where the products run in FP8 on a GPU (fp8_plan.compute_dtype says why).
        host_dtype = comfy.model_management.unet_manual_cast(None, load_device, WAN_DTYPES) or torch.bfloat16
        fused, note = fused_quant_available(load_device)
        # auto multiplies in FP8 only where the fused kernel quantizes the activations: the eager chunks read each
        # one three times as long (an H200, 51000 x 5120: 3.3 vs 1.0 ms), which costs what the FP8 product saves.
        products = compute != "upcast" and (fused or compute == "fp8 matmul"), fused, note
        plan = device_plan(load_device, "channel")[0] if load_device.type == "cuda" else None
        # --force-fp16 / --fp16-unet, or --fast (its fp16_accumulation: the host then prefers fp16): the user's fp16
        fp16_asked = (getattr(comfy.cli_args.args, "fp16_unet", False)
                      or getattr(comfy.model_management, "PRIORITIZE_FP16", False))
        compute_dtype = fp8_plan_dtype(host_dtype, load_device.type, plan, products[0], fp16_asked)
        sd, summary = load_fp8_state_dict(
            ckpt, info, weight_format, keep_first_blocks, keep_last_blocks, progress=pbar.update_absolute,
            check_interrupt=comfy.model_management.throw_exception_if_processing_interrupted,
            compute_dtype=compute_dtype)
    expected = set(info.expected_keys())
    unexpected = [k for k in sd if k not in expected and not k.endswith(QUANT_SUFFIXES)]
    if unexpected:  # in the report too: a merged add-on (FantasyTalking's projector, say) does nothing here
        summary.notes.append(f"{len(unexpected)} tensors a {info.describe()} does not use are ignored: "
                             + ", ".join(unexpected[:8]))
        log.warning("%s: %s", path, summary.notes[-1])
        for k in unexpected:
            sd.pop(k)
    fps_sd = fps.split_fps_keys(sd)
    patcher, compute_used = _build(sd, summary, compute, path, products, compute_dtype, disable_dynamic)
    recipe = dict(path=path, weight_format=weight_format, compute=compute, keep_first_blocks=keep_first_blocks,
                  keep_last_blocks=keep_last_blocks)
    patcher.cached_patcher_init = (functools.partial(load, **recipe), (), 0)
    patcher.set_attachments(model_files.RECIPE, recipe)
    report = f"{info.describe()}, {summary.describe()}; compute: {compute_used}; file: {summary.source}"
    if fps_sd:
        fps.install(patcher, fps_sd)
        report += "; fps embedding: on (24 fps unless Sample Video sets it)"
    report += "".join(f"; note: {note}" for note in summary.notes)
    log.info("Load FP8 SkyReels Model: %s", report)
    return patcher, report


def _build(sd, summary, compute, path, products, compute_dtype, disable_dynamic=False):
    """The host's own loader on our state dict; FP8 layers through our operations class. products: (FP8 products
    on, the fused activation quantization there, why not or None)."""
    if summary.quantized == 0:  # bf16/fp16 requested: exactly the host's path
        fp8_matmul, used = False, "upcast (no FP8 weights)"
        options = {"dtype": torch.float16 if summary.kept_dtype == "float16" else torch.bfloat16}
    else:
        fp8_matmul, fused, note = products
        if compute == "fp8 matmul" and not fused:
            log.warning("fp8 matmul requested where auto would upcast (%s): torch._scaled_mm with activations "
                        "quantized eagerly (slow on CPU)", note)
        used = ("fp8 matmul" if fp8_matmul else "upcast") + (f" ({note})" if note and compute != "upcast" else "")
        # The tensors kept in high precision stay as read: without a dtype the host would store them in its
        # --fp8_e4m3fn-unet / --bf16-unet choice (an fp8 cast with no scale), unlike what the report says.
        options = {"custom_operations": make_operations(compute_dtype, fp8_matmul), "dtype": compute_dtype}
        args = comfy.cli_args.args
        given = [f"--{name[:-5]}-unet" for name in UNET_OPTIONS if getattr(args, name, False)]
        if given:
            # --force-fp16 reaches the loaders as --fp16-unet (ComfyUI's cli_args sets it): name what the user gave
            flag = "--force-fp16" if given[0] == "--fp16-unet" and getattr(args, "force_fp16", False) else given[0]
            summary.notes.append(f"ComfyUI's {flag} is not applied: the FP8 layers are this loader's, the "
                                 f"other tensors stay {summary.kept_dtype}")
    # the keyword only where asked: ComfyUI before Dynamic VRAM has none (and never asks)
    extra = {"disable_dynamic": True} if disable_dynamic else {}
    patcher = comfy.sd.load_diffusion_model_state_dict(sd, model_options=options, **extra)
    if patcher is None:
        raise CheckpointError(f"{path}: ComfyUI could not build a Wan model from this file")
    if summary.quantized and patcher.model.manual_cast_dtype != compute_dtype:
        # The host computes a quantized model in its own choice whatever dtype it is given: inputs and activations
        # follow manual_cast_dtype (its apply_model casts to it), so it is set to the dtype chosen above.
        patcher.model.manual_cast_dtype = patcher.model.model_config.manual_cast_dtype = compute_dtype
    if fp8_matmul:
        share_attention_inputs(patcher.model)
    gelu_in_place(patcher.model)
    return patcher, used
