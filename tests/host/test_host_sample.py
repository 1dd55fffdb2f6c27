"""Sample Video in a real ComfyUI server (CPU, tiny models): Diffusion Forcing against standard sampling, long
videos, interrupt, bad widgets, and the report (agreement with SkyReels-V2: test_host_reference.py)."""
import glob
import os
import threading
import time

import pytest
import torch
from safetensors.torch import load_file
from helpers import nest_mode
from server import error_of


SAMPLE = "SkyReelsSampleVideo"
DEFAULTS = dict(width=32, height=32, frames=9, seed=3, steps=4, cfg=2.0, shift=8.0, sampler="unipc", fps=24,
                mode="standard", base_num_frames=97, overlap_history=17, ar_step=0, causal_block_size=1,
                addnoise_condition=0)   # the DF ones go under mode in DF mode only (nest_mode)


def loader(name):
    return {"class_type": "SkyReelsFP8ModelLoader", "inputs": {"model_name": name, "weight_format": "auto",
                                                              "compute": "upcast", "keep_first_blocks": 0,
                                                              "keep_last_blocks": 0}}


def graph(prefix, model="df_bf16.safetensors", **widgets):
    """loader -> Sample Video -> SaveLatent, with test conditioning in place of umt5-xxl. The widgets are written
    flat; the DF ones go under mode ("mode.ar_step"), as the frontend sends them."""
    return {
        "1": loader(model),
        "2": {"class_type": "TestWanConditioning", "inputs": {"seed": 1, "tokens": 8}},
        "3": {"class_type": "TestWanConditioning", "inputs": {"seed": 2, "tokens": 8}},
        "4": {"class_type": SAMPLE, "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0],
                                               **nest_mode({**DEFAULTS, **widgets}, api=True)}},
        "5": {"class_type": "SaveLatent", "inputs": {"samples": ["4", 0], "filename_prefix": "latents/" + prefix}},
    }


def latent_of(server, prefix):
    files = glob.glob(os.path.join(server.base, "output", "latents", f"{prefix}_*.latent"))
    assert len(files) == 1, files
    return load_file(files[0])["latent_tensor"].float()


def run_ok(server, prompt):
    entry = server.run(prompt)
    err = error_of(entry)
    assert err is None, (err["exception_message"], "".join(err["traceback"][-4:]))
    return entry


def test_node_is_listed(server):
    info = server.get(f"/object_info/{SAMPLE}")[SAMPLE]
    assert info["display_name"] == "Sample Video"
    assert info["input"]["required"]["sampler"][1]["options"] == ["unipc", "euler"]
    assert info["input"]["required"]["steps"][1]["default"] == 30
    assert info["input"]["required"]["cfg"][1]["default"] == 6.0
    assert info["input"]["required"]["shift"][1]["default"] == 8.0


def test_sync_forcing_equals_standard_on_the_host(server):
    # Per-frame timesteps through the host's Wan model and our model-sampling patch change nothing when all frames
    # share one (float32 rounding of the per-frame path: measured 2e-6 relative). Euler: with UniPC, SkyReels-V2's
    # DF loop differs from its standard one (test_host_reference.py).
    run_ok(server, graph("std", sampler="euler"))
    run_ok(server, graph("sync", mode="diffusion forcing", sampler="euler"))
    a, b = latent_of(server, "std"), latent_of(server, "sync")
    assert ((a - b).norm() / a.norm()).item() < 1e-4


def test_async_long_video_makes_all_frames_in_one_node(server):
    # 57 frames = 15 latent frames, base 21 frames = 6 latent, overlap 9 frames = 3 latent: 4 windows of 6 latent
    # frames adding 6 + 3 + 3 + 3 = 15; asynchronous (ar_step 2), causal blocks of 3, prefix noised.
    entry = run_ok(server, graph("df_long", mode="diffusion forcing", frames=57, base_num_frames=21,
                                 overlap_history=9, ar_step=2, causal_block_size=3, addnoise_condition=20))
    out = latent_of(server, "df_long")
    assert out.shape == (1, 16, 15, 4, 4)
    assert out.isfinite().all()
    log = server.read_log()
    assert "diffusion forcing, unipc 4 steps" in log and "4 window(s), 15 latent frames = 57 video frames" in log
    assert entry["status"]["status_str"] == "success"


def test_images_output_gives_every_frame_also_from_the_cache(server):
    # Windows of 9 frames overlapping by 5: 17 frames in 3 windows, each decoded alone and joined in pixels.
    prompt = graph("images", mode="diffusion forcing", frames=17, base_num_frames=9, overlap_history=5)
    prompt["7"] = {"class_type": "VAELoader", "inputs": {"vae_name": "wan_2.1_vae.safetensors"}}
    prompt["4"]["inputs"]["vae"] = ["7", 0]
    run_ok(server, prompt)
    assert "3 window(s), 5 latent frames = 17 video frames" in server.read_log()
    # images connected afterwards: the host serves Sample Video's cached outputs, which hold the frames
    prompt["6"] = {"class_type": "SaveImage", "inputs": {"images": ["4", 2], "filename_prefix": "frames/vae"}}
    run_ok(server, prompt)
    assert len(glob.glob(os.path.join(server.base, "output", "frames", "vae_*.png"))) == 17
    # without a vae the host blocks what images feeds (with Sample Video's message, shown in the browser)
    del prompt["4"]["inputs"]["vae"]
    prompt["6"]["inputs"]["filename_prefix"] = "frames/novae"
    run_ok(server, prompt)
    assert glob.glob(os.path.join(server.base, "output", "frames", "novae_*.png")) == []


def test_api_prompts_saved_before_mode_was_a_dynamic_combo_still_run(server):
    # Before, the DF widgets were top-level inputs ("ar_step"); now the host wants them under mode ("mode.ar_step").
    # The pack's on_prompt hook moves them, so an old API prompt runs the same video; in standard mode it drops them.
    df = dict(mode="diffusion forcing", frames=33, base_num_frames=21, overlap_history=9, ar_step=2,
              causal_block_size=3, addnoise_condition=20, causal_attention=True)
    run_ok(server, graph("new_format", **df))
    old = graph("old_format")
    old["4"]["inputs"].update(df)
    run_ok(server, old)
    assert torch.equal(latent_of(server, "old_format"), latent_of(server, "new_format"))
    run_ok(server, graph("new_standard"))
    old = graph("old_standard")
    old["4"]["inputs"].update(base_num_frames=97, overlap_history=17, ar_step=0, causal_block_size=1,
                              addnoise_condition=0, causal_attention=False)
    run_ok(server, old)
    assert torch.equal(latent_of(server, "old_standard"), latent_of(server, "new_standard"))


def test_a_prompt_per_window_through_the_hosts_dynamic_inputs(server):
    # 21 frames in windows of 13 overlapping by 5: latent frames 0-3 from the first window, 4-5 from the second
    widgets = dict(mode="diffusion forcing", frames=21, base_num_frames=13, overlap_history=5)
    run_ok(server, graph("one_prompt", **widgets))
    prompt = graph("window_prompts", **widgets)
    prompt["6"] = {"class_type": "TestWanConditioning", "inputs": {"seed": 3, "tokens": 8}}
    prompt["4"]["inputs"]["window_prompts.window_2"] = ["6", 0]        # the Autogrow input, as the frontend sends it
    run_ok(server, prompt)
    one, two = latent_of(server, "one_prompt"), latent_of(server, "window_prompts")
    assert torch.equal(one[:, :, :4], two[:, :, :4]) and (one[:, :, 4:] - two[:, :, 4:]).abs().max() > 1e-3


@pytest.mark.parametrize("widgets,message", [
    (dict(frames=96), "Sample Video: frames: 96 is not 4k+1; use 93 or 97"),
    (dict(width=40), "Sample Video: width/height: 40x32 must be multiples of 16"),
    # JSON's NaN passes the host's range check (min 0, max 100): it made a video of NaN
    (dict(cfg=float("nan")), "Sample Video: cfg: nan is not a number; give one from 0 to 100"),
    (dict(mode="diffusion forcing", frames=57, base_num_frames=21, overlap_history=13, causal_block_size=4),
     "Sample Video: causal_block_size: base_num_frames 21 gives 6 latent frames, not whole blocks of 4; use "
     "base_num_frames 29 with 45 or 61 frames, or causal_block_size 1"),      # not 13: no more than the overlap;
    # (no window length in blocks of 4 suits 57 frames: the lengths 29 suits are named); where one does, it is named
    # alone: both values give 257 frames' windows whole blocks of 5 (97: 25 + 20 + 20 latent frames; 117: 30 + 25 + 10)
    (dict(mode="diffusion forcing", frames=257, base_num_frames=101, overlap_history=17, causal_block_size=5),
     "Sample Video: causal_block_size: base_num_frames 101 gives 26 latent frames, not whole blocks of 5; use "
     "base_num_frames 97 or 117, or causal_block_size 1"),
    # one window (the video is base_num_frames long): only shorter videos fit, the windows of longer ones cannot
    (dict(mode="diffusion forcing", frames=97, base_num_frames=97, overlap_history=17, causal_block_size=4),
     "Sample Video: causal_block_size: 97 frames make window 1 of 1 hold 25 latent frames, not whole blocks of 4; "
     "make the video 93 frames (with base_num_frames 97, overlap_history 17), or set causal_block_size 1"),
    # SkyReels-V2's 10 s length made asynchronously with a 5 s one's: the frames that fit are named (its README's 237)
    (dict(mode="diffusion forcing", frames=241, base_num_frames=97, overlap_history=17, ar_step=5, causal_block_size=5),
     "Sample Video: causal_block_size: 241 frames make window 3 of 3 hold 21 latent frames, not whole blocks of 5; "
     "make the video 237 or 257 frames (with base_num_frames 97, overlap_history 17), or set causal_block_size 1"),
    (dict(mode="diffusion forcing", frames=57, base_num_frames=21, overlap_history=9, causal_block_size=4),
     "Sample Video: overlap_history: 9 frames are 3 latent frame(s), fewer than causal_block_size 4; use at least 13"),
    (dict(mode="diffusion forcing", frames=57, base_num_frames=21, overlap_history=21),
     "Sample Video: overlap_history (21) must be shorter than base_num_frames (21)"),
])
def test_bad_widgets_are_named(server, widgets, message):
    entry = server.run(graph("bad", **widgets))
    err = error_of(entry)
    assert err is not None and message in err["exception_message"], err and err["exception_message"]


def test_conditioning_and_latents_of_other_models_are_named(server):
    # Before, these failed inside the model ("mat1 and mat2 shapes cannot be multiplied", "shape ... is invalid").
    prompt = graph("clip_l")
    prompt["3"]["inputs"]["width"] = 768                     # a CLIP-L's conditioning, from Load CLIP of another type
    err = error_of(server.run(prompt))
    assert err["exception_message"].strip() == ("Sample Video: negative: 768-wide text conditioning; SkyReels-V2 "
                                                "reads umt5-xxl's (4096): encode the prompt through Load CLIP with "
                                                "type 'wan' (umt5_xxl)"), err["exception_message"]
    prompt = graph("mochi_latent")
    prompt["6"] = {"class_type": "EmptyMochiLatentVideo", "inputs": {"width": 32, "height": 32, "length": 7,
                                                                     "batch_size": 1}}
    prompt["4"]["inputs"]["latent"] = ["6", 0]
    err = error_of(server.run(prompt))
    assert err["exception_message"].strip() == ("Sample Video: latent: 12 channels; a Wan 2.1 model takes latents "
                                                "of 16 (core Empty Hunyuan Latent Video or WanImageToVideo make them)")


def test_core_loader_model_is_accepted(server):
    prompt = graph("core_model")
    prompt["1"] = {"class_type": "UNETLoader", "inputs": {"unet_name": "t2v_bf16.safetensors",
                                                          "weight_dtype": "default"}}
    prompt["4"]["inputs"]["model"] = ["1", 0]
    run_ok(server, prompt)   # a Wan model from core's Load Diffusion Model works as well
    assert latent_of(server, "core_model").shape == (1, 16, 3, 4, 4)


def test_interrupt_stops_the_run_and_the_next_run_works(server):
    slow = graph("slow", steps=1000, frames=17, width=64, height=64)
    result = {}
    worker = threading.Thread(target=lambda: result.update(entry=server.run(slow, timeout=300)))
    started = time.time()
    worker.start()
    while not server.get("/queue")["queue_running"]:
        time.sleep(0.05)
    time.sleep(1.5)                       # inside the sampling loop
    server.post("/interrupt", {})
    worker.join(120)
    assert not worker.is_alive()
    kinds = [kind for kind, _ in result["entry"]["status"]["messages"]]
    assert "execution_interrupted" in kinds
    assert time.time() - started < 60     # 1000 steps would take minutes
    assert not glob.glob(os.path.join(server.base, "output", "latents", "slow_*.latent"))
    run_ok(server, graph("after_interrupt"))
    assert latent_of(server, "after_interrupt").isfinite().all()


def test_forcing_works_with_core_timestep_ranges(server):
    # The host sees one sigma per batch item (the noisiest frame's), so core conditioning that reads it still works.
    prompt = graph("ranges", mode="diffusion forcing", ar_step=1)
    prompt["6"] = {"class_type": "ConditioningSetTimestepRange", "inputs": {"conditioning": ["2", 0], "start": 0.0,
                                                                           "end": 0.5}}
    prompt["4"]["inputs"]["positive"] = ["6", 0]
    run_ok(server, prompt)
    assert latent_of(server, "ranges").isfinite().all()


def test_report_names_the_weights_a_lora_patches(server):
    # A distillation LoRA whose keys ComfyUI does not load is only logged by the host; the report shows it.
    prompt = graph("lora_report", model="t2v_bf16.safetensors", steps=1)
    prompt["6"] = {"class_type": "LoraLoaderModelOnly",
                   "inputs": {"model": ["1", 0], "lora_name": "tiny_lora.safetensors", "strength_model": 0.5}}
    prompt["7"] = {"class_type": "PreviewAny", "inputs": {"source": ["4", 1]}}
    plain = run_ok(server, prompt)["outputs"]["7"]["text"][0]
    prompt["4"]["inputs"]["model"] = ["6", 0]
    patched = run_ok(server, prompt)["outputs"]["7"]["text"][0]
    assert "weight patches" not in plain, plain
    assert "\nweight patches (LoRAs): 8 weights\n" in patched, patched     # self_attn q, k, v, o of 2 blocks
