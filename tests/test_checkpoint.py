import re

import pytest
import safetensors.torch
import torch

from quant import Checkpoint, CheckpointError, ModelInfo, detect, tiny
from quant.policy import should_quantize
from helpers import write_tiny

# original Wan name -> diffusers name, written out independently of quant.checkpoint's table.
TO_DIFFUSERS = [
    (r"^text_embedding\.0\.", "condition_embedder.text_embedder.linear_1."),
    (r"^text_embedding\.2\.", "condition_embedder.text_embedder.linear_2."),
    (r"^time_embedding\.0\.", "condition_embedder.time_embedder.linear_1."),
    (r"^time_embedding\.2\.", "condition_embedder.time_embedder.linear_2."),
    (r"^time_projection\.1\.", "condition_embedder.time_proj."),
    (r"^img_emb\.proj\.0\.", "condition_embedder.image_embedder.norm1."),
    (r"^img_emb\.proj\.1\.", "condition_embedder.image_embedder.ff.net.0.proj."),
    (r"^img_emb\.proj\.3\.", "condition_embedder.image_embedder.ff.net.2."),
    (r"^img_emb\.proj\.4\.", "condition_embedder.image_embedder.norm2."),
    (r"^fps_projection\.0\.", "fps_projection.net.0.proj."),
    (r"^fps_projection\.2\.", "fps_projection.net.2."),
    (r"^head\.head\.", "proj_out."),
    (r"^head\.modulation$", "scale_shift_table"),
    (r"\.modulation$", ".scale_shift_table"),
    (r"\.self_attn\.o\.", ".attn1.to_out.0."),
    (r"\.cross_attn\.o\.", ".attn2.to_out.0."),
    (r"\.self_attn\.([qkv])\.", r".attn1.to_\1."),
    (r"\.cross_attn\.([qkv])\.", r".attn2.to_\1."),
    (r"\.self_attn\.norm_([qk])\.", r".attn1.norm_\1."),
    (r"\.cross_attn\.norm_k_img\.", ".attn2.norm_added_k."),
    (r"\.cross_attn\.norm_([qk])\.", r".attn2.norm_\1."),
    (r"\.cross_attn\.([kv])_img\.", r".attn2.add_\1_proj."),
    (r"\.norm3\.", ".norm2."),
    (r"\.ffn\.0\.", ".ffn.net.0.proj."),
    (r"\.ffn\.2\.", ".ffn.net.2."),
]


def to_diffusers(key):
    for a, b in TO_DIFFUSERS:
        new, n = re.subn(a, b, key)
        if n:
            return new
    return key


def assert_same(ckpt, sd):
    assert sorted(ckpt.names) == sorted(sd)
    for k, v in sd.items():
        assert torch.equal(ckpt.load(k), v), k


@pytest.mark.parametrize("variant", ["T2V", "I2V", "DF"])
@pytest.mark.parametrize("prefix", ["", "model.diffusion_model."])
def test_single_file_with_or_without_prefix(tmp_path, variant, prefix):
    sd = write_tiny(tmp_path / "m.safetensors", variant, prefix=prefix)
    ckpt = Checkpoint(str(tmp_path / "m.safetensors"))
    assert_same(ckpt, sd)
    assert ckpt.model_info().variant == variant
    assert ckpt.check_keys(ckpt.model_info()) == ([], [])


@pytest.mark.parametrize("variant", ["T2V", "I2V", "DF"])
def test_diffusers_names_map_to_original(tmp_path, variant):
    sd = tiny.state_dict(tiny.info(variant))
    diff = {to_diffusers(k): v for k, v in sd.items()}
    assert len(diff) == len(sd) and "blocks.0.attn1.to_q.weight" in diff
    safetensors.torch.save_file(diff, str(tmp_path / "d.safetensors"))
    assert_same(Checkpoint(str(tmp_path / "d.safetensors")), sd)


def test_shard_folder_with_index(tmp_path):
    sd = tiny.state_dict(tiny.info("I2V"))
    tiny.write_release(str(tmp_path), sd, shards=3)
    (tmp_path / "unrelated.safetensors").write_bytes(b"not listed in the index, so never opened")
    assert_same(Checkpoint(str(tmp_path)), sd)


def test_shard_folder_without_index(tmp_path):
    sd = tiny.state_dict(tiny.info("T2V"))
    tiny.write_release(str(tmp_path), sd, shards=3)
    (tmp_path / "model.safetensors.index.json").unlink()
    assert_same(Checkpoint(str(tmp_path)), sd)


def test_shard_listed_in_index_but_missing(tmp_path):
    tiny.write_release(str(tmp_path), tiny.state_dict(tiny.info("T2V")), shards=3)
    (tmp_path / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model-00002-of-00003.safetensors: shard listed in .* is missing"):
        Checkpoint(str(tmp_path))


def test_empty_folder(tmp_path):
    with pytest.raises(CheckpointError, match="no .safetensors shards"):
        Checkpoint(str(tmp_path))


def test_pth_loads_with_weights_only(tmp_path):
    sd = tiny.state_dict(tiny.info("T2V"))
    torch.save(sd, tmp_path / "m.pth")
    assert_same(Checkpoint(str(tmp_path / "m.pth")), sd)
    torch.save({"state_dict": sd}, tmp_path / "wrapped.pt")
    assert_same(Checkpoint(str(tmp_path / "wrapped.pt")), sd)


class Payload:
    def __reduce__(self):
        return (print, ("this would run on load",))


def test_pickled_code_is_refused(tmp_path, capsys):
    torch.save({"weight": torch.ones(2), "x": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match=r"evil.pth: refused: .*weights_only=True"):
        Checkpoint(str(tmp_path / "evil.pth"))
    assert "this would run" not in capsys.readouterr().out


def test_real_model_sizes_from_shapes():
    for size, dims in tiny.REAL.items():
        for variant in ("T2V", "I2V", "DF"):
            shapes = tiny.shapes(tiny.info(variant, **dims))
            info = detect(shapes)
            assert (info.size, info.variant, info.num_layers, info.num_heads) == (
                size, variant, dims["num_layers"], dims["dim"] // 128)
    assert detect(tiny.shapes(tiny.info("T2V", **tiny.REAL["1.3B"]))).describe() == \
        "SkyReels-V2 T2V/DF 1.3B, 30 blocks"


def test_other_architecture_is_named(tmp_path):
    safetensors.torch.save_file({"model.layers.0.mlp.up_proj.weight": torch.ones(4, 4),
                                 "lm_head.weight": torch.ones(4, 4)}, str(tmp_path / "llm.safetensors"))
    with pytest.raises(CheckpointError, match=r"llm.safetensors: not a SkyReels-V2/Wan diffusion model"):
        Checkpoint(str(tmp_path / "llm.safetensors")).model_info()


@pytest.mark.parametrize("variant", ["T2V", "I2V", "DF"])
def test_policy_quantizes_exactly_the_block_linears(variant):
    info = tiny.info(variant, num_layers=4)
    keys = info.expected_keys()
    linears = {"self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q", "cross_attn.k",
               "cross_attn.v", "cross_attn.o", "ffn.0", "ffn.2"} | ({"cross_attn.k_img", "cross_attn.v_img"}
                                                                      if variant == "I2V" else set())
    want = {f"blocks.{i}.{l}.weight" for i in range(4) for l in linears}
    assert {k for k in keys if should_quantize(k, 4)} == want
    kept = {k for k in keys if should_quantize(k, 4, keep_first_blocks=1, keep_last_blocks=2)}
    assert kept == {k for k in want if k.startswith("blocks.1.")}


def test_model_info_expected_keys_match_generated_shapes():
    info = ModelInfo(variant="I2V", dim=256, ffn_dim=512, num_layers=3, in_dim=36, has_fps=False)
    assert set(tiny.shapes(info)) == set(info.expected_keys())


def test_reads_without_pread_and_from_two_threads(tmp_path, monkeypatch):
    # Windows' os has no pread/preadv; the converter reads the next tensor in a thread while it quantizes.
    from concurrent.futures import ThreadPoolExecutor
    for name in ("pread", "preadv"):
        monkeypatch.delattr("os." + name, raising=False)
    sd = write_tiny(tmp_path / "m.safetensors", "T2V")
    with Checkpoint(str(tmp_path / "m.safetensors")) as ckpt, ThreadPoolExecutor(4) as pool:
        names = ckpt.names * 4
        for name, t in zip(names, pool.map(ckpt.load, names)):
            assert torch.equal(t, sd[name]), name


def test_truncated_data_is_named(tmp_path):
    path = tmp_path / "m.safetensors"
    write_tiny(path, "T2V")
    with Checkpoint(str(path)) as ckpt:
        with open(path, "r+b") as f:   # cut after the header was read: the last tensor's bytes are gone
            f.truncate(path.stat().st_size - 100)
        last = max(ckpt.names, key=lambda n: ckpt._index[n][0]._header[n]["data_offsets"][1])
        with pytest.raises(CheckpointError, match="the file is truncated; download or copy it again"):
            ckpt.load(last)
