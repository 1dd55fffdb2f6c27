"""Convert a Wan 2.1 / SkyReels-V2 checkpoint to FP8 in the host's mixed-precision format, one tensor at a time.

Per-tensor files use the host's own format names and load in core UNETLoader. Per-channel files are tagged
`skyreels_fp8_*_per_channel`: the host has no per-channel layout, and stops at a format name it does not know
rather than load the weights with the wrong scale."""
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import torch

from . import __version__
from .checkpoint import Checkpoint, CheckpointError, is_release, open_safetensors
from .comfy_format import comfy_quant, format_name, is_quant_extra
from .fp8 import FP8_DTYPES, NonFiniteWeight, quantize_weight_chunked, relative_error
from .policy import check_kept, layer_name, should_quantize
from .writer import SafetensorsWriter, name_problem


WINDOWS = os.name == "nt"


class VerifyError(RuntimeError):
    """The written file does not read back as what was written (it is never put in place)."""


@dataclass
class Options:
    fp8: str = "e4m3fn"
    granularity: str = "tensor"
    keep_first_blocks: int = 0
    keep_last_blocks: int = 0

    def check(self):
        if self.fp8 not in FP8_DTYPES:
            raise CheckpointError(f"fp8 type must be one of {', '.join(FP8_DTYPES)}, not {self.fp8!r}")
        if self.granularity not in ("tensor", "channel"):
            raise CheckpointError(f"granularity must be 'tensor' or 'channel', not {self.granularity!r}")
        if self.keep_first_blocks < 0 or self.keep_last_blocks < 0:
            raise CheckpointError("keep-first/keep-last blocks must be 0 or more")


@dataclass
class Report:
    model: str
    options: Options
    bytes_in: int = 0
    bytes_out: int = 0
    quantized: int = 0
    kept: int = 0
    seconds: float = 0.0
    errors: dict = field(default_factory=dict)       # layer -> relative Frobenius error, measured while writing
    verified: dict = field(default_factory=dict)     # same, re-read from the written file (--verify)
    warnings: list = field(default_factory=list)

    def table(self):
        gib = 1024 ** 3
        lines = [f"{self.model} -> fp8 {self.options.fp8} per-{self.options.granularity}",
                 f"  bytes in       {self.bytes_in:>15,}  ({self.bytes_in / gib:.2f} GiB)",
                 f"  bytes out      {self.bytes_out:>15,}  ({self.bytes_out / gib:.2f} GiB)",
                 f"  ratio          {self.bytes_out / max(1, self.bytes_in):>15.3f}",
                 f"  tensors        {self.quantized} quantized, {self.kept} kept",
                 f"  time           {self.seconds:.1f} s"]
        if self.errors:
            lines.append("  rel. error     " + _summary(self.errors))
        if self.verified:
            lines.append("  verified       " + _summary(self.verified) + " (re-read from the written file)")
            worst = sorted(self.verified.items(), key=lambda kv: -kv[1])[:5]
            lines += ["  worst layers"] + [f"    {v * 100:6.3f}%  {k}" for k, v in worst]
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def _summary(errors):
    values = list(errors.values())
    return f"mean {sum(values) / len(values) * 100:.3f}%, max {max(values) * 100:.3f}% over {len(values)} layers"


def _check_paths(src, dst):
    if not dst.lower().endswith(".safetensors"):
        raise CheckpointError(f"{dst}: the output name must end in .safetensors")
    problem = name_problem(os.path.basename(dst), windows=WINDOWS)   # a path the user typed: this OS's rules
    if problem:
        raise CheckpointError(f"{dst}: {problem}; choose another output name")
    real_src, real_dst = (os.path.normcase(os.path.realpath(p)) for p in (src, dst))   # normcase: Windows' disks
    same = os.path.exists(dst) and os.path.exists(src) and os.path.samefile(src, dst)  # case-insensitive disks too
    if same or real_dst == real_src:
        raise CheckpointError(f"{dst}: the output would overwrite the source; choose another output name")
    if real_dst.startswith(os.path.join(real_src, "")):     # the folder would then hold two models' files
        what = "overwrite a file in" if os.path.exists(dst) else "be inside"
        raise CheckpointError(f"{dst}: the output would {what} the source folder {src}; choose a name outside it")
    if not os.path.isdir(os.path.dirname(real_dst)):
        raise CheckpointError(f"{dst}: the output folder does not exist")
    files = {os.path.normcase(f) for f in os.listdir(os.path.dirname(real_dst))}     # real_dst is normcased
    if is_release(files) and not is_release(files | {os.path.basename(real_dst)}):
        raise CheckpointError(f"{dst}: the output would be a second model in {os.path.dirname(dst)}, a downloaded "
                              "model's folder (config.json beside its one .safetensors) that loads as a folder, as the "
                              "shipped workflows name it; with two it loads as neither. Choose a name outside it")
    if os.path.isdir(dst):
        raise CheckpointError(f"{dst}: is a folder; give the output file's name (ending in .safetensors)")


def _check_source(ckpt, info, report):
    prequant = [n for n in ckpt.names if is_quant_extra(n) or ckpt.spec(n)[1] in FP8_DTYPES.values()]
    if prequant:
        raise CheckpointError(f"{ckpt.path}: already FP8 ({prequant[0]}); load it directly with Load FP8 SkyReels "
                              "Model, or convert the original bf16/fp32 release")
    unexpected = ckpt.require_keys(info)
    check_kept(ckpt.path, info.num_layers, report.options.keep_first_blocks, report.options.keep_last_blocks)
    if unexpected:
        report.warnings.append(f"{len(unexpected)} tensors a {info.describe()} does not use were copied as they are:"
                               f" {', '.join(unexpected[:4])}{', ...' if len(unexpected) > 4 else ''}")


def _kept_dtype(dtype):
    # fp32/fp64 releases are stored as bf16 (the compute precision); bf16/fp16 stay as they are.
    return torch.bfloat16 if dtype in (torch.float32, torch.float64) else dtype


def _plan(ckpt, info, options):
    """Output entries {name: (dtype, shape)}, the weight names to quantize and their comfy_quant tensor."""
    conf = comfy_quant(format_name(options.fp8, options.granularity))
    entries, quantize = {}, set()
    for name in ckpt.names:
        shape, dtype = ckpt.spec(name)
        if dtype is None:
            raise CheckpointError(f"{ckpt.path}: tensor {name} has a data type this converter cannot store; remove it "
                                  "or convert the original release")
        if should_quantize(name, info.num_layers, options.keep_first_blocks, options.keep_last_blocks):
            layer = layer_name(name)
            quantize.add(name)
            entries[name] = (FP8_DTYPES[options.fp8], shape)
            entries[f"{layer}.weight_scale"] = (torch.float32, () if options.granularity == "tensor" else (shape[0], 1))
            entries[f"{layer}.comfy_quant"] = (torch.uint8, tuple(conf.shape))
        else:
            entries[name] = (_kept_dtype(dtype), shape)
    return entries, quantize, conf


def _metadata(ckpt, info, options, report, quantize):
    fmt = format_name(options.fp8, options.granularity)
    layers = {layer_name(n): {"format": fmt} for n in sorted(quantize)}
    # Every Options field is recorded (fp8, granularity, keep_first_blocks, keep_last_blocks): a new one lands here.
    ours = {"pack_version": __version__, "source": os.path.basename(ckpt.path.rstrip(os.sep)),
            "source_bytes": ckpt.nbytes, "model": info.describe(), **asdict(options),
            "errors": {k: float(f"{v:.5g}") for k, v in report.errors.items()}}
    kept = {k: v for k, v in ckpt.metadata.items() if k not in ("_quantization_metadata", "skyreels_fp8")}
    return {**kept, "_quantization_metadata": json.dumps({"format_version": "1.0", "layers": layers}),
            "skyreels_fp8": json.dumps(ours)}


def _prefetched(ckpt, names):
    """Yield (name, tensor), reading the next tensor in a thread while the caller works on this one."""
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(ckpt.load, names[0]) if names else None
        for i, name in enumerate(names):
            t = future.result()
            future = pool.submit(ckpt.load, names[i + 1]) if i + 1 < len(names) else None
            yield name, t


def convert(src, dst, options=None, *, overwrite=False, verify=False, progress=None, check_interrupt=None):
    """Convert `src` (file or shard folder) to the FP8 file `dst`. Returns a Report; raises CheckpointError on bad
    input (nothing is written then). `progress(done, total)` is called after each tensor; `check_interrupt()` may
    raise to stop, which removes the partial output."""
    options = options or Options()
    options.check()
    _check_paths(src, dst)
    with Checkpoint(src) as ckpt:
        # A shard may be a link out of its folder (the Hugging Face cache links snapshots/ into blobs/).
        read = next((p for p in ckpt.paths if os.path.exists(dst) and os.path.samefile(p, dst)), None)
        if read is not None:
            raise CheckpointError(f"{dst}: the output would overwrite the source ({read} is the same file); choose "
                                  "another output name")
        if os.path.exists(dst) and not overwrite:
            raise CheckpointError(f"{dst}: already exists; to replace it turn on overwrite (convert_to_fp8.py: "
                                  "--overwrite)")
        return _convert(ckpt, dst, options, verify, progress, check_interrupt)


def _convert(ckpt, dst, options, verify, progress, check_interrupt):
    start = time.perf_counter()
    info = ckpt.model_info()
    report = Report(model=info.describe(), options=options, bytes_in=ckpt.nbytes)
    _check_source(ckpt, info, report)
    entries, quantize, conf_tensor = _plan(ckpt, info, options)
    names = ckpt.names

    def check(tmp):
        report.verified = verify_file(ckpt, tmp, quantize, dst)

    with SafetensorsWriter(dst, entries, _metadata(ckpt, info, options, report, quantize),
                           reserve=64 * len(quantize) + 4096, check=check if verify else None) as out:
        for i, (name, t) in enumerate(_prefetched(ckpt, names)):
            if check_interrupt:
                check_interrupt()
            if name in quantize:
                try:
                    q, scale, err = quantize_weight_chunked(t, dtype=entries[name][0], granularity=options.granularity)
                except NonFiniteWeight:
                    raise ckpt.non_finite(name) from None
                layer = layer_name(name)
                out.write(name, q)
                out.write(f"{layer}.weight_scale", scale)
                out.write(f"{layer}.comfy_quant", conf_tensor)
                report.errors[layer] = err
            else:
                ckpt.check_finite(name, t)
                out.write(name, t.to(entries[name][0]))
            del t
            if progress:
                progress(i + 1, len(names))
        out.set_metadata(_metadata(ckpt, info, options, report, quantize))
    report.quantized, report.kept = len(quantize), len(names) - len(quantize)
    report.bytes_out = os.path.getsize(dst)
    report.seconds = time.perf_counter() - start
    return report


def verify_file(ckpt, path, quantize, dst):
    """Re-read `path` and measure each quantized layer against the source; kept tensors must match exactly."""
    errors = {}
    with open_safetensors(path) as f:
        layers = json.loads(f.metadata()["_quantization_metadata"])["layers"]
        for name in ckpt.names:
            ref = ckpt.load(name)
            if name in quantize:
                layer = layer_name(name)
                if layer not in layers:
                    raise VerifyError(f"{dst}: verify failed: {layer} is missing from _quantization_metadata")
                errors[layer] = relative_error(ref, f.get_tensor(name), f.get_tensor(f"{layer}.weight_scale"))
            elif not torch.equal(f.get_tensor(name), ref.to(_kept_dtype(ref.dtype))):
                raise VerifyError(f"{dst}: verify failed: {name} differs from the source")
    return errors
