"""The pack's nodes in a real ComfyUI server (main.py --cpu on 127.0.0.1), driven through its HTTP API."""
import glob
import json
import os

import pytest
import torch
from safetensors.torch import load_file
from server import PACK, error_of

LOADER = "SkyReelsFP8ModelLoader"


def ours(name, weight_format="auto", compute="upcast"):
    return {"class_type": LOADER, "inputs": {"model_name": name, "weight_format": weight_format,
                                             "compute": compute, "keep_first_blocks": 0, "keep_last_blocks": 0}}


def core(name, weight_dtype="default"):
    return {"class_type": "UNETLoader", "inputs": {"unet_name": name, "weight_dtype": weight_dtype}}


def sample(server, loader, prefix, lora=None, sage=None):
    """loader -> (LoRA) -> (Patch SageAttention) -> core KSampler (2 euler steps, cfg 2) -> SaveLatent."""
    model = ["1", 0]
    prompt = {
        "1": loader,
        "2": {"class_type": "TestWanConditioning", "inputs": {"seed": 1, "tokens": 16}},
        "3": {"class_type": "TestWanConditioning", "inputs": {"seed": 2, "tokens": 16}},
        "4": {"class_type": "EmptyHunyuanLatentVideo", "inputs": {"width": 64, "height": 64, "length": 5,
                                                                   "batch_size": 1}},
        "6": {"class_type": "SaveLatent", "inputs": {"samples": ["5", 0], "filename_prefix": "latents/" + prefix}},
    }
    if lora:
        prompt["7"] = {"class_type": "LoraLoaderModelOnly",
                       "inputs": {"model": model, "lora_name": lora, "strength_model": 1.0}}
        model = ["7", 0]
    if sage:
        prompt["8"] = {"class_type": "SkyReelsPatchSageAttention", "inputs": {
            "model": model, "mode": sage, "exact_first_blocks": 0, "exact_last_blocks": 0, "exact_first_steps": 0,
            "guard_threshold": 0.995}}
        model = ["8", 0]
    prompt["5"] = {"class_type": "KSampler", "inputs": {
        "model": model, "seed": 0, "steps": 2, "cfg": 2.0, "sampler_name": "euler", "scheduler": "simple",
        "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0], "denoise": 1.0}}
    entry = server.run(prompt)
    err = error_of(entry)
    assert err is None, (err["exception_message"], "".join(err["traceback"][-4:]))
    files = glob.glob(os.path.join(server.base, "output", "latents", f"{prefix}_*.latent"))
    assert len(files) == 1, files
    return load_file(files[0])["latent_tensor"].float()


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture(scope="module")
def reference(server):
    return sample(server, core("t2v_bf16.safetensors"), "ref_core_bf16")


def test_nodes_are_listed_with_their_names(server):
    info = server.get("/object_info")
    assert info[LOADER]["display_name"] == "Load FP8 SkyReels Model"
    assert info["SkyReelsConvertToFP8"]["display_name"] == "Convert to FP8"
    assert info["SkyReelsPatchSageAttention"]["display_name"] == "Patch SageAttention"
    log = server.read_log()
    assert PACK in log and f"(IMPORT FAILED): {server.base}" not in log


def test_a_per_tensor_file_agrees_between_core_and_our_loader(server):
    a = sample(server, core("t2v_fp8_tensor.safetensors"), "a_core")
    b = sample(server, ours("t2v_fp8_tensor.safetensors"), "a_ours")
    assert rel(b, a) <= 1e-3


def test_release_folders_are_listed_and_load_like_the_single_file(server):
    options = server.get(f"/object_info/{LOADER}")[LOADER]["input"]["required"]["model_name"][1]["options"]
    assert "t2v.sharded/" in options and "t2v.release/" in options and "SkyReels/t2v.nested/" in options
    # a diffusers pipeline: its transformer/, not its text encoder's release beside it
    assert "t2v-Diffusers/transformer/" in options and "t2v-Diffusers/text_encoder/" not in options
    # a release folder that also holds a file converted from it: its files are listed, not the folder
    assert "t2v.converted/" not in options and os.path.join("t2v.converted", "model_fp8.safetensors") in options
    assert os.path.join("t2v.converted", "Wan2.1_VAE.pth") in options
    # beside a release folder's entry: not the shards its index lists nor the .pth files of Wan's text encoder and
    # VAE it carries; a one-file release's weights stay (workflows saved with them still load), and so does a file
    # written into the folder (e.g. a conversion)
    assert [o for o in options if o.startswith(("t2v.sharded", "t2v.release", "SkyReels" + os.sep))] == [
        "SkyReels/t2v.nested/", "t2v.release/", "t2v.sharded/", os.path.join("t2v.release", "model.safetensors"),
        os.path.join("t2v.sharded", "written_inside.safetensors")], options
    single = sample(server, ours("t2v_bf16.safetensors"), "shards_single")
    assert rel(sample(server, ours("t2v.sharded/"), "shards_folder"), single) <= 1e-6
    assert rel(sample(server, ours("t2v.release/"), "release_folder"), single) <= 1e-6
    assert rel(sample(server, ours("SkyReels/t2v.nested/"), "nested_folder"), single) <= 1e-6   # in a subfolder


def test_a_pth_state_dict_loads_and_converts_like_its_safetensors_twin(server):
    # read with torch.load(weights_only=True): the same tensors, so the same video and the same FP8 file
    single = sample(server, ours("t2v_bf16.safetensors"), "pth_single")
    assert rel(sample(server, ours("t2v_bf16.pth"), "pth_file"), single) <= 1e-6
    entry = server.run(convert_prompt("from_pth", source="t2v_bf16.pth"))
    assert error_of(entry) is None, error_of(entry)
    assert "wrote models/diffusion_models/from_pth.safetensors" in entry["outputs"]["1"]["text"][0]
    models = os.path.join(server.base, "models", "diffusion_models")
    converted, twin = (load_file(os.path.join(models, name)) for name in ("from_pth.safetensors",
                                                                          "t2v_fp8_channel.safetensors"))
    assert converted.keys() == twin.keys()
    assert all(converted[k].dtype == twin[k].dtype and torch.equal(converted[k].reshape(-1).view(torch.uint8),
                                                                   twin[k].reshape(-1).view(torch.uint8)) for k in twin)


def test_c_bf16_through_our_node_equals_core(server, reference):
    assert rel(sample(server, ours("t2v_bf16.safetensors", "bf16"), "c_ours_bf16"), reference) <= 1e-5


def test_d_fp8_error_is_bounded_and_beats_the_core_plain_cast(server, reference):
    cast = rel(sample(server, core("t2v_bf16.safetensors", "fp8_e4m3fn"), "d_core_cast"), reference)
    errors = {}
    for fmt in ("fp8_e4m3fn (per-channel)", "fp8_e4m3fn (per-tensor)"):
        errors[fmt] = rel(sample(server, ours("t2v_bf16.safetensors", fmt), "d_" + fmt[11:-1]), reference)
    for name in ("t2v_fp8_tensor.safetensors", "t2v_fp8_channel.safetensors"):
        errors[name] = rel(sample(server, ours(name), "d_file_" + name[8:-12]), reference)
    print(f"\nrelative latent error vs bf16: core plain cast {cast:.4f}; " +
          "; ".join(f"{k} {v:.4f}" for k, v in errors.items()))
    for k, v in errors.items():
        assert v <= 0.05 and v < cast, (k, v, cast)


@pytest.mark.parametrize("name", ["t2v_comfy_metadata_only.safetensors", "t2v_comfy_tensors_only.safetensors",
                                  "t2v_legacy_scaled_fp8.safetensors"])
def test_b_host_and_legacy_fp8_files_load_like_ours(server, name):
    expected = sample(server, ours("t2v_fp8_tensor.safetensors"), "b_ref_" + name[4:-12])
    assert rel(sample(server, ours(name), "b_" + name[4:-12]), expected) <= 1e-3


def test_b_plain_fp8_cast_loads_like_core(server):
    a = sample(server, core("t2v_plain_cast.safetensors"), "b_plain_core")
    b = sample(server, ours("t2v_plain_cast.safetensors"), "b_plain_ours")
    assert rel(b, a) <= 1e-3


def test_e_fp8_matmul_compute_runs_in_core_ksampler(server, reference):
    # torch._scaled_mm runs on CPU too: the same w8a8 code as on a GPU, activations quantized per token.
    out = sample(server, ours("t2v_fp8_channel.safetensors", compute="fp8 matmul"), "e_w8a8")
    assert torch.isfinite(out).all() and rel(out, reference) <= 0.08


def test_f_lora_changes_fp8_model_as_it_changes_bf16(server, reference):
    lora_bf16 = sample(server, core("t2v_bf16.safetensors"), "f_bf16_lora", lora="tiny_lora.safetensors")
    for name in ("t2v_fp8_channel.safetensors", "t2v_fp8_tensor.safetensors"):
        base = sample(server, ours(name), "f_base_" + name[8:-12])
        with_lora = sample(server, ours(name), "f_lora_" + name[8:-12], lora="tiny_lora.safetensors")
        delta_fp8, delta_bf16 = with_lora - base, lora_bf16 - reference
        # The LoRA moves the output a lot; the fp8 model moves the same way, up to the fp8 rounding of W + dW
        # (the host re-quantizes merged weights), and ends where the bf16 model with the LoRA ends.
        print(f"\nLoRA {name}: moves bf16 output {rel(delta_bf16, reference):.3f}; fp8 delta vs bf16 delta "
              f"{rel(delta_fp8, delta_bf16):.4f}; fp8+LoRA vs bf16+LoRA {rel(with_lora, lora_bf16):.4f}")
        assert rel(delta_bf16, reference) > 0.2
        assert rel(delta_fp8, delta_bf16) <= 0.15, (name, rel(delta_fp8, delta_bf16))
        assert rel(with_lora, lora_bf16) <= 0.05, name


def test_df_fps_embedding_is_loaded_not_dropped(server):
    entry = server.run({"1": ours("df_bf16.safetensors"), "2": {"class_type": "PreviewAny",
                                                                "inputs": {"source": ["1", 1]}}})
    assert error_of(entry) is None, error_of(entry)
    report = entry["outputs"]["2"]["text"][0]
    assert report.startswith("SkyReels-V2 DF custom (dim 256), 2 blocks, fp8 e4m3fn per-channel, ")
    assert "fps embedding: on" in report and "file: bfloat16" in report


@pytest.mark.parametrize("name,message", [
    ("bad_other_arch.safetensors", "not a SkyReels-V2/Wan diffusion model (no patch_embedding.weight, "
                                   "head.modulation, head.head.weight); this pack runs SkyReels-V2 and Wan 2.1 "
                                   "models, ComfyUI's own loaders run other models"),
    ("bad_lora.safetensors", "this is a LoRA, not a model: put it in models/loras and apply it to the loader's MODEL "
                             "with ComfyUI's Load LoRA node"),
    ("bad_multitalk_patch.safetensors", "not a whole model: this file holds only the weights of a Wan MultiTalk / "
                                        "InfiniteTalk add-on; ComfyUI's Load Model Patch node loads it "
                                        "(models/model_patches)"),
    ("bad_truncated.safetensors", "the file is truncated"),
    ("bad_pickled.pth", "refused: the file holds pickled objects"),
    ("bad_nan.safetensors", "tensor blocks.0.ffn.0.weight has NaN/Inf values"),
    ("bad_missing_keys.safetensors", "1 tensors missing (blocks.1.cross_attn.o.weight)"),
    ("bad_wan_vace.safetensors", "this is a Wan VACE model, not SkyReels-V2; load it with ComfyUI's Load "
                                 "Diffusion Model node"),
    ("bad_wan22_ti2v.safetensors", "not a model this pack runs: it takes 48 latent channels and makes 48 (as "
                                   "Wan 2.2 TI2V-5B)"),
    ("bad_fp8_no_scale.safetensors", "layer blocks.0.ffn.0 is FP8 with no weight_scale: the file is damaged"),
    ("bad_dangling.safetensors", "moved_away.safetensors, which is not there (or the links loop); fix or remove the "
                                 "link in models/diffusion_models"),   # was: refresh the node list
])
def test_bad_files_give_a_node_error_and_the_host_keeps_running(server, name, message):
    entry = server.run({"1": ours(name), "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 1]}}})
    err = error_of(entry)
    assert err is not None and err["node_type"] == LOADER
    # not "<the pack's folder path>.quant.checkpoint.CheckpointError", which the host heads its error with
    assert err["exception_type"] in ("ValueError", "FileNotFoundError"), err["exception_type"]
    # and the traceback ComfyUI shows still reaches where the file was found bad (the pack's quant/ reader)
    assert err["exception_type"] == "FileNotFoundError" or any(
        f"quant{os.sep}" in line for line in err["traceback"]), err["traceback"]
    assert name in err["exception_message"] and message in err["exception_message"], err["exception_message"]
    assert "pickled code ran" not in server.read_log()
    assert server.get("/system_stats")  # still answering


def test_df_fps_term_reaches_core_ksampler(server):
    # Same bf16 file: core's loader drops the fps embedding, ours adds it to every step.
    core_df = sample(server, core("df_bf16.safetensors"), "fps_core")
    ours_df = sample(server, ours("df_bf16.safetensors", "bf16"), "fps_ours")
    assert rel(ours_df, core_df) > 1e-3


def convert_prompt(output_name, overwrite=False, source="t2v_bf16.safetensors"):
    return {"1": {"class_type": "SkyReelsConvertToFP8", "inputs": {
        "model_name": source, "output_name": output_name, "granularity": "per-channel (more accurate)",
        "fp8_type": "e4m3fn", "keep_first_blocks": 0, "keep_last_blocks": 0, "overwrite": overwrite}}}


def test_convert_node_writes_a_file_the_loader_lists_without_restart(server):
    entry = server.run(convert_prompt("node_converted"))
    assert error_of(entry) is None, error_of(entry)
    text = entry["outputs"]["1"]["text"][0]
    assert "-> fp8 e4m3fn per-channel" in text and "wrote models/diffusion_models/node_converted.safetensors" in text
    options = server.get(f"/object_info/{LOADER}")[LOADER]["input"]["required"]["model_name"][1]["options"]
    assert "node_converted.safetensors" in options
    d = sample(server, ours("node_converted.safetensors"), "convert_node_loaded")
    assert torch.isfinite(d).all()

    # Queued again after another prompt (the host's cache has dropped this node; with --cache-none it never keeps
    # it): the file is this node's conversion of the same source with the same settings, so it is not refused as
    # "already exists" (which failed the whole prompt) nor written again.
    out = os.path.join(server.base, "models", "diffusion_models", "node_converted.safetensors")
    written = os.stat(out).st_mtime_ns
    entry = server.run(convert_prompt("node_converted"))
    assert error_of(entry) is None, error_of(entry)
    assert entry["outputs"]["1"]["text"][0].endswith(
        "models/diffusion_models/node_converted.safetensors is already this conversion (written earlier from the "
        "same source and settings; not written again)")
    assert os.stat(out).st_mtime_ns == written
    other = convert_prompt("node_converted")        # other settings into that name: refused
    other["1"]["inputs"]["granularity"] = "per-tensor (loads in core)"
    again = error_of(server.run(other))
    assert again and "already exists; to replace it turn on overwrite" in again["exception_message"]
    # A refused conversion leaves no folder of its output's name either (the subfolders used to stay).
    refused = convert_prompt("made_by_a_refused_run/deeper/x")
    refused["1"]["inputs"]["keep_first_blocks"] = 64
    assert "keep" in error_of(server.run(refused))["exception_message"]
    assert not os.path.exists(os.path.join(server.base, "models", "diffusion_models", "made_by_a_refused_run"))
    assert error_of(server.run(convert_prompt("node_converted", overwrite=True))) is None


def test_convert_node_makes_subfolders_and_reports_the_whole_name(server):
    entry = server.run(convert_prompt("converted/sub\\inner"))       # '\\' as a workflow saved on Windows has it
    assert error_of(entry) is None, error_of(entry)
    assert "wrote models/diffusion_models/converted/sub/inner.safetensors" in entry["outputs"]["1"]["text"][0]
    assert os.path.isfile(os.path.join(server.base, "models", "diffusion_models", "converted", "sub",
                                       "inner.safetensors"))
    open(os.path.join(server.base, "models", "diffusion_models", "a_file"), "w").close()
    err = error_of(server.run(convert_prompt("a_file/inner")))
    assert err["exception_message"].startswith("output_name 'a_file/inner': its folder cannot be made ("), err


def test_convert_node_names_a_shard_folder_output_after_the_whole_folder_name(server):
    entry = server.run(convert_prompt("", source="t2v.sharded/"))
    assert error_of(entry) is None, error_of(entry)
    # per-channel, which core's Load Diffusion Model cannot read, says so in its name
    assert "wrote models/diffusion_models/t2v.sharded_fp8_e4m3fn_per_channel.safetensors" in \
        entry["outputs"]["1"]["text"][0]
    # a one-file release's weights (name/model.safetensors) after the folder too, not "model_fp8_..."
    prompt = convert_prompt("", source=os.path.join("t2v.release", "model.safetensors"))
    prompt["1"]["inputs"]["granularity"] = "per-tensor (loads in core)"
    entry = server.run(prompt)
    assert error_of(entry) is None, error_of(entry)
    assert "wrote models/diffusion_models/t2v.release_fp8_e4m3fn.safetensors" in entry["outputs"]["1"]["text"][0]
    # a file at the folder's root keeps its own name, even where a stray shard index lies there
    stray = os.path.join(server.base, "models", "diffusion_models", "stray.safetensors.index.json")
    with open(stray, "w") as f:
        json.dump({"weight_map": {}}, f)
    try:
        entry = server.run(convert_prompt(""))
    finally:
        os.remove(stray)
    assert error_of(entry) is None, error_of(entry)
    assert "wrote models/diffusion_models/t2v_bf16_fp8_e4m3fn_per_channel.safetensors" in \
        entry["outputs"]["1"]["text"][0]


@pytest.mark.parametrize("name", ["../escaped", "/tmp/absolute", "sub/../../escaped"])
def test_convert_node_keeps_outputs_inside_diffusion_models(server, name):
    err = error_of(server.run(convert_prompt(name)))
    assert err and err["node_type"] == "SkyReelsConvertToFP8"
    assert repr(name) in err["exception_message"] and "models/diffusion_models" in err["exception_message"]
    assert not os.path.exists(os.path.join(server.base, "models", "escaped.safetensors"))


def test_loader_refuses_a_name_outside_its_list(server):
    status, body = server.post("/prompt", {"prompt": {"1": ours("../../outside.safetensors"), "2": {
        "class_type": "PreviewAny", "inputs": {"source": ["1", 1]}}}})
    assert status == 400
    errors = body["node_errors"]["1"]["errors"]
    assert errors[0]["type"] == "value_not_in_list" and "outside.safetensors" in errors[0]["details"]


def test_patch_sage_attention_in_a_graph(server):
    base = sample(server, ours("t2v_fp8_channel.safetensors"), "sage_base")
    ref = sample(server, ours("t2v_fp8_channel.safetensors"), "sage_reference", sage="reference")
    auto = sample(server, ours("t2v_fp8_channel.safetensors"), "sage_auto", sage="auto")
    # A workflow saved with the mode's old name still validates and runs (as "sageattention").
    old = sample(server, ours("t2v_fp8_channel.safetensors"), "sage_old_name", sage="sageattn")
    assert 0 < rel(ref, base) <= 0.02   # our 8-bit attention ran, close to exact
    # No GPU here: auto and sageattention fall back to exact attention, the host's PyTorch attention, while the
    # unpatched run used the host's global choice (sub-quadratic attention on a CPU): the same up to float32
    # rounding. On a GPU with a backend installed these would be 8-bit, within ~0.02 like the reference.
    assert rel(auto, base) <= 1e-5 and rel(old, base) <= 1e-5
    assert "Patch SageAttention: cpu device" in server.read_log()


def test_a_release_folder_whose_shards_are_replaced_in_place_loads_again(server, tmp_path):
    # Copying new shards over old ones (cp, a file manager's "replace") keeps the folder's own mtime: the loader's
    # cache key is every file of the model, so the same prompt queued again loads the new weights.
    import shutil
    from quant import tiny
    folder = os.path.join(server.base, "models", "diffusion_models", "t2v.inplace")
    tiny.write_release(folder, tiny.state_dict(tiny.info("T2V"), seed=1), shards=2)
    tiny.write_release(str(tmp_path / "new"), tiny.state_dict(tiny.info("T2V"), seed=9), shards=2)
    before = sample(server, ours("t2v.inplace/"), "inplace_before")
    mtime = os.stat(folder).st_mtime_ns
    for name in os.listdir(tmp_path / "new"):
        if name.endswith(".safetensors"):
            shutil.copyfile(tmp_path / "new" / name, os.path.join(folder, name))
    assert os.stat(folder).st_mtime_ns == mtime
    after = sample(server, ours("t2v.inplace/"), "inplace_after")
    assert rel(after, before) > 0.01


def test_convert_node_queued_again_runs_again_only_when_its_files_changed(server):
    # The host serves a node from its cache while its inputs are the same, which would show the last report and
    # write nothing: after the output was deleted, or the source replaced under the same name.
    import time
    from helpers import write_tiny
    models = os.path.join(server.base, "models", "diffusion_models")
    write_tiny(os.path.join(models, "conv_source.safetensors"), "T2V", seed=1)
    out = os.path.join(models, "conv_again.safetensors")
    prompt = convert_prompt("conv_again", source="conv_source.safetensors")

    def cached(entry):
        assert error_of(entry) is None, error_of(entry)
        return "1" in {n for kind, data in entry["status"]["messages"] if kind == "execution_cached"
                       for n in data["nodes"]}

    assert not cached(server.run(prompt)) and os.path.exists(out)
    assert cached(server.run(prompt))                 # nothing changed: cached (no "already exists" error)
    os.remove(out)
    assert not cached(server.run(prompt)) and os.path.exists(out)      # deleted: written again
    assert cached(server.run(prompt))
    os.remove(out)
    assert not cached(server.run(prompt)) and os.path.exists(out)      # and each time it is deleted
    assert cached(server.run(prompt))
    overwrite = convert_prompt("conv_again", overwrite=True, source="conv_source.safetensors")
    server.run(overwrite)
    assert cached(server.run(overwrite))
    time.sleep(0.01)
    write_tiny(os.path.join(models, "conv_source.safetensors"), "T2V", seed=2)   # a new source, same name
    written = os.stat(out).st_mtime_ns
    assert not cached(server.run(overwrite)) and os.stat(out).st_mtime_ns != written
    assert cached(server.run(overwrite))


def test_every_node_has_a_help_page_that_names_its_inputs(server):
    # The frontend's Node Info shows nodes/web/docs/<node id>.md, as the host serves it; it must name every input
    # and state the schema's default where it gives one ("**name** (default)", or "**a**, **b** (default)" for
    # several; a combo's may be the option's start); an empty text's need not be stated.
    import re
    import urllib.request
    nodes = {k: v for k, v in server.get("/object_info").items() if k.startswith("SkyReels")}
    assert len(nodes) == 6, sorted(nodes)
    for node, info in nodes.items():
        with urllib.request.urlopen(f"{server.url}/extensions/{PACK}/docs/{node}.md", timeout=60) as r:
            text = r.read().decode("utf-8")
        assert text.startswith(f"# {info['display_name']}\n"), (node, text[:80])
        for name, spec in {**info["input"]["required"], **info["input"].get("optional", {})}.items():
            assert f"**{name}**" in text, (node, name)
            stated = re.search(rf"\*\*{name}\*\*(?:, \*\*\w+\*\*)* \(([^),]+)", text)
            default = spec[1].get("default") if len(spec) > 1 else None
            if default not in (None, ""):
                assert stated, (node, name, "no default stated")
                said = stated.group(1)
                assert (said == {True: "on", False: "off"}[default] if isinstance(default, bool) else
                        float(said) == default if isinstance(default, (int, float)) else
                        str(default).startswith(said)), (node, name, said, default)
