"""Patch SageAttention: 8-bit attention for one MODEL (adapters/sage_override.py); the input MODEL keeps its own."""
from comfy.ldm.wan.model import WanModel
from comfy.patcher_extension import WrappersMP
from comfy_api.latest import io

from ..attention.dispatch import ALIASES, MODES, canonical
from ..attention.sage import log_once
from .adapters.foreign_forward import SageWatch
from .adapters.sage_override import KEY, SageOverride, describe

NODE_MODES = [*MODES, *ALIASES]  # the old name last: saved workflows still validate ("sageattn" = "sageattention")


class PatchSageAttention(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SkyReelsPatchSageAttention",
            display_name="Patch SageAttention",
            category="SkyReels-V2",
            search_aliases=["sageattention", "8-bit attention", "int8 attention", "comfy-kitchen attention", "sage3"],
            description="8-bit attention for this model. Falls back to exact attention (with one log line) where the "
                        "chosen backend is missing or the GPU cannot run it; an accuracy guard keeps any attention "
                        "site that 8-bit gets wrong exact.",
            inputs=[
                io.Model.Input("model"),
                io.Combo.Input("mode", options=NODE_MODES, default="auto",
                               tooltip="auto: the best backend for this GPU (sageattention 2.x, else "
                                       "comfy-kitchen int8, else sageattention 1.x, else exact; where PyTorch runs "
                                       "cuDNN attention first, as on H100/H200/B200, exact through cuDNN before "
                                       "sageattention 1.x). sageattention: "
                                       "the sageattention package's kernels (sageattn: its old name). comfy-kitchen "
                                       "int8 / sage3 (FP4; RTX 50xx, RTX PRO Blackwell, DGX Spark, not B200): "
                                       "ComfyUI's attention of that name, where it registers one. "
                                       "reference: this pack's PyTorch SageAttention (any device, slow). disabled: "
                                       "exact attention."),
                # the tuning knobs are advanced widgets (the frontend's advanced toggle), as core's EasyCache's
                io.Int.Input("exact_first_blocks", default=0, min=0, max=64, advanced=True,
                             tooltip="Keep exact attention in the first N transformer blocks."),
                io.Int.Input("exact_last_blocks", default=0, min=0, max=64, advanced=True,
                             tooltip="Keep exact attention in the last N transformer blocks."),
                io.Int.Input("exact_first_steps", default=0, min=0, max=1000, advanced=True,
                             tooltip="Keep exact attention during the first N sampling steps."),
                io.Float.Input("guard_threshold", default=0.995, min=0.0, max=1.0, step=0.001, advanced=True,
                               tooltip="Each attention site is compared with exact attention on some query rows at "
                                       "its first call and again at 1/4, 1/2 and 3/4 of the steps; below this cosine, "
                                       "or on a NaN/Inf output, the site stays exact. 0 turns the guard off."),
            ],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, model, mode, exact_first_blocks=0, exact_last_blocks=0, exact_first_steps=0,
                guard_threshold=0.995):
        replaced = model.model_options.get("transformer_options", {}).get("optimized_attention_override")
        if replaced is not None and not isinstance(replaced, SageOverride):     # the host runs one: the last applied
            log_once(("replaced", describe(replaced)), "Patch SageAttention: replaces the attention override already "
                     f"on this MODEL, {describe(replaced)}; ComfyUI runs one per model")
        dm = model.model.diffusion_model      # Wan's blocks name their index to the override; other models' may not
        blocks = len(dm.blocks) if isinstance(dm, WanModel) else 0
        if blocks and exact_first_blocks + exact_last_blocks >= blocks and canonical(mode) != "disabled":
            log_once(("all exact", blocks), f"Patch SageAttention: exact_first_blocks + exact_last_blocks ("
                     f"{exact_first_blocks + exact_last_blocks}) cover all {blocks} blocks of this model: every "
                     "attention call stays exact")
        patched = model.clone()
        override = SageOverride(mode, exact_first_blocks, exact_last_blocks, exact_first_steps, guard_threshold)
        patched.model_options["transformer_options"]["optimized_attention_override"] = override
        watch = SageWatch(override)
        patched.add_wrapper_with_key(WrappersMP.OUTER_SAMPLE, KEY, watch.sampling)
        patched.add_wrapper_with_key(WrappersMP.APPLY_MODEL, KEY, watch.call)
        return io.NodeOutput(patched)
