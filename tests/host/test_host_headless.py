"""generate_video_fp8.py, the README's main job, run as a user runs it (a subprocess; it starts its own ComfyUI)."""
import os
import subprocess
import sys

import av
import safetensors.torch
import torch

from comfy_host import REPO

SCRIPT = os.path.join(REPO, "generate_video_fp8.py")


def run(args, host, cwd):
    env = {**os.environ, "COMFYUI_PATH": host}
    return subprocess.run([sys.executable, SCRIPT, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


def test_demo_writes_a_video(host, tmp_path):
    proc = run(["--output", "out/demo.mp4", "--seed", "5", "--use_sage_attention"], host, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    video = tmp_path / "out" / "demo.mp4"
    with av.open(str(video)) as c:
        assert sum(1 for _ in c.decode(video=0)) == 57          # the demo's long video: 2 windows
    assert "wrote out/demo.mp4" in proc.stdout
    assert "2 window(s), 15 latent frames = 57 video frames" in proc.stdout
    assert "attention: auto" in proc.stdout                    # --use_sage_attention reached the patch node
    again = run(["--output", "out/demo.mp4"], host, tmp_path)   # never over an existing file
    assert again.returncode == 2 and "--output: out/demo.mp4 exists" in again.stderr


def test_bad_input_is_one_line_and_exit_2(host, tmp_path):
    other = tmp_path / "llama.safetensors"
    safetensors.torch.save_file({"model.layers.0.mlp.up_proj.weight": torch.ones(4, 4)}, str(other))
    proc = run(["--model_path", str(other)], host, tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith("generate_video_fp8: --model_path: ") and "not a SkyReels-V2/Wan" in proc.stderr
    from helpers import write_tiny_release
    write_tiny_release(str(tmp_path / "SkyReels-V2-T2V-14B-540P"), "T2V")
    proc = run(["--model_path", str(tmp_path / "SkyReels-V2-T2V-14B-540P"),
                "--text_encoder", str(tmp_path / "missing_umt5.safetensors")], host, tmp_path)
    assert proc.returncode == 2
    assert "text_encoders: " in proc.stderr and "missing_umt5.safetensors not found; pass --text_encoder" in proc.stderr


def test_no_host_is_named(tmp_path):
    proc = subprocess.run([sys.executable, SCRIPT], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "COMFYUI_PATH": str(tmp_path)})
    assert proc.returncode == 2
    assert f"COMFYUI_PATH={tmp_path} is not a ComfyUI folder" in proc.stderr


def test_flags_reach_the_workflow_widgets(server):
    # The real-model path cannot run here (no umt5-xxl), so its prompt is checked as built for the host's nodes.
    import json

    from generate_video_fp8 import build_prompt, parse_args
    info = server.get("/object_info")
    names = {"diffusion_models": "SkyReels-V2-DF-1.3B-540P/", "text_encoders": "umt5.safetensors",
             "vae": "vae.safetensors"}
    args = parse_args(["--model_path", "x", "--prompt", "a red fox", "--negative_prompt", "blurry", "--no-fp8",
                       "--resolution", "720P", "--num_frames", "257", "--ar_step", "5", "--causal_block_size", "5",
                       "--seed", "7", "--image", "start.png", "--causal_attention", "--use_usp", "--workers", "4"])
    with open(os.path.join(REPO, "workflows", "skyreels_df_long_video.json")) as f:
        prompt = build_prompt(json.load(f), info, args, names, demo=False)
    by_type = {}
    for node in prompt.values():
        by_type.setdefault(node["class_type"], []).append(node["inputs"])
    loader, sage, sample = by_type["SkyReelsFP8ModelLoader"][0], by_type["SkyReelsPatchSageAttention"][0], \
        by_type["SkyReelsSampleVideo"][0]
    assert loader["model_name"] == "SkyReels-V2-DF-1.3B-540P/" and loader["weight_format"] == "bf16"
    assert sage["mode"] == "disabled"
    assert (sample["width"], sample["height"], sample["frames"], sample["seed"]) == (1280, 720, 257, 7)
    # Given flags win; the others take SkyReels-V2's CLI defaults, not the workflow's long-video settings.
    assert (sample["mode.ar_step"], sample["mode.causal_block_size"], sample["mode.overlap_history"]) == (5, 5, 17)
    assert (sample["mode.base_num_frames"], sample["mode.addnoise_condition"]) == (97, 0)
    assert sorted(e["text"] for e in by_type["CLIPTextEncode"]) == ["a red fox", "blurry"]
    assert by_type["CLIPLoader"][0]["clip_name"] == "umt5.safetensors"
    assert by_type["LoadImage"][0]["image"] == "start.png" and prompt[sample["start_image"][0]]
    assert prompt[sample["vae"][0]]["class_type"] == "VAELoader"
    assert by_type["CreateVideo"][0]["fps"] == 24
    # the video as SkyReels-V2 assembles it: Sample Video's images output (slot 2), each window decoded alone
    assert by_type["CreateVideo"][0]["images"][1] == 2 and prompt[by_type["CreateVideo"][0]["images"][0]][
        "class_type"] == "SkyReelsSampleVideo"
    assert sample["mode.causal_attention"] is True
    parallel = prompt[sample["parallel"][0]]
    assert parallel["class_type"] == "SkyReelsParallelConfig" and parallel["inputs"]["workers"] == 4
    spec = {**info["SkyReelsParallelConfig"]["input"]["required"], **info["SkyReelsParallelConfig"]["input"]["optional"]}
    assert set(parallel["inputs"]) == set(spec), (parallel["inputs"], spec)   # every widget, as the host names them


def test_model_and_image_must_fit(host, tmp_path):
    from helpers import write_tiny_release
    write_tiny_release(str(tmp_path / "i2v"), "I2V")
    proc = run(["--model_path", str(tmp_path / "i2v")], host, tmp_path)
    assert proc.returncode == 2 and "is an image-to-video model; give --image" in proc.stderr
    (tmp_path / "start.png").write_bytes(b"")                  # exists; the demo refuses it before reading
    proc = run(["--image", "start.png"], host, tmp_path)
    assert proc.returncode == 2 and "--image needs --model_path" in proc.stderr
    # I2V samples in standard mode, where the DF widgets do not exist: their flags are refused, not dropped
    proc = run(["--model_path", str(tmp_path / "i2v"), "--image", "start.png", "--ar_step", "5",
                "--causal_attention"], host, tmp_path)
    assert proc.returncode == 2 and "--ar_step, --causal_attention: Diffusion Forcing options;" in proc.stderr
