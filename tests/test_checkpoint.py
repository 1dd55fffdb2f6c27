import json
import re

import pytest
import safetensors.torch
import torch

from quant import Checkpoint, CheckpointError, convert, tiny
from quant.model_info import ModelInfo, detect
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
@pytest.mark.parametrize("prefix", ["", "model.diffusion_model.", "diffusion_model.", "model.", "module."])
def test_single_file_with_or_without_prefix(tmp_path, variant, prefix):
    sd = write_tiny(tmp_path / "m.safetensors", variant, prefix=prefix)
    ckpt = Checkpoint(str(tmp_path / "m.safetensors"))
    assert_same(ckpt, sd)
    assert ckpt.model_info().variant == variant
    assert ckpt.require_keys(ckpt.model_info()) == []


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


def test_overlapping_files_say_whether_they_were_shards(tmp_path):
    # Without an index every .safetensors is read: a model with a conversion saved beside it is two models, which
    # "the shards overlap" described as a damaged download.
    sd = tiny.state_dict(tiny.info("T2V"))
    safetensors.torch.save_file(sd, str(tmp_path / "model.safetensors"))
    safetensors.torch.save_file(sd, str(tmp_path / "model_fp8.safetensors"))
    with pytest.raises(CheckpointError) as e:
        Checkpoint(str(tmp_path))
    assert str(e.value) == (f"{tmp_path}: holds 2 .safetensors files and no shard index, and tensor "
                            f"{sorted(sd)[0]} is in model.safetensors and in model_fp8.safetensors: several models, "
                            "not one model's shards; give one file, or move the others out")
    # with an index that lists both, they are a release's shards that overlap
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        sorted(sd)[0]: "model.safetensors", sorted(sd)[1]: "model_fp8.safetensors"}}))
    with pytest.raises(CheckpointError, match=re.escape(f"{tmp_path}: tensor {sorted(sd)[0]} appears twice "
                                                        f"({sorted(sd)[0]}); the shards overlap")):
        Checkpoint(str(tmp_path))


def test_a_folder_with_two_shard_indexes_is_refused(tmp_path):
    # An empty index that sorted first used to be read instead of the model's ("no .safetensors shards").
    tiny.write_release(str(tmp_path), tiny.state_dict(tiny.info("T2V")), shards=2)
    (tmp_path / "a.safetensors.index.json").write_text('{"weight_map": {}}')
    with pytest.raises(CheckpointError, match=re.escape(
            f"{tmp_path}: holds 2 shard indexes (a.safetensors.index.json, model.safetensors.index.json); a model's "
            "folder has one: move the others out, with their shards")):
        Checkpoint(str(tmp_path))


def test_shard_listed_in_index_but_missing(tmp_path):
    tiny.write_release(str(tmp_path), tiny.state_dict(tiny.info("T2V")), shards=3)
    (tmp_path / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model-00002-of-00003.safetensors: shard listed in .* is missing"):
        Checkpoint(str(tmp_path))


def test_a_shard_the_index_does_not_list_is_named_when_tensors_are_missing(tmp_path):
    # An index older than the shards beside it: the missing tensors' message used to stop at "download again".
    tiny.write_release(str(tmp_path), tiny.state_dict(tiny.info("T2V")), shards=2)
    index = tmp_path / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    data["weight_map"] = {k: v for k, v in data["weight_map"].items() if v != "model-00002-of-00002.safetensors"}
    index.write_text(json.dumps(data))
    with pytest.raises(CheckpointError) as e:
        with Checkpoint(str(tmp_path)) as ckpt:
            ckpt.require_keys(ckpt.model_info())
    assert str(e.value).endswith(" (the folder also holds model-00002-of-00002.safetensors, which its index does not "
                                 "list: if that is a shard of this model, the index is out of date)"), str(e.value)


def test_empty_folder(tmp_path):
    with pytest.raises(CheckpointError, match="no .safetensors shards"):
        Checkpoint(str(tmp_path))


def test_pth_loads_with_weights_only(tmp_path):
    sd = tiny.state_dict(tiny.info("T2V"))
    torch.save(sd, tmp_path / "m.pth")
    assert_same(Checkpoint(str(tmp_path / "m.pth")), sd)
    torch.save({"state_dict": sd}, tmp_path / "wrapped.pt")
    assert_same(Checkpoint(str(tmp_path / "wrapped.pt")), sd)
    # A training checkpoint: the weights beside other things, one level deeper, under DDP's "module." prefix.
    torch.save({"epoch": 3, "model": {"state_dict": {"module." + k: v for k, v in sd.items()}}}, tmp_path / "t.pt")
    assert_same(Checkpoint(str(tmp_path / "t.pt")), sd)
    torch.save({"module": sd, "epoch": 3}, tmp_path / "ds.pt")        # DeepSpeed's {"module": state dict, ...}
    assert_same(Checkpoint(str(tmp_path / "ds.pt")), sd)
    torch.save({"epoch": 3, "step": 10}, tmp_path / "no_weights.pt")
    with pytest.raises(CheckpointError, match=re.escape("no_weights.pt: not a state dict of tensors (it holds a dict "
                                                        "of epoch, step); save the model's state_dict alone, or use "
                                                        "a .safetensors release")):
        Checkpoint(str(tmp_path / "no_weights.pt"))


class Payload:
    def __reduce__(self):
        return (print, ("this would run on load",))


def test_pickled_code_is_refused(tmp_path, capsys):
    torch.save({"weight": torch.ones(2), "x": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match=r"evil.pth: refused: .*weights_only=True"):
        Checkpoint(str(tmp_path / "evil.pth"))
    assert "this would run" not in capsys.readouterr().out


@pytest.mark.parametrize("content", [b"<html>404 Not Found</html>", bytes(range(256))])
def test_a_pth_that_is_no_pickle_is_called_damaged_not_refused(tmp_path, content):
    (tmp_path / "page.pth").write_bytes(content)    # what a failed download saves under the model's name
    with pytest.raises(CheckpointError, match=r"page.pth: not a PyTorch weights file .*download it again"):
        Checkpoint(str(tmp_path / "page.pth"))


@pytest.mark.parametrize("name", ["m.pth", "m.safetensors"])
def test_an_empty_file_is_called_empty(tmp_path, name):
    (tmp_path / name).write_bytes(b"")     # a download that stopped at once (it said "()" for a .pth)
    with pytest.raises(CheckpointError) as e:
        Checkpoint(str(tmp_path / name))
    assert str(e.value) == (f"{tmp_path / name}: the file is empty (0 bytes): a download or copy that did not "
                            "finish; download it again")


@pytest.mark.parametrize("zip_format", [True, False])
def test_a_pytorch_file_named_safetensors_is_named(tmp_path, zip_format):
    torch.save(tiny.state_dict(tiny.info("T2V")), tmp_path / "m.safetensors", _use_new_zipfile_serialization=zip_format)
    with pytest.raises(CheckpointError) as e:      # it was "header too large; check that the download finished"
        Checkpoint(str(tmp_path / "m.safetensors"))
    assert str(e.value) == (f"{tmp_path / 'm.safetensors'}: a PyTorch file (torch.save's format) named .safetensors; "
                            "rename it to .pth (read with weights_only=True), or download the .safetensors release")


@pytest.mark.parametrize("kind", ["meta", "sparse"])
def test_a_pth_with_tensors_of_no_values_or_another_layout_is_named(tmp_path, kind):
    # a model saved before its weights were loaded, or a pruned one saved sparse: raw torch errors before
    sd = tiny.state_dict(tiny.info("T2V"))
    key = "blocks.0.ffn.0.weight"
    sd[key] = torch.empty(sd[key].shape, device="meta") if kind == "meta" else sd[key].to_sparse()
    torch.save(sd, tmp_path / "m.pth")
    what = "no values (a meta tensor)" if kind == "meta" else "a torch.sparse_coo layout"
    with pytest.raises(CheckpointError) as e:
        Checkpoint(str(tmp_path / "m.pth"))
    assert str(e.value) == (f"{tmp_path / 'm.pth'}: tensor {key} has {what}, not the dense weights of a trained model; "
                            "save the state_dict of the loaded model, or use a .safetensors release")


@pytest.mark.parametrize("name", ["m.pth", "m.safetensors"])
def test_a_tensor_of_a_dtype_no_model_uses_is_named_when_read(tmp_path, name):
    sd = tiny.state_dict(tiny.info("T2V"))
    sd["extra.counter"] = torch.zeros(3, dtype=torch.uint16)      # beside the model: the loader names it and goes on
    key = "blocks.0.norm3.weight"
    sd[key] = sd[key].to(torch.uint16)                            # the model's own: the file is damaged
    (torch.save if name.endswith(".pth") else safetensors.torch.save_file)(sd, str(tmp_path / name))
    with Checkpoint(str(tmp_path / name)) as ckpt:
        assert ckpt.spec(key)[1] is None    # as a .safetensors file could not hold it: each reader says the same
        with pytest.raises(CheckpointError) as e:
            ckpt.load("extra.counter")
        assert str(e.value) == (f"{tmp_path / name}: tensor extra.counter has a data type "
                                f"({'uint16' if name.endswith('.pth') else 'U16'}) a SkyReels-V2 model does not use; "
                                "remove it, or use the original release")
        with pytest.raises(CheckpointError) as e:
            ckpt.model_info()
        assert str(e.value) == (f"{tmp_path / name}: tensor {key} holds values of a data type no model uses, not "
                                "floating-point weights: the file is damaged or not a model release; use the original "
                                "download")


def test_a_pth_keyed_by_other_than_names_is_not_a_state_dict(tmp_path):
    torch.save({0: torch.zeros(2)}, tmp_path / "m.pth")    # it ended in a TypeError from the key renaming
    with pytest.raises(CheckpointError, match=re.escape("m.pth: not a state dict of tensors (it holds a dict of 0)")):
        Checkpoint(str(tmp_path / "m.pth"))


def test_real_model_sizes_from_shapes():
    for size, dims in tiny.REAL.items():
        for variant in ("T2V", "I2V", "DF"):
            shapes = tiny.info(variant, **dims).expected_shapes()
            info = detect(shapes)
            assert (info.size, info.variant, info.num_layers) == (size, variant, dims["num_layers"])
    assert detect(tiny.info("T2V", **tiny.REAL["1.3B"]).expected_shapes()).describe() == \
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
    assert set(info.expected_shapes()) == set(info.expected_keys())


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


@pytest.mark.parametrize("change", ["cut", "appended"])
def test_a_file_of_another_size_than_its_header_gives_is_named(tmp_path, change):
    path = tmp_path / "m.safetensors"
    write_tiny(path, "T2V")
    data = path.read_bytes()
    path.write_bytes(data[:-1] if change == "cut" else data + bytes(100))    # safetensors says the same of both
    with pytest.raises(CheckpointError) as e:
        Checkpoint(str(path))
    assert str(e.value) == (f"{path}: the file is truncated or damaged (not the size its header gives); download or "
                            "copy it again")


def test_a_shard_alone_names_its_folder(tmp_path):
    tiny.write_release(str(tmp_path / "SkyReels-V2-DF-14B-540P"), tiny.state_dict(tiny.info("DF")), shards=2)
    shard = tmp_path / "SkyReels-V2-DF-14B-540P" / "model-00001-of-00002.safetensors"
    with pytest.raises(CheckpointError) as e:
        Checkpoint(str(shard))
    assert str(e.value) == (f"{shard}: one shard of the model in SkyReels-V2-DF-14B-540P/ (listed in "
                            "model.safetensors.index.json); give the folder (the loaders list it as "
                            "SkyReels-V2-DF-14B-540P/)")

    (tmp_path / "SkyReels-V2-DF-14B-540P" / "a.safetensors.index.json").write_text('{"weight_map": {}}')
    with pytest.raises(CheckpointError, match=re.escape("(listed in model.safetensors.index.json)")):
        Checkpoint(str(shard))     # beside a second index too (it loaded alone)


@pytest.mark.parametrize("index,why", [('{"weight_map": {"a": ', "Expecting value"),
                                       ("[]", "list indices must be integers or slices, not str"),
                                       ('{"weight_map": {"a": null}}', "names something other than files"),
                                       ('{"weight_map": {}}', "its weight_map lists no files"),
                                       ('{"metadata": {}}', None)])
def test_a_damaged_shard_index_is_named(tmp_path, index, why):
    tiny.write_release(str(tmp_path), tiny.state_dict(tiny.info("T2V")), shards=2)
    (tmp_path / "model.safetensors.index.json").write_text(index)
    told = (re.escape(f"{tmp_path / 'model.safetensors.index.json'}: not a readable shard index (") + ".*" +
            re.escape(why) if why else re.escape(f"{tmp_path / 'model.safetensors.index.json'}: not a shard index (it "
                                                 "has no weight_map); download it again"))
    with pytest.raises(CheckpointError, match=told):
        Checkpoint(str(tmp_path))
    sd = write_tiny(tmp_path / "single.safetensors", "T2V")     # a model of one file beside it still loads
    assert_same(Checkpoint(str(tmp_path / "single.safetensors")), sd)


def test_a_diffusers_pipeline_folder_names_its_subfolders(tmp_path):
    # A *-Diffusers download: model_index.json, and the diffusion model in transformer/.
    tiny.write_release(str(tmp_path / "transformer"), tiny.state_dict(tiny.info("T2V")))
    (tmp_path / "vae").mkdir()
    with pytest.raises(CheckpointError, match=re.escape("the folder has no .safetensors shards; give the subfolder "
                                                        "that holds the diffusion model (transformer/, vae/)")):
        Checkpoint(str(tmp_path))


@pytest.mark.parametrize("in_dim,out_dim,img,why", [
    (48, 48, False, "it takes 48 latent channels and makes 48 (as Wan 2.2 TI2V-5B), where"),
    (36, 16, False, "it takes 36 latent channels and makes 16 (as Wan 2.2 I2V-A14B), where"),
    (48, 16, True, "it takes 48 latent channels and makes 16 (as Wan 2.1 Fun Control), where"),
    (16, 16, True, "it takes 16 latent channels and makes 16, where"),
])
def test_other_latent_channels_are_not_skyreels_v2(in_dim, out_dim, img, why):
    # Wan 2.2 models have Wan 2.1's key names; only the patch embedding's and the head's shapes tell them apart.
    shapes = tiny.info("I2V" if img else "T2V").expected_shapes()
    shapes["patch_embedding.weight"] = (256, in_dim, 1, 2, 2)
    shapes["head.head.weight"] = (4 * out_dim, 256)
    with pytest.raises(ValueError, match=re.escape(f"not a model this pack runs: {why}")):
        detect(shapes)


def test_scail_is_named_not_called_a_channel_count():
    # ComfyUI's SCAIL (patch_embedding_pose, 20 input channels, CLIP embedding) is named, so the user knows what it is
    shapes = tiny.info("I2V").expected_shapes()
    shapes["patch_embedding.weight"] = shapes["patch_embedding_pose.weight"] = (256, 20, 1, 2, 2)
    with pytest.raises(ValueError, match=re.escape("this is a Wan SCAIL / WanDancer model, not SkyReels-V2; load it "
                                                   "with ComfyUI's Load Diffusion Model node")):
        detect(shapes)


def test_a_hidden_size_that_is_no_multiple_of_128_is_not_a_wan_model(tmp_path):
    # Wan's attention heads are 128 wide: a dim of 192 is some other model, named here, not a shape error mid-run
    write_tiny(tmp_path / "m.safetensors", "T2V", dim=192)
    refusal = r"not a SkyReels-V2/Wan diffusion model \(hidden size 192 is not a multiple of 128\)"
    with Checkpoint(str(tmp_path / "m.safetensors")) as ckpt, pytest.raises(CheckpointError, match=refusal):
        ckpt.model_info()


def test_diffusers_names_under_ddps_module_prefix_are_read(tmp_path):
    # a diffusers-named fine-tune saved from a DDP-wrapped model: "module.condition_embedder..." is still diffusers
    sd = tiny.state_dict(tiny.info("T2V"))
    torch.save({"module." + to_diffusers(k): v for k, v in sd.items()}, tmp_path / "ddp.pth")
    with Checkpoint(str(tmp_path / "ddp.pth")) as ckpt:
        assert ckpt.diffusers and ckpt.model_info().variant == "T2V"
        assert_same(ckpt, sd)


def test_other_wan_models_are_named_first():
    # Fun 1.1 Control has 48 input channels too, and a reference conv: named by its keys, not its channels.
    shapes = tiny.info("I2V").expected_shapes()
    shapes["patch_embedding.weight"], shapes["ref_conv.weight"] = (256, 48, 1, 2, 2), (256, 16, 2, 2)
    with pytest.raises(ValueError, match=re.escape("this is a Wan Fun reference model, not SkyReels-V2; load it with "
                                                   "ComfyUI's Load Diffusion Model node")):
        detect(shapes)


def test_multitalk_merged_into_an_i2v_model_loads_as_the_i2v_it_is_and_humo_is_named():
    # MultiTalk's setup links its patch into an I2V release's index: core loads that as I2V and drops the audio
    # layers, and so does the loader (naming them). HuMo, a model of its own, is named by core's key for it.
    shapes = tiny.info("I2V").expected_shapes()
    multitalk = {**shapes, "audio_proj.proj1.weight": (64, 32), "blocks.0.audio_cross_attn.proj.weight": (256, 256)}
    assert detect(multitalk).variant == "I2V"
    humo = {**tiny.info("T2V").expected_shapes(), "audio_proj.audio_proj_glob_1.layer.weight": (64, 32)}
    with pytest.raises(ValueError, match=re.escape("this is a Wan HuMo model, not SkyReels-V2")):
        detect(humo)


@pytest.mark.parametrize("keys,where", [
    # MultiTalk / InfiniteTalk's patch, which core's Load Model Patch node loads
    (["audio_proj.proj1.weight", "audio_proj.norm.weight", "blocks.0.audio_cross_attn.proj.weight"],
     "MultiTalk / InfiniteTalk add-on; ComfyUI's Load Model Patch node loads it (models/model_patches)"),
    # Kijai's VACE module file: core's loaders cannot detect it, so not "Load Diffusion Model"
    (["vace_patch_embedding.weight", "vace_blocks.0.before_proj.weight"], "VACE add-on; use it with the nodes made "
                                                                          "for it"),
])
def test_an_add_on_alone_is_not_called_a_model(keys, where):
    with pytest.raises(ValueError, match=re.escape(f"not a whole model: this file holds only the weights of a Wan "
                                                   f"{where}")):
        detect({k: (8, 8) for k in keys})


@pytest.mark.parametrize("keys", [
    ["blocks.0.self_attn.q.lora_down.weight", "blocks.0.self_attn.q.lora_up.weight", "blocks.0.self_attn.q.alpha"],
    ["transformer.blocks.0.attn1.to_q.lora_A.weight", "transformer.blocks.0.attn1.to_q.lora_B.weight"],  # diffusers
    ["blocks.0.self_attn.q.diff", "blocks.0.self_attn.q.diff_b"],          # a "diff" LoRA (full weight differences)
    ["lora_unet_blocks_0_self_attn_q.lora_down.weight", "lora_unet_blocks_0_self_attn_q.alpha"],          # kohya
    ["blocks.0.self_attn.q.hada_w1_a", "blocks.0.self_attn.q.hada_w1_b"],                                 # LoHa
    ["vace_blocks.0.self_attn.q.lora_down.weight", "vace_blocks.0.self_attn.q.lora_up.weight"],   # a VACE LoRA
])
def test_a_lora_is_named_by_its_keys(keys):
    with pytest.raises(ValueError, match=re.escape("this is a LoRA, not a model: put it in models/loras and apply it "
                                                   "to the loader's MODEL with ComfyUI's Load LoRA node")):
        detect({k: (8, 8) for k in keys})


def test_alpha_keys_alone_are_not_a_lora():
    # Snake activations (BigVGAN vocoders) have .alpha keys too: without LoRA weights beside them, not a LoRA
    with pytest.raises(ValueError, match=re.escape("not a SkyReels-V2/Wan diffusion model (no patch_embedding.weight, "
                                                   "head.modulation, head.head.weight); this pack runs SkyReels-V2 "
                                                   "and Wan 2.1 models, ComfyUI's own loaders run other models")):
        detect({"ups.0.act.alpha": (8,), "ups.0.conv.weight": (8, 8, 3)})


def test_another_wan_model_as_shards_or_diffusers_names_is_not_sent_to_core_as_it_is(tmp_path):
    # Wan-AI's own download of a model core runs (Wan 2.2 TI2V-5B): core's Load Diffusion Model takes one file with
    # Wan's key names, so the advice says so; one such file keeps the plain advice.
    sd = tiny.state_dict(tiny.info("T2V"), seed=1)
    sd["patch_embedding.weight"] = torch.zeros(256, 48, 1, 2, 2, dtype=torch.bfloat16)
    sd["head.head.weight"], sd["head.head.bias"] = torch.zeros(192, 256), torch.zeros(192)
    tiny.write_release(str(tmp_path / "shards"), sd, shards=2)
    safetensors.torch.save_file({to_diffusers(k): v for k, v in sd.items()}, str(tmp_path / "diffusers.safetensors"))
    safetensors.torch.save_file(sd, str(tmp_path / "one.safetensors"))
    hint = ("ComfyUI's Load Diffusion Model node runs other Wan models (it takes one .safetensors file with Wan's own "
            "key names, as ComfyUI's repackaged releases are, not shards or diffusers names)")
    for name in ("shards", "diffusers.safetensors"):
        with pytest.raises(CheckpointError, match=re.escape(hint)):
            Checkpoint(str(tmp_path / name)).model_info()
    with pytest.raises(CheckpointError, match=re.escape("runs other Wan models")) as e:
        Checkpoint(str(tmp_path / "one.safetensors")).model_info()
    assert "shards" not in str(e.value)


def test_a_gguf_file_is_sent_to_comfyui_gguf(tmp_path):
    (tmp_path / "wan_q8.gguf").write_bytes(b"GGUF")
    with pytest.raises(CheckpointError, match=re.escape("wan_q8.gguf: a GGUF file: ComfyUI-GGUF's Unet Loader (GGUF) "
                                                        "loads it")):
        Checkpoint(str(tmp_path / "wan_q8.gguf"))


# ---- FP8 files as the loader reads them (quant.formats): a scale that is missing, unreadable or of the wrong size
# is named; weights are never read with scale 1 where the file meant another ----

def fp8_file(tmp_path, granularity, edit=None, metadata=True):
    from quant import Options, convert
    tmp_path.mkdir(exist_ok=True)
    write_tiny(tmp_path / "bf16.safetensors", "T2V", seed=1)
    convert(str(tmp_path / "bf16.safetensors"), str(tmp_path / "fp8.safetensors"), Options(granularity=granularity))
    sd = safetensors.torch.load_file(str(tmp_path / "fp8.safetensors"))
    with Checkpoint(str(tmp_path / "fp8.safetensors")) as ckpt:
        meta = ckpt.metadata if metadata else None
    if edit:
        edit(sd)
    safetensors.torch.save_file(sd, str(tmp_path / "edited.safetensors"), meta)
    return str(tmp_path / "edited.safetensors")


def load(path):
    from quant.formats import load_fp8_state_dict
    with Checkpoint(path) as ckpt:
        return load_fp8_state_dict(ckpt, ckpt.model_info())


LAYER = "blocks.0.ffn.0"


def _set(key, value):
    return lambda sd: sd.__setitem__(key, value(sd) if callable(value) else value)


@pytest.mark.parametrize("granularity", ["tensor", "channel"])
@pytest.mark.parametrize("edit,why", [
    (lambda sd: sd.pop(f"{LAYER}.weight_scale"), f"layer {LAYER} is FP8 with no weight_scale: the file is damaged, "
                                                 "or scaled in a way this pack cannot read; use the bf16 original "
                                                 "or a ComfyUI FP8 file"),
    (lambda sd: sd.__setitem__(f"{LAYER}.weight_scale_inv", sd.pop(f"{LAYER}.weight_scale")),
     f"layer {LAYER} is FP8 with {LAYER}.weight_scale_inv: the file is damaged, or scaled in a way"),
    (_set(f"{LAYER}.weight_scale", torch.ones(7)), f"{LAYER}.weight_scale (7 values, smallest 1) is no scale of "
                                                   f"{LAYER}.weight [512, 256]; the file is damaged"),
    (_set(f"{LAYER}.weight_scale", lambda sd: -sd[f"{LAYER}.weight_scale"]), "is no scale of"),
    (_set(f"{LAYER}.comfy_quant", torch.tensor(list(b"garbage"), dtype=torch.uint8)),
     "its FP8 layer formats (_quantization_metadata, comfy_quant) are not readable (blocks.0.ffn.0.comfy_quant: "
     "Expecting value"),
    # Found by tests/test_damaged_files.py (each raised a TypeError or RuntimeError that named no file):
    # the tags cast by a script that casts every tensor, a format that is no name, a scale with no values, a scalar
    # FP8 tensor the model does not use (the model's own are checked for shape first)
    (_set(f"{LAYER}.comfy_quant", lambda sd: sd[f"{LAYER}.comfy_quant"].to(torch.bfloat16)),
     f"not readable ({LAYER}.comfy_quant: it is bfloat16, where ComfyUI's format writes JSON text as uint8 bytes)"),
    (_set(f"{LAYER}.comfy_quant", torch.tensor(list(b'{"format": ["x"]}'), dtype=torch.uint8)),
     f'not readable ({LAYER}.comfy_quant: it holds {{"format": ["x"]}}, not a format name)'),
    (_set(f"{LAYER}.weight_scale", torch.ones(0)), f"{LAYER}.weight_scale (0 values) is no scale of {LAYER}.weight"),
    (_set("extra.weight", lambda sd: sd[f"{LAYER}.weight"][0, 0].clone()),
     "extra.weight is one FP8 number, not a weight; the file is damaged"),
])
def test_fp8_scales_that_cannot_be_right_are_named(tmp_path, granularity, edit, why):
    path = fp8_file(tmp_path, granularity, edit)
    with pytest.raises(CheckpointError, match=re.escape(f"{path}: ") + ".*" + re.escape(why)):
        load(path)


@pytest.mark.parametrize("meta", ['{"layers": []}', '[]', '{"layers": {"blocks.0.ffn.0": "float8_e4m3fn"}}',
                                  '{"layers": {"blocks.0.ffn.0": {"format": ["x"]}}}',
                                  '{"layers": {"blocks.0.ffn.0": {}}}'])
def test_a_quantization_metadata_of_another_shape_is_named(tmp_path, meta):
    # It raised AttributeError ('list' object has no attribute 'get'), which the message then quoted (fuzzing)
    sd = safetensors.torch.load_file(fp8_file(tmp_path, "tensor"))
    safetensors.torch.save_file(sd, str(tmp_path / "m.safetensors"), {"_quantization_metadata": meta})
    with pytest.raises(CheckpointError, match=re.escape("are not readable (_quantization_metadata is no JSON object of "
                                                        "layers and their format names); the file is damaged")):
        load(str(tmp_path / "m.safetensors"))


def test_format_tags_of_other_byte_types_and_shapes_are_read_as_the_host_reads_them(tmp_path):
    # The host reads a tag's bytes whatever its shape (layer_conf.numpy().tobytes()): a tag reshaped to a row, or an
    # int8 one (ASCII is the same bytes), loads there, and here
    tagged = load(fp8_file(tmp_path / "uint8", "channel"))[0]
    for i, edit in enumerate((lambda t: t.reshape(1, -1), lambda t: t.view(torch.int8))):
        sd = load(fp8_file(tmp_path / str(i), "channel", lambda sd: [sd.__setitem__(k, edit(v)) for k, v in
                                                                    list(sd.items()) if k.endswith(".comfy_quant")],
                           metadata=False))[0]
        assert sorted(sd) == sorted(tagged)


def test_per_channel_scales_without_format_tags_are_read_per_channel(tmp_path):
    # The scale's size tells its granularity; before, such a file failed to load (reshaping 512 scales to one).
    tagged = load(fp8_file(tmp_path / "tagged", "channel"))[0]
    sd, summary = load(fp8_file(tmp_path / "untagged", "channel", lambda sd: [sd.pop(k) for k in list(sd)
                                                                 if k.endswith(".comfy_quant")], metadata=False))
    assert summary.source == "fp8 e4m3fn (scales, no format tags)" and summary.scheme == "fp8 e4m3fn per-channel"
    assert sorted(sd) == sorted(tagged)
    for k, v in tagged.items():
        assert torch.equal(sd[k].view(torch.uint8) if v.dtype == torch.float8_e4m3fn else sd[k],
                           v.view(torch.uint8) if v.dtype == torch.float8_e4m3fn else v), k


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("dtype,bad", [(d, b) for d in (torch.bfloat16, torch.float32) for b in (None, NAN, INF, -INF)]
                         + [(torch.float8_e4m3fn, None), (torch.float8_e4m3fn, NAN)],   # e4m3fn has no Inf
                         ids=lambda v: str(v).replace("torch.", ""))
def test_the_finite_check_finds_nan_and_inf_without_a_mask_of_the_tensor(tmp_path, bad, dtype):
    # Every tensor a load or conversion reads is checked. isfinite's mask and reduction took 2.5x the tensor (750 MiB
    # for the 14B model's time_projection); max |t| takes none: the meter counts the tensors torch's ops allocate.
    from test_act_quant import peak_extra_bytes
    write_tiny(tmp_path / "m.safetensors", "T2V")
    ckpt = Checkpoint(str(tmp_path / "m.safetensors"))
    t = torch.randn(1024, 256)
    if bad is not None:
        t[700, 3] = bad
    t = t.to(dtype)
    if bad is None:
        peak, _ = peak_extra_bytes(lambda: ckpt.check_finite("x", t))
        assert peak <= 4096, peak / t.nbytes     # fp8 too: its bits are read (it went through an fp32 copy)
    else:
        with pytest.raises(CheckpointError, match="tensor x has NaN/Inf values"):
            ckpt.check_finite("x", t)
    ckpt.check_finite("empty", torch.zeros(0, dtype=dtype))


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2], ids=lambda d: str(d)[6:])
def test_the_fp8_finite_check_agrees_with_torch_on_every_bit_pattern(dtype):
    # Each of the 256 bytes in a tensor of finite values, against torch's own decoding; the 1.3B model's fp8 weights
    # are checked with no temporary (per-piece masks left up to 250 MiB of freed heap behind a load: bench/load.py).
    from quant.checkpoint import fp8_non_finite
    from test_act_quant import peak_extra_bytes
    q = torch.randn(1536, 8960).to(dtype)
    for byte in range(256):
        one = q[:3].clone()
        one.view(torch.uint8)[2, 77] = byte
        assert fp8_non_finite(one) == (not torch.isfinite(one.float()).all()), hex(byte)
    peak, found = peak_extra_bytes(lambda: fp8_non_finite(q))
    assert not found and peak <= 4096, peak


def test_an_unreadable_file_is_named_as_such(tmp_path, monkeypatch):
    # What Python's open says of a file this user may not read (simulated: these tests run as root, who may read
    # anything). safetensors' own error for it was shown as a damaged download.
    write_tiny(tmp_path / "m.safetensors", "T2V")
    real_open = open

    def refusing(path, *args, **kwargs):
        if str(path).endswith("m.safetensors"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", refusing)
    with pytest.raises(CheckpointError, match=r"m\.safetensors: cannot be read \(Permission denied\); check that "
                                              r"you may read the file$"):
        Checkpoint(str(tmp_path / "m.safetensors"))


@pytest.mark.parametrize("key,shape,told", [
    ("blocks.1.ffn.0.weight", (600, 256), "tensor blocks.1.ffn.0.weight has shape [600, 256], where the model needs "
                                          "[512, 256];"),          # was loaded cut to its first 512 rows
    ("blocks.0.self_attn.q.weight", (256, 200), "tensor blocks.0.self_attn.q.weight has shape [256, 200], where"),
])
def test_a_tensor_of_another_shape_is_named(tmp_path, key, shape, told):
    sd = tiny.state_dict(tiny.info("T2V"))
    sd[key] = torch.zeros(shape, dtype=torch.bfloat16)
    safetensors.torch.save_file(sd, str(tmp_path / "m.safetensors"))
    with Checkpoint(str(tmp_path / "m.safetensors")) as ckpt:
        with pytest.raises(CheckpointError, match=re.escape(f"m.safetensors: not a whole SkyReels-V2 T2V/DF custom "
                                                            f"(dim 256), 2 blocks: {told}")):
            ckpt.require_keys(ckpt.model_info())


def test_packed_weights_of_other_formats_are_left_to_the_loader(tmp_path):
    # NVFP4 keeps two values in a byte: (out, in / 2) uint8. The loader names that format as one it cannot read
    # (quant/formats.py); the shape check does not call the file damaged first.
    sd = tiny.state_dict(tiny.info("T2V"))
    sd["blocks.0.ffn.0.weight"] = torch.zeros(512, 128, dtype=torch.uint8)
    sd["blocks.0.ffn.0.comfy_quant"] = torch.tensor(list(b'{"format": "nvfp4"}'), dtype=torch.uint8)
    safetensors.torch.save_file(sd, str(tmp_path / "m.safetensors"))
    with Checkpoint(str(tmp_path / "m.safetensors")) as ckpt:
        assert ckpt.require_keys(ckpt.model_info()) == ["blocks.0.ffn.0.comfy_quant"]


@pytest.mark.parametrize("key, shape, rank", [("head.modulation", (), 3), ("patch_embedding.weight", (256, 16), 5),
                                              ("head.head.weight", (), 2), ("blocks.0.ffn.0.weight", (512,), 2)])
def test_a_shape_detect_reads_of_another_rank_is_named(key, shape, rank):
    # detect reads the hidden size, channels and ffn size from these: another rank raised an IndexError (fuzzing)
    shapes = tiny.info("T2V").expected_shapes()
    shapes[key] = shape
    with pytest.raises(ValueError, match=re.escape(f"its {key} has shape {list(shape)}, where a Wan 2.1 DiT's has "
                                                   f"{rank} dimensions")):
        detect(shapes)


def _huge_file(path):
    """A 1 TiB .safetensors file of one bf16 tensor, sparse (no disk used)."""
    import json
    header = json.dumps({"w": {"dtype": "BF16", "shape": [1 << 39], "data_offsets": [0, 1 << 40]}}).encode()
    with open(path, "wb") as f:
        f.write(len(header).to_bytes(8, "little") + header)
        f.truncate(8 + len(header) + (1 << 40))


def test_a_file_larger_than_memory_opens(tmp_path):
    # safe_open's default maps the whole file copy-on-write, which counts against the OS's commit limit: under
    # Linux's default overcommit a 1 TiB file fails to map on any machine with less memory than that (a 28 GB 14B
    # file failed on a 24 GB one). Windows charges such a map to its commit limit too.
    _huge_file(tmp_path / "huge.safetensors")
    with Checkpoint(str(tmp_path / "huge.safetensors")) as ckpt:
        assert ckpt.spec("w") == ((1 << 39,), torch.bfloat16)


def test_an_older_safetensors_that_cannot_map_the_file_is_named(tmp_path, monkeypatch):
    import quant.checkpoint

    def old_safe_open(path, framework, device="cpu", **kwargs):   # before 0.8: no backend, the map only
        if kwargs:
            raise TypeError("safe_open() got an unexpected keyword argument 'backend'")
        raise RuntimeError(f"unable to mmap 1099511627869 bytes from file <{path}>: Cannot allocate memory (12)")

    monkeypatch.setattr(quant.checkpoint, "safe_open", old_safe_open)
    _huge_file(tmp_path / "huge.safetensors")
    with pytest.raises(CheckpointError) as e:
        Checkpoint(str(tmp_path / "huge.safetensors"))
    assert str(e.value) == (f"{tmp_path / 'huge.safetensors'}: this safetensors maps the whole file into memory, more "
                            "than this machine allows (Cannot allocate memory (12)); update it (pip install -U "
                            "safetensors: 0.8 reads without the map)")


@pytest.mark.parametrize("change", ["all int8", "int32 linear weight", "bool bias"])
def test_integer_or_bool_model_tensors_are_refused(tmp_path, change):
    # They used to be quantized as if they were weights (int8, int32) or to crash in the absmax (bool).
    from quant.formats import load_fp8_state_dict
    sd = tiny.state_dict(tiny.info("T2V"))
    if change == "all int8":
        sd = {k: (v * 100).to(torch.int8) for k, v in sd.items()}
    elif change == "int32 linear weight":
        sd["blocks.0.ffn.0.weight"] = sd["blocks.0.ffn.0.weight"].to(torch.int32)
    else:
        sd["blocks.1.self_attn.q.bias"] = sd["blocks.1.self_attn.q.bias"] > 0
    path = tmp_path / "m.safetensors"
    safetensors.torch.save_file(sd, str(path))
    dtype = {"all int8": "int8", "int32 linear weight": "int32", "bool bias": "bool"}[change]
    with Checkpoint(str(path)) as ckpt:
        for fmt in ("auto", "bf16"):
            with pytest.raises(CheckpointError, match=re.escape(f"{path}: tensor ") + r"\S+" + re.escape(
                    f" holds {dtype} values, not floating-point weights: the file is damaged or not a model release")):
                load_fp8_state_dict(ckpt, ckpt.model_info(), fmt)


def test_an_integer_layer_with_an_untagged_scale_is_a_format_the_pack_cannot_read(tmp_path):
    # int8 codes with a weight_scale beside them (no comfy_quant tag) were quantized again as if they were weights.
    from quant.formats import load_fp8_state_dict
    sd = tiny.state_dict(tiny.info("T2V"))
    sd["blocks.0.ffn.0.weight"] = (sd["blocks.0.ffn.0.weight"] * 400).to(torch.int8)
    sd["blocks.0.ffn.0.weight_scale"] = torch.tensor(0.0025)
    path = tmp_path / "int8.safetensors"
    safetensors.torch.save_file(sd, str(path))
    with Checkpoint(str(path)) as ckpt:
        with pytest.raises(CheckpointError) as e:
            load_fp8_state_dict(ckpt, ckpt.model_info())
    assert str(e.value) == (f"{path}: layer blocks.0.ffn.0 is quantized (int8) in a format this pack cannot read; "
                            "use the bf16 release or a ComfyUI FP8 file")
    with pytest.raises(CheckpointError, match="is quantized \\(int8\\) in a format this pack cannot read"):
        convert(str(path), str(tmp_path / "out.safetensors"))     # not "already FP8"


def test_an_index_naming_files_outside_its_folder_is_refused(tmp_path):
    tiny.write_release(str(tmp_path / "release"), tiny.state_dict(tiny.info("T2V")), shards=2)
    index = tmp_path / "release" / "model.safetensors.index.json"
    shard = "model-00002-of-00002.safetensors"
    (tmp_path / "release" / shard).rename(tmp_path / shard)
    index.write_text(index.read_text().replace(shard, "../" + shard))
    with pytest.raises(CheckpointError, match=re.escape(f"{index}: names '../{shard}', not a file in its folder")):
        Checkpoint(str(tmp_path / "release"))


def test_nan_in_fp8_tensors_is_refused_whatever_they_load_as(tmp_path):
    # An fp8 tensor dequantized on loading (a bf16 choice, or a tensor that stays high precision) went unchecked.
    from quant.formats import load_fp8_state_dict
    sd = tiny.state_dict(tiny.info("T2V"))
    sd = {k: v.to(torch.float8_e4m3fn) if k.endswith(".weight") and v.ndim == 2 else v for k, v in sd.items()}
    sd["blocks.0.norm3.weight"] = sd["blocks.0.norm3.weight"].to(torch.float8_e4m3fn)
    sd["blocks.0.norm3.weight"].view(torch.uint8)[1] = 0x7F          # e4m3fn's NaN
    path = tmp_path / "plain_cast.safetensors"
    safetensors.torch.save_file(sd, str(path))
    with Checkpoint(str(path)) as ckpt:
        for fmt in ("auto", "bf16", "fp16"):
            with pytest.raises(CheckpointError, match="tensor blocks.0.norm3.weight has NaN/Inf values"):
                load_fp8_state_dict(ckpt, ckpt.model_info(), fmt)
    del sd["blocks.0.norm3.weight"]
    sd["blocks.0.norm3.weight"] = torch.ones(tiny.info("T2V").dim)
    sd["blocks.1.ffn.2.scale_weight"] = torch.tensor(float("nan"))     # a legacy scaled_fp8 scale
    safetensors.torch.save_file(sd, str(path))
    with Checkpoint(str(path)) as ckpt:
        for fmt in ("auto", "bf16"):
            with pytest.raises(CheckpointError, match="tensor blocks.1.ffn.2.weight has NaN/Inf values"):
                load_fp8_state_dict(ckpt, ckpt.model_info(), fmt)


def test_another_fp8_format_asked_of_an_fp8_file_is_noted(tmp_path):
    # A plain-cast e5m2 file loaded as "fp8_e4m3fn (per-tensor)": its weights are used as they are, which the
    # report used to leave unsaid (only files with format tags got the note).
    from quant.formats import load_fp8_state_dict
    sd = tiny.state_dict(tiny.info("T2V"))
    sd = {k: v.to(torch.float8_e5m2) if k.endswith(".weight") and v.ndim == 2 and k.startswith("blocks.") else v
          for k, v in sd.items()}
    safetensors.torch.save_file(sd, str(tmp_path / "e5m2.safetensors"))
    with Checkpoint(str(tmp_path / "e5m2.safetensors")) as ckpt:
        asked = {fmt: load_fp8_state_dict(ckpt, ckpt.model_info(), fmt)[1].notes
                 for fmt in ("fp8_e4m3fn (per-tensor)", "fp8_e4m3fn (per-channel)", "fp8_e5m2", "auto")}
    note = ["the file is already fp8 e5m2 (plain cast, no scales); its FP8 weights are used as they are"]
    assert asked == {"fp8_e4m3fn (per-tensor)": note, "fp8_e4m3fn (per-channel)": note, "fp8_e5m2": [], "auto": []}


def test_the_hosts_activation_scales_belong_to_their_layer():
    """ComfyUI's quantized layers may carry `<layer>.input_scale`: part of the layer, not a model tensor the loader
    reports as unused ("N tensors ... are ignored") or loads as a weight of its own."""
    from quant.comfy_format import is_quant_extra
    for suffix in ("weight_scale", "scale_weight", "comfy_quant", "input_scale", "scale_input"):
        assert is_quant_extra(f"blocks.0.self_attn.q.{suffix}")
    assert not is_quant_extra("blocks.0.self_attn.q.weight")


def test_a_weight_beyond_float16s_range_is_named_when_loaded_as_fp16(tmp_path):
    # bf16 holds up to 3e38, fp16 65504: a larger weight loaded as fp16 became Inf without a word, and the video NaN.
    # bf16 and the fp8 formats (scaled) hold it; an fp8 weight whose scale takes it past 65504 is caught too.
    from quant.formats import load_fp8_state_dict
    sd = tiny.state_dict(tiny.info("T2V"))
    sd["blocks.1.ffn.2.weight"][3, 5] = 70000.0
    path = tmp_path / "large.safetensors"
    safetensors.torch.save_file(sd, str(path))
    with Checkpoint(str(path)) as ckpt:
        with pytest.raises(CheckpointError, match=r"large.safetensors: tensor blocks.1.ffn.2.weight holds values "
                                                  r"beyond float16's range \(65504\); load the model with "
                                                  r"weight_format bf16, on a GPU that computes in bf16 "
                                                  r"\(RTX 30xx and newer\)$"):
            load_fp8_state_dict(ckpt, ckpt.model_info(), "fp16")
        for fmt in ("bf16", "auto"):
            loaded, _ = load_fp8_state_dict(ckpt, ckpt.model_info(), fmt)
            assert all(t.float().isfinite().all() for t in loaded.values()), fmt
    # auto where ComfyUI keeps the model in fp16 (a GPU without bf16, --fp16-unet): a norm's weight
    sd["blocks.0.norm3.weight"][0] = 70000.0
    safetensors.torch.save_file(sd, str(path))
    with Checkpoint(str(path)) as ckpt:
        with pytest.raises(CheckpointError, match=r"tensor blocks.0.norm3.weight holds values beyond float16's range "
                                                  r"\(65504\), the dtype ComfyUI keeps this model's other tensors in "
                                                  r"here \(for this GPU, or --fp16-unet / --fast\); load the model "
                                                  r"with weight_format bf16, on a GPU that computes in bf16 "
                                                  r"\(RTX 30xx and newer\)$"):
            load_fp8_state_dict(ckpt, ckpt.model_info(), "auto", compute_dtype=torch.float16)
    sd = {k: v.to(torch.float8_e4m3fn) if k.endswith(".weight") and v.ndim == 2 else v for k, v in sd.items()}
    sd["blocks.0.norm3.weight"][0] = 1.0
    sd["blocks.1.ffn.2.scale_weight"] = torch.tensor(200.0)   # a legacy scaled_fp8 scale: e4m3fn's 448 x 200
    safetensors.torch.save_file(sd, str(path))
    with Checkpoint(str(path)) as ckpt:
        with pytest.raises(CheckpointError, match="tensor blocks.1.ffn.2.weight holds values beyond float16's range"):
            load_fp8_state_dict(ckpt, ckpt.model_info(), "fp16")
