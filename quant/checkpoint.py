"""Read Wan 2.1 / SkyReels-V2 checkpoints tensor by tensor, under the original Wan key names: a .safetensors file,
a folder of shards (its index json, else every .safetensors in it) or .pth/.pt/.ckpt/.bin via torch.load(weights_only).
Keys may carry the `model.diffusion_model.` prefix or be diffusers (WanTransformer3DModel) names."""
import contextlib
import json
import os
import pickle
import re
import threading

import torch
from safetensors import safe_open

from .model_info import NotWanModel, detect
from .scale import absmax

SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "I64": torch.int64, "I32": torch.int32,
    "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}
_STORABLE = set(SAFETENSORS_DTYPES.values())
_UNREADABLE = ("{}: tensor {} has a data type ({}) a SkyReels-V2 model does not use; remove it, or use the original "
               "release")

# diffusers name -> original Wan name (SkyReels-V2 uses the Wan 2.1 names in its own releases).
_ATTN = {"1": "self_attn", "2": "cross_attn"}
_DIFFUSERS_RENAMES = [(re.compile(a), b) for a, b in [
    (r"^condition_embedder\.(text|time)_embedder\.linear_([12])\.", lambda m: f"{m[1]}_embedding.{2 * int(m[2]) - 2}."),
    (r"^condition_embedder\.time_proj\.", "time_projection.1."),
    (r"^condition_embedder\.image_embedder\.norm1\.", "img_emb.proj.0."),
    (r"^condition_embedder\.image_embedder\.ff\.net\.0\.proj\.", "img_emb.proj.1."),
    (r"^condition_embedder\.image_embedder\.ff\.net\.2\.", "img_emb.proj.3."),
    (r"^condition_embedder\.image_embedder\.norm2\.", "img_emb.proj.4."),
    (r"^condition_embedder\.image_embedder\.pos_embed$", "img_emb.emb_pos"),
    (r"^proj_out\.", "head.head."),
    (r"^scale_shift_table$", "head.modulation"),
    (r"^(blocks\.\d+\.)scale_shift_table$", r"\1modulation"),
    (r"^(blocks\.\d+\.)attn([12])\.to_out\.0\.", lambda m: f"{m[1]}{_ATTN[m[2]]}.o."),
    (r"^(blocks\.\d+\.)attn([12])\.to_([qkv])\.", lambda m: f"{m[1]}{_ATTN[m[2]]}.{m[3]}."),
    (r"^(blocks\.\d+\.)attn([12])\.norm_([qk])\.", lambda m: f"{m[1]}{_ATTN[m[2]]}.norm_{m[3]}."),
    (r"^(blocks\.\d+\.)attn2\.add_([kv])_proj\.", r"\1cross_attn.\2_img."),
    (r"^(blocks\.\d+\.)attn2\.norm_added_k\.", r"\1cross_attn.norm_k_img."),
    # diffusers calls the affine cross-attention norm norm2; Wan calls it norm3.
    (r"^(blocks\.\d+\.)norm2\.", r"\1norm3."),
    (r"^(blocks\.\d+\.ffn|fps_projection)\.net\.0\.proj\.", r"\1.0."),
    (r"^(blocks\.\d+\.ffn|fps_projection)\.net\.2\.", r"\1.2."),
]]


class CheckpointError(ValueError):
    """Bad input: the message names the file and what to do."""


_PREFIX = re.compile(r"^(module\.)?(model\.)?(diffusion_model\.)?")     # DDP's, and ComfyUI's prefixes


def original_name(key, diffusers):
    key = _PREFIX.sub("", key)
    if diffusers:
        for pattern, repl in _DIFFUSERS_RENAMES:
            new, n = pattern.subn(repl, key)
            if n:
                return new
    return key


def open_safetensors(path):
    """safetensors' own reader, which validates the file, without its memory map where it has a choice (0.8 and
    newer): the map is copy-on-write, which counts against the OS's commit limit, so a 28 GB single-file 14B model
    failed to open on a 24 GB machine ('Cannot allocate memory')."""
    try:
        return safe_open(path, framework="pt", device="cpu", backend="pread")
    except TypeError:    # an older safetensors: the map only
        return safe_open(path, framework="pt", device="cpu")


class _SafetensorsFile:
    """safetensors validates the file; data is then read into each tensor's own buffer, not through a memory map,
    whose touched pages would count as this process's memory until the whole model was read. seek + readinto works on
    every OS (Windows' os has no pread); the lock keeps a prefetching thread's seek from moving another. A buffered
    readinto stops short only at the end of the file (large reads go straight into the buffer given)."""

    def __init__(self, path):
        self.metadata = check_safetensors(path)     # so its header is valid JSON
        self._file = open(path, "rb")
        n = int.from_bytes(self._file.read(8), "little")
        self._header = json.loads(self._file.read(n))
        self._header.pop("__metadata__", None)
        self.path, self._start, self._lock = path, 8 + n, threading.Lock()

    def keys(self):
        return list(self._header)

    def spec(self, key):
        h = self._header[key]
        return tuple(h["shape"]), SAFETENSORS_DTYPES.get(h["dtype"])

    def load(self, key):
        shape, dtype = self.spec(key)
        if dtype is None:
            raise CheckpointError(_UNREADABLE.format(self.path, key, self._header[key]["dtype"]))
        begin, end = self._header[key]["data_offsets"]
        buf = torch.empty(end - begin, dtype=torch.uint8)
        with self._lock:
            self._file.seek(self._start + begin)
            if self._file.readinto(memoryview(buf.numpy())) < end - begin:
                raise CheckpointError(f"{self.path}: the file is truncated; download or copy it again")
        return buf.view(dtype).reshape(shape)

    def close(self):
        self._file.close()


def check_safetensors(path):
    """The file's metadata; CheckpointError saying what is wrong (truncated, not safetensors) from its header alone."""
    try:
        with open_safetensors(path) as handle:
            return handle.metadata() or {}
    except Exception as e:  # safetensors raises its own error type with a terse text
        raise CheckpointError(_safetensors_problem(path, str(e))) from None


_EMPTY = "{}: the file is empty (0 bytes): a download or copy that did not finish; download it again"


def _safetensors_problem(path, text):
    start = b""
    with contextlib.suppress(OSError):     # a folder, an unreadable file: safetensors' own words then
        with open(path, "rb") as f:
            start = f.read(4)
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        return _EMPTY.format(path)
    # torch.save's zip archive, or its legacy pickle (protocol 2, then its magic number); as a safetensors header
    # length either would be 67 or 176 MB, where a 14B model's header is 0.1 MB
    if start in (b"PK\x03\x04", b"\x80\x02\x8a\x0a"):
        return (f"{path}: a PyTorch file (torch.save's format) named .safetensors; rename it to .pth (read with "
                "weights_only=True), or download the .safetensors release")
    if "unable to mmap" in text:
        return (f"{path}: this safetensors maps the whole file into memory, more than this machine allows ("
                f"{text.split(':')[-1].strip()}); update it (pip install -U safetensors: 0.8 reads without the map)")
    if "incomplete metadata" in text or "MetadataIncompleteBuffer" in text or "not fully covered" in text:
        return f"{path}: the file is truncated or damaged (not the size its header gives); download or copy it again"
    return f"{path}: not a valid .safetensors file ({text.split(':')[-1].strip()}); check that the download finished"


def fp8_non_finite(q):
    """NaN/Inf in an fp8 tensor from its bit patterns: |value| bits at or above 0x7F (e4m3fn) / 0x7C (e5m2). The
    positive ones are the largest bytes read as int8, the negative ones (sign bit set) the largest read as uint8, so
    two max reductions find them with no temporary: per-piece masks left the allocator holding up to 250 MiB of
    freed holes after loading the 1.3B model (bench/load.py), and an fp32 copy takes 4x the weight."""
    limit = {torch.float8_e4m3fn: 0x7F, torch.float8_e5m2: 0x7C}[q.dtype]   # the readers give no other 1-byte float
    return bool(q.view(torch.int8).amax() >= limit or q.view(torch.uint8).amax() >= 0x80 | limit)


class _PickleFile:
    def __init__(self, path):
        try:
            try:
                sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as e:
                if "mmap" not in str(e):
                    raise
                sd = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
        except pickle.UnpicklingError as e:
            said = str(e).lower()
            # weights_only met a class or function to import (code, not weights): "Unsupported global: GLOBAL ...",
            # "Unsupported class ..." in older torch.
            if "global" in said or "unsupported class" in said:
                raise CheckpointError(f"{path}: refused: the file holds pickled objects, not only weights (it was "
                                      "opened with weights_only=True); use a .safetensors release of the model"
                                      ) from None
            if "unsupported operand" in said or "invalid load key" in said:    # bytes that are no pickle at all
                raise CheckpointError(f"{path}: not a PyTorch weights file (its bytes are not a pickle: a web page "
                                      "or a damaged download?); download it again") from None
            lines = [line.strip() for line in str(e).splitlines() if line.strip()] or [""]
            why = next((b for a, b in zip(lines, lines[1:]) if "WeightsUnpickler error" in a), lines[0])
            raise CheckpointError(f"{path}: not a readable PyTorch weights file ({why}); download it again") from None
        except Exception as e:
            raise CheckpointError(f"{path}: not a readable PyTorch weights file ({e}); download it again") from None
        # A training checkpoint: the weights under one of these, beside an epoch, an optimizer ...
        while isinstance(sd, dict) and not all(isinstance(v, torch.Tensor) for v in sd.values()):
            inner = next((sd[k] for k in ("state_dict", "model", "module") if isinstance(sd.get(k), dict)), None)
            if inner is None:
                break
            sd = inner
        if not isinstance(sd, dict) or not sd or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                         for k, v in sd.items()):
            found = f"a dict of {', '.join(map(str, list(sd)[:6]))}" if isinstance(sd, dict) else type(sd).__name__
            raise CheckpointError(f"{path}: not a state dict of tensors (it holds {found}); save the model's "
                                  "state_dict alone, or use a .safetensors release")
        # A model saved before its weights were loaded (meta: shapes alone), or a sparse or otherwise laid-out one
        empty = next((k for k, v in sd.items() if v.is_meta or v.layout != torch.strided), None)
        if empty is not None:
            what = "no values (a meta tensor)" if sd[empty].is_meta else f"a {sd[empty].layout} layout"
            raise CheckpointError(f"{path}: tensor {empty} has {what}, not the dense weights of a trained model; save "
                                  "the state_dict of the loaded model, or use a .safetensors release")
        self.path, self.sd, self.metadata = path, sd, {}

    def keys(self):
        return list(self.sd)

    def spec(self, key):     # dtype None where a .safetensors file could not hold it either (uint16, complex ...)
        dtype = self.sd[key].dtype
        return tuple(self.sd[key].shape), dtype if dtype in _STORABLE else None

    def load(self, key):
        if self.spec(key)[1] is None:
            raise CheckpointError(_UNREADABLE.format(self.path, key, str(self.sd[key].dtype).replace("torch.", "")))
        return self.sd[key]

    def close(self):
        self.sd = {}


def _open_file(path):
    try:    # safetensors' own message for this ends in its last ':' part, which read as a damaged download
        open(path, "rb").close()
    except OSError as e:
        raise CheckpointError(f"{path}: cannot be read ({e.strerror or e}); check that you may read the file") from None
    if path.lower().endswith((".safetensors", ".sft")):
        return _SafetensorsFile(path)
    if path.lower().endswith(".gguf"):
        raise CheckpointError(f"{path}: a GGUF file: ComfyUI-GGUF's Unet Loader (GGUF) loads it, and its MODEL goes "
                              "into Patch SageAttention, TeaCache and Sample Video; to make an FP8 file, convert the "
                              "bf16 release")
    if path.lower().endswith((".pth", ".pt", ".ckpt", ".bin")):
        if os.path.getsize(path) == 0:
            raise CheckpointError(_EMPTY.format(path))
        return _PickleFile(path)
    raise CheckpointError(f"{path}: unsupported file type; give a .safetensors file, a folder of .safetensors "
                          "shards, or a .pth/.pt weights file")


def is_release(files):
    """Whether a folder holding `files` is one model, as downloaded: shards with their index, or a Hugging Face
    release's config.json beside its one weights file (SkyReels-V2's 1.3B models, which its scripts load as the
    folder). With other weights beside it (a conversion saved there) it is not."""
    return any(f.endswith(".safetensors.index.json") for f in files) or (
        "config.json" in files and sum(f.endswith(".safetensors") for f in files) == 1)


def _indexes(folder):
    return sorted(f for f in os.listdir(folder) if f.endswith(".safetensors.index.json"))


def listed_shards(index):
    try:
        with open(index, encoding="utf-8") as f:
            listed = json.load(f)["weight_map"].values()
        if not all(isinstance(name, str) for name in listed):
            raise ValueError("its weight_map names something other than files")
        if not listed:
            raise ValueError("its weight_map lists no files")
    except KeyError:
        raise CheckpointError(f"{index}: not a shard index (it has no weight_map); download it again") from None
    except (ValueError, AttributeError, TypeError) as e:
        raise CheckpointError(f"{index}: not a readable shard index ({e}); download it again") from None
    return sorted(set(listed))


def _shard_paths(folder):
    """The shard files of a folder: those its one index lists (checked), else every .safetensors in it."""
    indexes = _indexes(folder)
    if len(indexes) > 1:    # which one is this model's cannot be read from the folder
        raise CheckpointError(f"{folder}: holds {len(indexes)} shard indexes ({', '.join(indexes)}); a model's "
                              "folder has one: move the others out, with their shards")
    index = indexes[0] if indexes else None
    names = listed_shards(os.path.join(folder, index)) if index else []
    for name in names:
        if os.path.basename(name) != name or name in ("", ".", ".."):   # a release's index names its own files
            raise CheckpointError(f"{os.path.join(folder, index)}: names {name!r}, not a file in its folder; the "
                                  "index is damaged or was edited: download it again")
        if not os.path.isfile(os.path.join(folder, name)):
            raise CheckpointError(f"{os.path.join(folder, name)}: shard listed in {index} is missing")
    if index is None:
        names = sorted(f for f in os.listdir(folder) if f.endswith(".safetensors"))
    if not names:
        inside = [d + "/" for d in sorted(os.listdir(folder)) if os.path.isdir(os.path.join(folder, d))]
        raise CheckpointError(f"{folder}: the folder has no .safetensors shards" + (
            f"; give the subfolder that holds the diffusion model ({', '.join(inside)})" if inside else ""))
    return [os.path.join(folder, n) for n in names]


def _refuse_a_shard(path):
    """One shard of a model alone is no model: say which folder to give instead (an unreadable index is left to
    the folder's own load to report)."""
    folder = os.path.dirname(os.path.abspath(path))
    for index in _indexes(folder):     # any of them: a folder of several is refused as a whole
        try:
            listed = os.path.basename(path) in listed_shards(os.path.join(folder, index))
        except CheckpointError:
            continue
        if listed:
            raise CheckpointError(f"{path}: one shard of the model in {os.path.basename(folder)}/ (listed in "
                                  f"{index}); give the folder (the loaders list it as {os.path.basename(folder)}/)")


class Checkpoint:
    """A model checkpoint read lazily: `names`, `spec(name)` -> (shape, dtype), `load(name)` -> Tensor."""

    def __init__(self, path):
        if not os.path.exists(path):
            raise CheckpointError(f"{path}: file not found")
        self.path = path
        if os.path.isfile(path):
            _refuse_a_shard(path)
        self.paths = _shard_paths(path) if os.path.isdir(path) else [path]
        read = {os.path.basename(p) for p in self.paths}
        self.unlisted = sorted(f for f in os.listdir(path) if f.endswith(".safetensors") and f not in read) if (
            os.path.isdir(path)) else []      # beside an index: files it does not list (a newer shard?)
        self.files = [_open_file(p) for p in self.paths]
        self.metadata = dict(self.files[0].metadata)
        raw = [(f, k) for f in self.files for k in f.keys()]
        self.diffusers = any(_PREFIX.sub("", k).startswith("condition_embedder.") for _, k in raw)
        self._index = {}
        for f, k in raw:
            name = original_name(k, self.diffusers)
            if name in self._index:
                self._refuse_twice(name, k, self._index[name][0], f)
            self._index[name] = (f, k)
        self.nbytes = sum(os.path.getsize(p) for p in self.paths)

    def _refuse_twice(self, name, key, first, second):
        if first is second:
            raise CheckpointError(f"{self.path}: tensor {name} appears twice ({key})")
        if _indexes(self.path):
            raise CheckpointError(f"{self.path}: tensor {name} appears twice ({key}); the shards overlap")
        # no index: every .safetensors of the folder was read, e.g. a model with a conversion saved beside it
        files = [os.path.basename(self.paths[self.files.index(f)]) for f in (first, second)]
        raise CheckpointError(f"{self.path}: holds {len(self.files)} .safetensors files and no shard index, and "
                              f"tensor {name} is in {files[0]} and in {files[1]}: several models, not one model's "
                              "shards; give one file, or move the others out")

    @property
    def names(self):
        return list(self._index)

    def spec(self, name):
        f, k = self._index[name]
        return f.spec(k)

    def load(self, name):
        f, k = self._index[name]
        return f.load(k)

    def close(self):
        for f in self.files:
            f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def model_info(self):
        try:
            info = detect({n: self.spec(n)[0] for n in self._index})
        except NotWanModel as e:
            core = e.core_runs and (len(self.paths) > 1 or self.diffusers)
            hint = (" (it takes one .safetensors file with Wan's own key names, as ComfyUI's repackaged releases are, "
                    "not shards or diffusers names)") if core else ""
            raise CheckpointError(f"{self.path}: {e}{hint}{self._unlisted_hint()}") from None
        # No tensor of the model is integer or bool: such values would be quantized, or kept, as if they were
        # weights. Tensors it does not use are copied as they are, and named; a layer whose format the file
        # declares (NVFP4 packs two values in a byte) is the loader's to name.
        declared = self._declared_layers()
        expected = set(info.expected_keys())
        for name in (n for n in info.expected_keys() if n in self._index):     # missing ones: require_keys'
            dtype = self.spec(name)[1]     # None: a type no model uses (uint16, complex ...)
            layer = name.rsplit(".", 1)[0]
            if dtype is not None and dtype.is_floating_point or layer in declared:
                continue
            kind = str(dtype).replace("torch.", "") if dtype is not None else "a data type no model uses"
            if any(n.startswith(layer + ".") and n not in expected for n in self._index):   # a scale beside it
                raise CheckpointError(f"{self.path}: layer {layer} is quantized ({kind}) in a format this pack "
                                      "cannot read; use the bf16 release or a ComfyUI FP8 file")
            held = f"{kind} values" if dtype is not None else f"values of {kind}"
            raise CheckpointError(f"{self.path}: tensor {name} holds {held}, not floating-point weights: the file is "
                                  "damaged or not a model release; use the original download")
        return info

    def _unlisted_hint(self):
        if not self.unlisted:
            return ""
        return (f" (the folder also holds {', '.join(self.unlisted[:3])}, which its index does not list: if that is "
                "a shard of this model, the index is out of date)")

    def _declared_layers(self):
        """Layers whose quantization format the file names (comfy_quant tensors, _quantization_metadata)."""
        layers = {n[: -len(".comfy_quant")] for n in self._index if n.endswith(".comfy_quant")}
        with contextlib.suppress(ValueError, AttributeError, TypeError):      # unreadable: the loader says so
            layers |= set(json.loads(self.metadata.get("_quantization_metadata") or "{}").get("layers", {}))
        return layers

    def non_finite(self, name):
        """The error for a tensor with NaN/Inf values (raised by every reader of this checkpoint)."""
        return CheckpointError(f"{self.path}: tensor {name} has NaN/Inf values; the checkpoint is damaged, download it "
                               "again")

    def check_finite(self, name, t):
        # NaN and Inf survive max |t|, which aminmax finds with no temporary of t's size (isfinite's bool mask and
        # its reduction took 2.5x a 300 MiB tensor of the 14B model). aminmax refuses fp8: its bits are read.
        if t.is_floating_point() and t.numel() and (
                fp8_non_finite(t) if t.element_size() == 1 else not absmax(t).isfinite()):
            raise self.non_finite(name)

    def require_keys(self, info):
        """Raise if tensors a model of `info` needs are missing; return the unexpected ones."""
        expected = info.expected_keys()
        missing = [k for k in expected if k not in self._index]
        if missing:
            shown = ", ".join(missing[:4]) + (", ..." if len(missing) > 4 else "")
            raise CheckpointError(f"{self.path}: incomplete {info.describe()}: {len(missing)} tensors missing "
                                  f"({shown}); download the whole checkpoint again{self._unlisted_hint()}")
        # A tensor of another shape would be cut to fit, or fail deep inside a run. Floating-point ones only: other
        # formats pack their values (NVFP4: two to a byte), and the loader names those formats it cannot read.
        wrong = [(k, self.spec(k)[0], shape) for k, shape in info.expected_shapes().items()
                 if self.spec(k)[0] != shape and getattr(self.spec(k)[1], "is_floating_point", False)]
        if wrong:
            key, got, want = wrong[0]
            more = f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else ""
            raise CheckpointError(f"{self.path}: not a whole {info.describe()}: tensor {key} has shape {list(got)}, "
                                  f"where the model needs {list(want)}{more}; the file is damaged or was edited: "
                                  "download it again")
        return sorted(set(self._index) - set(expected))
