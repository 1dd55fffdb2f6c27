"""Convert to FP8: the converter of convert_to_fp8.py as a node, writing into models/diffusion_models."""
import contextlib
import os

import comfy.model_management
import comfy.utils
from comfy_api.latest import io, ui

from ..quant import Options, convert
from .adapters import model_files

GRANULARITY = {"per-tensor (loads in core)": "tensor", "per-channel (more accurate)": "channel"}


class ConvertToFP8(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SkyReelsConvertToFP8",
            display_name="Convert to FP8",
            category="SkyReels-V2",
            description="Writes an FP8 copy of a SkyReels-V2 model into models/diffusion_models, one tensor at a time "
                        "(the source is never changed).",
            is_output_node=True,
            inputs=[
                io.Combo.Input("model_name", options=model_files.model_list(),
                               tooltip="Source: a bf16/fp16/fp32 file or release folder (name/) in "
                                       "models/diffusion_models."),
                io.String.Input("output_name", default="",
                                tooltip="File name in models/diffusion_models; empty: <source>_fp8_<type>.safetensors"),
                io.Combo.Input("granularity", options=list(GRANULARITY), default=list(GRANULARITY)[0],
                               tooltip="per-tensor files also load in ComfyUI's Load Diffusion Model; per-channel "
                                       "files only in Load FP8 SkyReels Model."),
                io.Combo.Input("fp8_type", options=["e4m3fn", "e5m2"], default="e4m3fn"),
                io.Int.Input("keep_first_blocks", default=0, min=0, max=64, advanced=True),
                io.Int.Input("keep_last_blocks", default=0, min=0, max=64, advanced=True),
                io.Boolean.Input("overwrite", default=False, tooltip="Replace an existing output file."),
            ],
            outputs=[io.String.Output(display_name="report", tooltip="Sizes, ratio and per-layer error summary.")],
        )

    @classmethod
    @model_files.plain_errors
    def execute(cls, model_name, output_name, granularity, fp8_type, keep_first_blocks=0, keep_last_blocks=0,
                overwrite=False):
        src = model_files.resolve(model_name)
        if not output_name.strip():
            stem = os.path.basename(src.rstrip(os.sep))
            if os.path.isfile(src):  # a shard folder such as "Wan2.1-T2V-14B" keeps its whole name
                stem = os.path.splitext(stem)[0]
            output_name = f"{stem}_fp8_{fp8_type}.safetensors"
        dst = model_files.output_path(output_name.strip())
        made = _missing_folders(os.path.dirname(dst))
        try:
            os.makedirs(os.path.dirname(dst), exist_ok=True)    # subfolders are made, as Save Image makes its own
        except OSError as e:
            raise ValueError(f"output_name {output_name!r}: its folder cannot be made ({e.strerror or e}); choose "
                             "another name") from None
        options = Options(fp8=fp8_type, granularity=GRANULARITY[granularity], keep_first_blocks=keep_first_blocks,
                          keep_last_blocks=keep_last_blocks)
        pbar = comfy.utils.ProgressBar(1)
        try:
            report = convert(src, dst, options, overwrite=overwrite, progress=pbar.update_absolute,
                             check_interrupt=comfy.model_management.throw_exception_if_processing_interrupted)
        except BaseException:       # a refused or stopped conversion leaves no folders behind either
            for folder in made:
                with contextlib.suppress(OSError):
                    os.rmdir(folder)
            raise
        text = report.table() + f"\nwrote {model_files.shown(dst)}"
        return io.NodeOutput(text, ui=ui.PreviewText(text))


def _missing_folders(folder):
    """The folders of `folder`'s path that do not exist yet, deepest first."""
    missing = []
    while folder and not os.path.exists(folder) and folder != os.path.dirname(folder):
        missing.append(folder)
        folder = os.path.dirname(folder)
    return missing
