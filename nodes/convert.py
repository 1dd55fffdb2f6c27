"""Convert to FP8: the converter of convert_to_fp8.py as a node, writing into models/diffusion_models."""
import contextlib
import os

import comfy.model_management
import comfy.utils
import folder_paths
from comfy_api.latest import io, ui

from ..quant import Options, convert
from ..quant.checkpoint import is_release
from .adapters import model_files

GRANULARITY = {"per-tensor (loads in core)": "tensor", "per-channel (more accurate)": "channel"}
# output path: [the signature it had when last written or last seen changed, the times it was seen changed]
_written = {}
# output path: (the source's signature, the options, the output's signature as written, the report) of the last write
_made = {}


class ConvertToFP8(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SkyReelsConvertToFP8",
            display_name="Convert to FP8",
            category="SkyReels-V2",
            search_aliases=["quantize model to fp8", "fp8 quantization", "save fp8 checkpoint"],
            description="Writes an FP8 copy of a SkyReels-V2 model into models/diffusion_models, one tensor at a time "
                        "(the source is never changed).",
            is_output_node=True,
            inputs=[
                io.Combo.Input("model_name", options=model_files.model_list(),
                               tooltip="Source: a bf16/fp16/fp32 file or release folder (name/) in "
                                       "models/diffusion_models."),
                io.String.Input("output_name", default="",
                                tooltip="File name in models/diffusion_models; empty: <source>_fp8_<type>.safetensors "
                                        "(per-channel: ..._per_channel.safetensors)"),
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
    def fingerprint_inputs(cls, model_name, output_name, fp8_type, granularity=None, **kwargs):
        """The host serves this node from its cache (writing nothing, showing the last report) while this stays the
        same: so it covers the source's files, and counts the times the output this node wrote was found deleted or
        replaced (the node then runs again, once)."""
        try:
            src = model_files.resolve(model_name)
            dst = model_files.output_path(_output_name(src, output_name, fp8_type, GRANULARITY.get(granularity)))
            source = model_files.signature(src)
            now = model_files.signature(dst)     # () when missing
        except (OSError, ValueError):     # execute says what is wrong
            return ""
        written = _written.get(dst)
        if written is None:
            return source, 0
        if now != written[0]:      # deleted or replaced since: count it once, then run again
            written[0], written[1] = now, written[1] + 1
        return source, written[1]

    @classmethod
    @model_files.plain_errors
    def execute(cls, model_name, output_name, granularity, fp8_type, keep_first_blocks=0, keep_last_blocks=0,
                overwrite=False):
        src = model_files.resolve(model_name)
        output_name = _output_name(src, output_name, fp8_type, GRANULARITY.get(granularity))
        dst = model_files.output_path(output_name)
        made = _missing_folders(os.path.dirname(dst))
        try:
            os.makedirs(os.path.dirname(dst), exist_ok=True)    # subfolders are made, as Save Image makes its own
        except OSError as e:
            raise ValueError(f"output_name {output_name!r}: its folder cannot be made ({e.strerror or e}); choose "
                             "another name") from None
        options = Options(fp8=fp8_type, granularity=GRANULARITY[granularity], keep_first_blocks=keep_first_blocks,
                          keep_last_blocks=keep_last_blocks)
        # The same conversion queued again where the host's cache no longer holds this node (--cache-none, a
        # small --cache-lru, another workflow run in between): the file this node wrote is still there as written,
        # so it is what a run would write; say so rather than refuse it as "already exists" (or convert it again).
        source, last = model_files.signature(src), _made.get(dst)
        if last and last[:2] == (source, options) and model_files.signature(dst) == last[2]:
            text = last[3] + f"\n{model_files.shown(dst)} is already this conversion (written earlier from the same " \
                             "source and settings; not written again)"
            return io.NodeOutput(text, ui=ui.PreviewText(text))
        pbar = comfy.utils.ProgressBar(1)
        try:
            report = convert(src, dst, options, overwrite=overwrite, progress=pbar.update_absolute,
                             check_interrupt=comfy.model_management.throw_exception_if_processing_interrupted)
        except BaseException:       # a refused or stopped conversion leaves no folders behind either
            for folder in made:
                with contextlib.suppress(OSError):
                    os.rmdir(folder)
            raise
        written, table = model_files.signature(dst), report.table()
        _written.setdefault(dst, [None, 0])[0] = written
        # the source as it was before converting: one changed meanwhile is converted again next time
        _made[dst] = (source, options, written, table)
        text = table + f"\nwrote {model_files.shown(dst)}"
        return io.NodeOutput(text, ui=ui.PreviewText(text))


def _output_name(src, output_name, fp8_type, granularity):
    """output_name, or when empty <source>_fp8_<type>.safetensors; per-channel files, which core's loader cannot
    read, end in _per_channel. A release's one weights file (name/model.safetensors) is named after its folder."""
    if output_name.strip():
        return output_name.strip()
    folder = os.path.dirname(src)
    roots = {os.path.realpath(r) for r in folder_paths.get_folder_paths(model_files.FOLDER)}
    if os.path.isfile(src) and os.path.realpath(folder) not in roots and is_release(os.listdir(folder)):
        src = folder
    stem = os.path.basename(src.rstrip(os.sep))
    if os.path.isfile(src):  # a shard folder such as "Wan2.1-T2V-14B" keeps its whole name
        stem = os.path.splitext(stem)[0]
    return f"{stem}_fp8_{fp8_type}{'_per_channel' if granularity == 'channel' else ''}.safetensors"


def _missing_folders(folder):
    """The folders of `folder`'s path that do not exist yet, deepest first."""
    missing = []
    while folder and not os.path.exists(folder) and folder != os.path.dirname(folder):
        missing.append(folder)
        folder = os.path.dirname(folder)
    return missing
