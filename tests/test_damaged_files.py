"""Damaged and edited model files, made at random from a tiny model, through the loader's and the converter's reading:
each is read, or refused with a CheckpointError that names the file (a raw TypeError or IndexError reaches the user
as a traceback that names no file). Seeded: a failure names its case, and damaged(case, folder) writes that file
again. Nothing here depends on the device: a GPU machine reads files on its CPU too."""
import os
import random
import traceback

import safetensors.torch
import torch

from quant import CheckpointError, Options, convert, tiny
from quant.checkpoint import Checkpoint
from quant.formats import WEIGHT_FORMATS, load_fp8_state_dict

CASES = 400     # about 10 s on 2 cores; 3000 more seeds were run by hand when this was written
DTYPES = [torch.float32, torch.float16, torch.float64, torch.float8_e4m3fn, torch.int8, torch.uint8, torch.int64,
          torch.bool, torch.uint16]
JUNK_KEYS = ["scaled_fp8", "blocks.x.ffn.0.weight", "blocks.99.ffn.0.weight", "lora_unet.a.lora_down.weight",
             "vace_blocks.0.a", "audio_proj.proj1.weight", "blocks.0.self_attn.q.input_scale",
             "model.diffusion_model.head.modulation", "condition_embedder.time_proj.weight"]
COMFY_QUANT = [b'{"format": "float8_e4m3fn"}', b'{"format": [1]}', b'{"format": {}}', b'[1]', b'{}', b'\xff',
               b'null', b'{"format": "skyreels_fp8_e4m3fn_per_channel"}']
QUANT_METADATA = ['[]', '{"layers": []}', '{"layers": {"blocks.0.ffn.0": 5}}', '{"layers": null}', 'nan',
                  '{"layers": {"blocks.0.ffn.0": {"format": ["x"]}}}', '{"layers": {"a": {"format": "float8_e5m2"}}}']


def _values(r, shape, dtype):
    t = torch.randn(shape, generator=torch.Generator().manual_seed(r.randrange(2 ** 32)))   # r's seed makes them
    return t.to(dtype) if dtype.is_floating_point else (t > 0) if dtype == torch.bool else (t * 9).abs().to(dtype)


def _mutate(r, sd, meta):
    """One edit of the kinds a damaged download, a merge script or a hand edit makes."""
    key = r.choice(list(sd))
    shape, kind = list(sd[key].shape), r.randrange(10)
    if kind == 0:
        del sd[key]
    elif kind == 1:     # another rank
        sd[key] = _values(r, r.choice([[], [sd[key].numel()], shape[1:], [*shape, 2], [0] + shape[1:]]), sd[key].dtype)
    elif kind == 2 and shape:      # another size
        shape[r.randrange(len(shape))] = r.choice([0, 1, 3, 64, 384])
        sd[key] = _values(r, shape, sd[key].dtype)
    elif kind == 3:
        sd[key] = _values(r, shape, r.choice(DTYPES))
    elif kind == 4 and key.endswith(".weight"):      # FP8, with a scale of some shape, type and sign
        sd[key] = sd[key].float().to(torch.float8_e4m3fn)[(0,) * len(shape) if r.random() < 0.2 else ...].clone()
        scale = _values(r, r.choice([[], [1], shape[:1], [0], [2, 3]]), r.choice([torch.float32, torch.int8]))
        sd[key[:-len("weight")] + r.choice(["weight_scale", "scale_weight"])] = scale
    elif kind == 5:     # a format tag, as written or cast by a tool that casts every tensor
        tag = torch.frombuffer(bytearray(r.choice(COMFY_QUANT)), dtype=torch.uint8)
        sd[key.rsplit(".", 1)[0] + ".comfy_quant"] = r.choice([tag, tag.to(torch.bfloat16), tag.reshape(1, -1)])
    elif kind == 6:
        meta["_quantization_metadata"] = r.choice(QUANT_METADATA)
    elif kind == 7:
        sd[r.choice(JUNK_KEYS)] = _values(r, r.choice([[], [4], [2, 2]]), r.choice(DTYPES))
    elif kind == 8 and sd[key].is_floating_point() and sd[key].numel():   # NaN, Inf, or beyond fp16's range
        t = sd[key].float().flatten()
        t[r.randrange(t.numel())] = r.choice([float("nan"), float("inf"), 1e6])
        sd[key] = t.reshape(shape).to(sd[key].dtype)
    elif kind == 9:     # a second copy under ComfyUI's prefix
        sd["model.diffusion_model." + key] = sd[key].clone()


def damaged(case, folder):
    """The path of the damaged model of seed `case`: a .safetensors file (sometimes cut short or with bytes
    overwritten), a .pth file or a folder of shards."""
    r = random.Random(case)
    sd = tiny.state_dict(tiny.info(r.choice(["T2V", "I2V", "DF"]), dim=128, ffn_dim=256), seed=case)
    meta = {}
    for _ in range(r.randrange(1, 4)):
        _mutate(r, sd, meta)
    sd = {k: v.contiguous() for k, v in sd.items()}
    how, path = r.randrange(4), os.path.join(folder, f"case{case}")
    if how == 0:
        torch.save(sd, path + ".pth")
        return path + ".pth"
    if how == 1:
        tiny.write_release(path, sd, shards=r.choice([1, 2]))
        return path
    safetensors.torch.save_file(sd, path + ".safetensors", metadata=meta or None)
    if how == 3:
        data = bytearray(open(path + ".safetensors", "rb").read())
        if r.random() < 0.5:
            data = data[:r.randrange(len(data))]
        for _ in range(r.randrange(1, 8)):
            data[r.randrange(len(data))] = r.randrange(256)
        with open(path + ".safetensors", "wb") as f:
            f.write(data)
    return path + ".safetensors"


def _read(case, path, out):
    """What Load FP8 SkyReels Model and Convert to FP8 do with the file, with the widgets' values drawn at random."""
    r = random.Random(-case)
    with Checkpoint(path) as ckpt:
        info = ckpt.model_info()
        ckpt.require_keys(info)
        load_fp8_state_dict(ckpt, info, r.choice(list(WEIGHT_FORMATS)), r.choice([0, 1]), r.choice([0, 2]),
                            compute_dtype=r.choice([torch.bfloat16, torch.float16]))
    convert(path, out, Options(fp8=r.choice(["e4m3fn", "e5m2"]), granularity=r.choice(["tensor", "channel"]),
                               keep_first_blocks=r.choice([0, 1])), verify=True)


def test_every_damaged_file_is_read_or_refused_by_name(tmp_path):
    unnamed, refused = [], 0
    for case in range(CASES):
        path, out = damaged(case, str(tmp_path)), str(tmp_path / f"out{case}.safetensors")
        try:
            _read(case, path, out)
        except CheckpointError as e:
            refused += 1
            if path not in str(e):
                unnamed.append(f"case {case}: {e}")
        except Exception as e:
            where = "".join(traceback.format_tb(e.__traceback__)[-2:])
            unnamed.append(f"case {case}: {type(e).__name__}: {e}\n{where}")
    assert not unnamed, "\n".join(unnamed[:5])
    # Both outcomes occur: the edits are not all fatal, nor all harmless.
    assert 0.5 * CASES < refused < CASES, refused
