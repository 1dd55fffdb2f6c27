"""generate_video_fp8.py, the README's main job, run as a user runs it (a subprocess; it starts its own ComfyUI)."""
import contextlib
import os
import re
import shlex
import shutil
import struct
import subprocess
import sys
import time
import zlib

import av
import pytest
import safetensors.torch
import torch

from comfy_host import REPO

SCRIPT = os.path.join(REPO, "generate_video_fp8.py")


def run(args, host, cwd, **env):
    env = {**os.environ, "COMFYUI_PATH": host, **env}
    return subprocess.run([sys.executable, SCRIPT, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


def test_demo_writes_a_video(host, tmp_path):
    # a proxy that answers nothing: ComfyUI on 127.0.0.1 is reached without it (it waited 300 s for an answer)
    proc = run(["--output", "out/demo.mp4", "--seed", "5", "--use_sage_attention"], host, tmp_path,
               http_proxy="http://127.0.0.1:9", HTTP_PROXY="http://127.0.0.1:9", no_proxy="", NO_PROXY="")
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
    assert proc.stderr.startswith("generate_video_fp8: --model_id: ") and "not a SkyReels-V2/Wan" in proc.stderr
    from helpers import write_tiny_release
    write_tiny_release(str(tmp_path / "SkyReels-V2-T2V-14B-540P"), "T2V")
    proc = run(["--model_path", str(tmp_path / "SkyReels-V2-T2V-14B-540P"),
                "--text_encoder", str(tmp_path / "missing_umt5.safetensors")], host, tmp_path)
    assert proc.returncode == 2
    assert "text_encoders: " in proc.stderr and "missing_umt5.safetensors not found; pass --text_encoder" in proc.stderr


def test_bad_output_places_and_widget_values_exit_2_before_or_without_a_video(host, tmp_path):
    (tmp_path / "afile").write_text("")
    for flags in (["--output", "afile/out.mp4"], ["--outdir", "afile/videos"]):    # found before generating
        proc = run(flags, host, tmp_path)
        assert proc.returncode == 2 and f"{flags[0]}: {flags[1]}" in proc.stderr, proc.stderr
        assert f"{tmp_path / 'afile'} is not a folder; choose another place" in proc.stderr
        assert proc.stdout == ""                                # it stopped before anything else (the demo's line)
    proc = run(["--output", "x.webm"], host, tmp_path)                   # it wrote an MP4 under that name
    assert proc.returncode == 2 and proc.stdout == "", proc.stdout
    assert proc.stderr.strip() == ("generate_video_fp8: --output: x.webm: the video is an MP4 file; give a name "
                                   "ending in .mp4"), proc.stderr
    proc = run(["--seed", "-1", "--output", "x.mp4"], host, tmp_path)    # ComfyUI refuses the widget's value
    assert proc.returncode == 2 and "ComfyUI refused the prompt's inputs: " in proc.stderr and "seed" in proc.stderr
    assert proc.stderr.rstrip().endswith("(here seed is --seed)"), proc.stderr
    proc = run(["--causal_block_size", "0"], host, tmp_path)              # a Diffusion Forcing widget, nested in mode
    assert proc.returncode == 2 and "mode.causal_block_size" in proc.stderr, proc.stderr
    assert proc.stderr.rstrip().endswith("(here causal_block_size is --causal_block_size)"), proc.stderr
    proc = run(["--inference_steps", "0"], host, tmp_path)              # the demo used to run its own 4 steps
    assert proc.returncode == 2 and proc.stderr.strip() == ("generate_video_fp8: --inference_steps: 0; give 1 or more "
                                                            "(SkyReels-V2 uses 30 to 50)"), proc.stderr



def _runs_main(process):
    import psutil
    with contextlib.suppress(psutil.Error):
        return "main.py" in process.cmdline()
    return False


@pytest.mark.skipif(os.name == "nt", reason="SIGTERM from another process is TerminateProcess on Windows")
def test_a_killed_run_stops_its_comfyui_and_leaves_no_temp_folder_and_nohup_still_holds(host, tmp_path):
    import psutil
    import signal
    temp = tmp_path / "temp"
    temp.mkdir()
    env = {**os.environ, "COMFYUI_PATH": host, "TMPDIR": str(temp)}
    proc = subprocess.Popen([sys.executable, SCRIPT], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))     # as under nohup
    children = []
    try:
        for _ in range(600):             # until ComfyUI's main.py runs (not the demo's short VAE-writing child)
            children = psutil.Process(proc.pid).children(recursive=True)
            if any(_runs_main(c) for c in children) or proc.poll() is not None:
                break
            time.sleep(0.1)
        comfyui = [c for c in children if _runs_main(c)]
        assert comfyui, proc.returncode
        proc.send_signal(signal.SIGHUP)  # the terminal closed: nohup's ignored SIGHUP stays ignored, in ComfyUI too
        time.sleep(1)
        assert proc.poll() is None and all(c.is_running() for c in comfyui)
        proc.terminate()                 # as `timeout` or a job scheduler stops it
        assert proc.wait(60) == 128 + 15
        left = [c.pid for c in comfyui if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    finally:
        for p in [proc, *children]:     # nothing of this test outlives it, passed or not
            with contextlib.suppress(psutil.NoSuchProcess, ProcessLookupError):
                p.kill()
    assert list(temp.glob("skyreels-headless-*")) == []
    assert left == []                   # ComfyUI stopped with the script


@pytest.mark.skipif(os.name == "nt", reason="SIGUSR1 stands in for SIGBREAK, which is Windows' own")
def test_ctrl_break_ends_through_finally_as_ctrl_c_does(monkeypatch):
    # Windows' Ctrl+Break is SIGBREAK, which Linux lacks: SIGUSR1 stands in for it here.
    import signal
    from generate_video_fp8 import exit_on_kill
    monkeypatch.setattr(signal, "SIGBREAK", signal.SIGUSR1, raising=False)
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1)}
    try:
        exit_on_kill()
        assert signal.getsignal(signal.SIGUSR1) != signal.SIG_DFL     # else the signal would end pytest itself
        with pytest.raises(SystemExit) as e:
            os.kill(os.getpid(), signal.SIGUSR1)
            time.sleep(1)           # the handler runs at the next bytecode; this is never reached
        assert e.value.code == 128 + signal.SIGUSR1
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def test_no_gpu_without_cpu_is_one_line_and_exit_2(host, tmp_path):
    # CUDA_VISIBLE_DEVICES hides any GPU, so this holds on every machine; ComfyUI printed a 30-line traceback.
    from helpers import write_tiny
    write_tiny(tmp_path / "t2v.safetensors", "T2V")
    for name in ("te", "vae"):
        safetensors.torch.save_file({"x": torch.zeros(2)}, str(tmp_path / f"{name}.safetensors"))
    env = {**os.environ, "COMFYUI_PATH": host, "CUDA_VISIBLE_DEVICES": ""}
    # with --offload, which --cpu does not take (refused by name), the advice says to leave it out
    for flags, todo in (([], "add --cpu"), (["--offload"], "leave out --offload and add --cpu")):
        proc = subprocess.run([sys.executable, SCRIPT, "--model_id", str(tmp_path / "t2v.safetensors"),
                               "--text_encoder", str(tmp_path / "te.safetensors"), "--vae",
                               str(tmp_path / "vae.safetensors"), *flags],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 2, proc.stderr
        said = r"generate_video_fp8: ComfyUI found no GPU \(.*(NVIDIA driver|CUDA).*\); " + todo
        assert re.fullmatch(said + r" to run on the CPU \(slow\), or install a PyTorch with CUDA\n", proc.stderr), (
            proc.stderr)

def test_an_output_on_a_drive_that_is_not_there_is_named(monkeypatch, tmp_path):
    # On Windows the parent of "E:\\" is "E:\\": with the drive unplugged, the search for a folder must still end.
    from generate_video_fp8 import BadInput, check_output, parse_args
    for name in ("exists", "isdir", "isfile"):
        monkeypatch.setattr(os.path, name, lambda path: False)
    with pytest.raises(BadInput, match=re.escape(f"--output: {tmp_path}/x.mp4: / is not there; choose another place")):
        check_output(parse_args(["--output", f"{tmp_path}/x.mp4"]))


def test_an_output_folder_that_cannot_be_written_is_named(monkeypatch, tmp_path):
    # The tests run as root, which may write anywhere: the OS's refusal (a read-only share, Program Files, C:\\ for a
    # user, who may make folders there but not files) stands in here. It is tried, not asked of os.access, which says
    # yes to every folder on Windows.
    from generate_video_fp8 import BadInput, check_output, parse_args
    real_open, real_mkdir = os.open, os.mkdir

    def refused(real):
        def call(path, *args, **kwargs):
            if os.path.dirname(path) == str(tmp_path):
                raise PermissionError(13, "Permission denied", path)
            return real(path, *args, **kwargs)
        return call
    monkeypatch.setattr(os, "access", lambda path, mode: True)
    monkeypatch.setattr(os, "open", refused(real_open))       # files refused, folders not: as C:\\
    check_output(parse_args(["--outdir", f"{tmp_path}/videos"]))    # a folder to be made there is fine
    with pytest.raises(BadInput, match=re.escape(f"--output: {tmp_path}/x.mp4: {tmp_path} is not writable; choose "
                                                 "another place")):
        check_output(parse_args(["--output", f"{tmp_path}/x.mp4"]))
    monkeypatch.setattr(os, "mkdir", refused(real_mkdir))     # neither: a read-only share
    with pytest.raises(BadInput, match=re.escape(f"--outdir: {tmp_path}/videos: {tmp_path} is not writable; choose "
                                                 "another place")):
        check_output(parse_args(["--outdir", f"{tmp_path}/videos"]))
    assert os.listdir(tmp_path) == []     # the tries leave nothing


def test_a_windows_folder_ending_in_a_backslash_before_its_quote_is_named(monkeypatch):
    # cmd and PowerShell 5 hand `--outdir "D:\\out dir\\" --seed 3` over as one value: D:\\out dir" --seed 3
    from generate_video_fp8 import BadInput, check_flags, parse_args
    monkeypatch.setattr(os, "name", "nt")
    for flag in ("--outdir", "--model_id"):
        with pytest.raises(BadInput) as e:
            check_flags(parse_args([flag, 'D:\\out dir" --seed 3']))
        assert str(e.value) == (f'{flag.replace("_id", "_path")}: D:\\out dir" --seed 3: a folder ending in \\" takes '
                                'the quote and what follows into the name; leave out the last backslash')


def test_damaged_files_beside_the_model_exit_2_before_comfyui_and_a_failing_node_exits_1(host, tmp_path):
    from comfy_host import run_in_host
    from helpers import write_tiny
    write_tiny(tmp_path / "model.safetensors", "T2V", seed=1)
    run_in_host(host, f"from generate_video_fp8 import write_tiny_vae\nwrite_tiny_vae({str(tmp_path / 'vae.safetensors')!r})"
                      "\nresult = 1")
    data = (tmp_path / "vae.safetensors").read_bytes()
    (tmp_path / "cut_vae.safetensors").write_bytes(data[:len(data) // 2])      # a download that stopped half way
    safetensors.torch.save_file({"model.layers.0.mlp.up_proj.weight": torch.ones(4, 4)},
                                str(tmp_path / "umt5.safetensors"))           # a file, but not umt5-xxl
    flags = ["--model_path", "model.safetensors", "--text_encoder", "umt5.safetensors", "--cpu", "--output", "v.mp4"]
    proc = run(flags + ["--vae", "cut_vae.safetensors"], host, tmp_path)
    assert proc.returncode == 2 and proc.stdout == "", proc.stdout + proc.stderr     # before ComfyUI started
    assert proc.stderr == (f"generate_video_fp8: --vae: {tmp_path / 'cut_vae.safetensors'}: the file is truncated "
                           "or damaged (not the size its header gives); download or copy it again\n"), proc.stderr
    # ComfyUI loads this file as some text encoder; Sample Video then refuses its conditioning: exit 1, its one line
    proc = run(flags + ["--vae", "vae.safetensors"], host, tmp_path)
    assert proc.returncode == 1 and not (tmp_path / "v.mp4").exists(), proc.stdout + proc.stderr
    assert proc.stderr.startswith("generate_video_fp8: Sample Video: positive: 768-wide text conditioning; "
                                  "SkyReels-V2 reads umt5-xxl's (4096)") and proc.stderr.count("\n") == 1, proc.stderr


@pytest.mark.parametrize("name", ["cut_vae.sft", "cut_VAE.SafeTensors"])
def test_a_damaged_safetensors_by_another_of_its_names_exits_2_before_comfyui(host, tmp_path, name):
    # ComfyUI reads .sft and any case of .safetensors as safetensors (comfy.utils.load_torch_file, folder_paths):
    # checked as .safetensors is, not found by Load VAE after ComfyUI started (exit 1)
    from helpers import write_tiny
    write_tiny(tmp_path / "model.safetensors", "T2V", seed=1)
    safetensors.torch.save_file({"x": torch.zeros(1)}, str(tmp_path / "umt5.safetensors"))
    safetensors.torch.save_file({"x": torch.zeros(64, 64)}, str(tmp_path / "whole.safetensors"))
    data = (tmp_path / "whole.safetensors").read_bytes()
    (tmp_path / name).write_bytes(data[:len(data) // 2])
    proc = run(["--model_path", "model.safetensors", "--text_encoder", "umt5.safetensors", "--vae", name, "--cpu",
                "--output", "v.mp4"], host, tmp_path)
    assert proc.returncode == 2 and proc.stdout == "", proc.stdout + proc.stderr
    assert proc.stderr == (f"generate_video_fp8: --vae: {tmp_path / name}: the file is truncated or damaged (not "
                           "the size its header gives); download or copy it again\n"), proc.stderr


def test_a_core_loader_that_fails_is_named_with_its_flag_and_file():
    # Core's loaders do not name their file, and their messages run over lines: the script's line says both.
    from generate_video_fp8 import node_failure
    err = {"node_type": "VAELoader", "exception_message": "ERROR: VAE is invalid: None\n\nIf the VAE is from a "
                                                          "checkpoint loader node your checkpoint does not contain a "
                                                          "valid VAE.\n"}
    info = {"VAELoader": {"display_name": "Load VAE"}}
    assert node_failure(err, info, {"vae": "my_vae.safetensors"}) == (
        "Load VAE (--vae my_vae.safetensors) failed: ERROR: VAE is invalid: None If the VAE is from a checkpoint "
        "loader node your checkpoint does not contain a valid VAE.")
    # This pack's nodes name themselves and their widgets: the flags that set those widgets here are added
    err = {"node_type": "SkyReelsSampleVideo", "exception_message": "Sample Video: start_image: one frame gives 1 "
                                                                    "latent frame, fewer than causal_block_size 5\n"}
    assert node_failure(err, {"SkyReelsSampleVideo": {"display_name": "Sample Video"}}, {}) == (
        "Sample Video: start_image: one frame gives 1 latent frame, fewer than causal_block_size 5 (here "
        "start_image is --image, causal_block_size is --causal_block_size)")


def test_comfyui_dying_mid_run_is_reported_with_its_log(tmp_path):
    # e.g. killed by the system for lack of memory: the server stops answering, then its process is gone.
    import signal
    from generate_video_fp8 import HostServer
    server = HostServer(str(tmp_path), str(tmp_path), install_pack=False)
    with open(server.log_path, "w") as f:
        f.write("got prompt\nloading model ...\n")
    server.post = lambda path, data: (200, {"prompt_id": "p1"})
    server.proc = subprocess.Popen([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"])
    server.proc.wait()

    def refused(path):
        raise ConnectionResetError(104, "Connection reset by peer")

    server.get = refused
    try:
        server.run({})
    except RuntimeError as e:
        message = str(e)
    assert message.startswith(f"ComfyUI exited (code {-signal.SIGKILL}; a negative code: killed, e.g. by the system "
                              "for lack of memory, try --offload). Its log ends:\ngot prompt\nloading model ..."), \
        message


def test_no_host_is_named(tmp_path):
    proc = subprocess.run([sys.executable, SCRIPT], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "COMFYUI_PATH": str(tmp_path)})
    assert proc.returncode == 2
    assert f"COMFYUI_PATH={tmp_path} is not a ComfyUI folder" in proc.stderr


def test_no_host_in_comfyui_desktops_folder_says_where_its_comfyui_is(tmp_path):
    # ComfyUI Desktop keeps custom_nodes, models and its .venv in the folder chosen at install, and ComfyUI's code in
    # the app (Comfy-Org/desktop: comfyServer.ts runs resources/ComfyUI/main.py with --base-directory that folder)
    desktop = tmp_path / "Documents" / "ComfyUI"
    pack = desktop / "custom_nodes" / "ComfyUI-SkyReels-FP8"
    pack.mkdir(parents=True)
    for name in (".venv", "models"):
        (desktop / name).mkdir()
    shutil.copy(SCRIPT, pack)
    env = {k: v for k, v in os.environ.items() if k != "COMFYUI_PATH"}
    advice = (f"{desktop} is ComfyUI Desktop's, whose ComfyUI is inside the app: set COMFYUI_PATH to the "
              "resources\\ComfyUI folder of the app's install folder, and give the model files' paths (--model_id, "
              "--text_encoder, --vae, and for I2V --clip_vision)")      # (on a Mac: ComfyUI.app/Contents/...)
    # run from there, and with COMFYUI_PATH set to that folder
    for extra, said in (({}, f"no ComfyUI found: {advice}"),
                        ({"COMFYUI_PATH": str(desktop)}, f"is not a ComfyUI folder (no main.py / comfy/); {advice}")):
        proc = subprocess.run([sys.executable, str(pack / "generate_video_fp8.py")], cwd=tmp_path, text=True,
                              capture_output=True, env={**env, "HOME": str(tmp_path), "USERPROFILE": str(tmp_path),
                                                        **extra})
        assert proc.returncode == 2 and proc.stderr.strip().endswith(said), proc.stderr


def test_the_demo_keeps_its_small_sizes_except_those_given(server):
    import json

    from generate_video_fp8 import build_prompt, parse_args
    info = server.get("/object_info")
    names = {"diffusion_models": "tiny-SkyReels-V2-DF/", "vae": "tiny_wan_vae.safetensors"}

    def sample_widgets(argv):
        with open(os.path.join(REPO, "workflows", "skyreels_df_long_video.json"), encoding="utf-8") as f:
            prompt = build_prompt(json.load(f), info, parse_args(argv), names, demo=True)
        sample = next(n["inputs"] for n in prompt.values() if n["class_type"] == "SkyReelsSampleVideo")
        return sample["width"], sample["height"], sample["frames"], sample["steps"], sample["mode.causal_block_size"]

    assert sample_widgets([]) == (64, 64, 57, 4, 5)
    # were 57 and 4; blocks of 5 latent frames fit the demo's own windows only (33 frames: 9 latent frames)
    assert sample_widgets(["--num_frames", "33", "--inference_steps", "2"]) == (64, 64, 33, 2, 1)
    assert sample_widgets(["--num_frames", "33", "--causal_block_size", "3"])[-1] == 3
    assert sample_widgets(["--resolution", "720P"]) == (1280, 720, 57, 4, 5)
    # a start image is one latent frame: blocks of 5 cannot start from it (Sample Video refused the demo's prompt)
    assert sample_widgets(["--image", "start.png"])[-1] == 1


def test_flags_reach_the_workflow_widgets(server):
    # The real-model path cannot run here (no umt5-xxl), so its prompt is checked as built for the host's nodes.
    import json

    from generate_video_fp8 import build_prompt, parse_args
    info = server.get("/object_info")
    names = {"diffusion_models": "SkyReels-V2-DF-1.3B-540P/", "text_encoders": "umt5.safetensors",
             "vae": "vae.safetensors"}
    args = parse_args(["--model_path", "x", "--prompt", "a red fox", "--negative_prompt", "blurry", "--no-fp8",
                       "--resolution", "720P", "--num_frames", "257", "--ar_step", "5", "--causal_block_size", "5",
                       "--seed", "7", "--image", "start.png", "--causal_attention", "--use_usp", "--workers", "4",
                       "--guidance_scale", "4.5", "--shift", "5", "--teacache", "--use_ret_steps"])
    with open(os.path.join(REPO, "workflows", "skyreels_df_long_video.json"), encoding="utf-8") as f:
        prompt = build_prompt(json.load(f), info, args, names, demo=False)
    by_type = {}
    for node in prompt.values():
        by_type.setdefault(node["class_type"], []).append(node["inputs"])
    loader, sage, sample = by_type["SkyReelsFP8ModelLoader"][0], by_type["SkyReelsPatchSageAttention"][0], \
        by_type["SkyReelsSampleVideo"][0]
    assert loader["model_name"] == "SkyReels-V2-DF-1.3B-540P/" and loader["weight_format"] == "bf16"
    assert sage["mode"] == "disabled"
    assert (sample["width"], sample["height"], sample["frames"], sample["seed"]) == (1280, 720, 257, 7)
    # without --seed: a random one for a model, as SkyReels-V2's scripts (their range), 42 for the demo
    seeds = {parse_args(["--model_path", "x"]).seed for _ in range(4)}
    assert len(seeds) > 1 and all(0 <= s < 4294967294 for s in seeds) and parse_args([]).seed == 42, seeds
    assert (sample["cfg"], sample["shift"]) == (4.5, 5.0)
    # Given flags win; the others take SkyReels-V2's CLI defaults, not the workflow's long-video settings.
    assert (sample["mode.ar_step"], sample["mode.causal_block_size"], sample["mode.overlap_history"]) == (5, 5, 17)
    assert (sample["mode.base_num_frames"], sample["mode.addnoise_condition"]) == (97, 0)
    assert sorted(e["text"] for e in by_type["CLIPTextEncode"]) == ["a red fox", "blurry"]
    assert by_type["CLIPLoader"][0]["clip_name"] == "umt5.safetensors"
    assert by_type["LoadImage"][0]["image"] == "image_start.png" and prompt[sample["start_image"][0]]
    assert prompt[sample["vae"][0]]["class_type"] == "VAELoader"
    # the file plays at the rate the model was told: Create Video's fps is Sample Video's fps output (slot 3)
    assert prompt[by_type["CreateVideo"][0]["fps"][0]]["class_type"] == "SkyReelsSampleVideo"
    assert by_type["CreateVideo"][0]["fps"][1] == 3 and sample["fps"] == 24
    # the video as SkyReels-V2 assembles it: Sample Video's images output (slot 2), each window decoded alone
    assert by_type["CreateVideo"][0]["images"][1] == 2 and prompt[by_type["CreateVideo"][0]["images"][0]][
        "class_type"] == "SkyReelsSampleVideo"
    assert sample["mode.causal_attention"] is True
    parallel = prompt[sample["parallel"][0]]
    assert parallel["class_type"] == "SkyReelsParallelConfig" and parallel["inputs"]["workers"] == 4
    cache = prompt[sample["model"][0]]     # TeaCache reaches the workers (their MODEL is rebuilt from its settings)
    assert cache["class_type"] == "SkyReelsTeaCache" and cache["inputs"] == {
        "model": [next(k for k, n in prompt.items() if n["class_type"] == "SkyReelsPatchSageAttention"), 0],
        "threshold": 0.2, "retention_steps": True}, cache
    spec = {**info["SkyReelsParallelConfig"]["input"]["required"], **info["SkyReelsParallelConfig"]["input"]["optional"]}
    assert set(parallel["inputs"]) == set(spec), (parallel["inputs"], spec)   # every widget, as the host names them
    # --seed gives SkyReels-V2's noise (drawn on the GPU, as its scripts draw it); --cpu_noise asks for ComfyUI's
    options = info["SkyReelsSampleVideo"]["input"]["optional"]["noise"][1]["options"]
    assert sample["noise"] == "gpu (SkyReels-V2)" and sample["noise"] in options
    with open(os.path.join(REPO, "workflows", "skyreels_df_long_video.json"), encoding="utf-8") as f:
        prompt = build_prompt(json.load(f), info, parse_args(["--model_path", "x", "--cpu_noise", "--teacache"]), names,
                              demo=False)
    by_type = {n["class_type"]: n["inputs"] for n in prompt.values()}
    assert by_type["SkyReelsSampleVideo"]["noise"] == "cpu (ComfyUI)"
    # without --no-fp8 and --use_ret_steps: FP8 as the file allows, TeaCache without its retention steps
    assert by_type["SkyReelsFP8ModelLoader"]["weight_format"] == "auto"
    assert by_type["SkyReelsTeaCache"]["retention_steps"] is False
    # a video to continue is resized with the core method closest to SkyReels-V2's reader (ffmpeg's bicubic):
    # lanczos, 0.70-0.89 levels from it on its example clips against bicubic's 1.12-1.33 (bench/preprocess.py)
    with open(os.path.join(REPO, "workflows", "skyreels_df_long_video.json"), encoding="utf-8") as f:
        prompt = build_prompt(json.load(f), info, parse_args(["--model_path", "x", "--video_path", "clip.mp4"]), names,
                              demo=False, source=(80, 48, 25))
    assert prompt["video_sized"]["inputs"]["upscale_method"] == "lanczos"


def test_teacache_and_a_portrait_image_reach_the_i2v_workflow(server):
    import json

    from generate_video_fp8 import build_prompt, parse_args
    info = server.get("/object_info")
    names = {"diffusion_models": "i2v/", "text_encoders": "umt5.safetensors", "vae": "vae.safetensors",
             "clip_vision": "clip_vision_h.safetensors"}
    args = parse_args(["--model_id", "x", "--image", "me.png", "--teacache", "--use_ret_steps", "--resolution", "720P"])
    with open(os.path.join(REPO, "workflows", "skyreels_i2v_fp8_sage.json"), encoding="utf-8") as f:
        prompt = build_prompt(json.load(f), info, args, names, demo=False, source=(720, 1280, 1))
    by_type = {n["class_type"]: n["inputs"] for n in prompt.values()}
    # a portrait image makes a portrait video, as SkyReels-V2's generate_video.py does
    image_to_video = by_type["WanImageToVideo"]
    assert (image_to_video["width"], image_to_video["height"]) == (720, 1280)
    assert by_type["LoadImage"]["image"] == "image_me.png"
    # the image goes in through WanImageToVideo alone: Sample Video refuses a start_image outside diffusion forcing
    assert "start_image" not in by_type["SkyReelsSampleVideo"] and "start_image" not in prompt
    assert [n["class_type"] for n in prompt.values()].count("LoadImage") == 1
    # TeaCache between Patch SageAttention and Sample Video, with every widget the host knows
    cache = prompt[by_type["SkyReelsSampleVideo"]["model"][0]]
    assert cache["class_type"] == "SkyReelsTeaCache"
    assert cache["inputs"] == {"model": cache["inputs"]["model"], "threshold": 0.2, "retention_steps": True}
    assert prompt[cache["inputs"]["model"][0]]["class_type"] == "SkyReelsPatchSageAttention"
    assert set(cache["inputs"]) == set(info["SkyReelsTeaCache"]["input"]["required"])


def test_model_and_image_must_fit(host, tmp_path):
    from helpers import write_tiny_release
    write_tiny_release(str(tmp_path / "i2v"), "I2V")
    proc = run(["--model_path", str(tmp_path / "i2v")], host, tmp_path)
    assert proc.returncode == 2 and "is an image-to-video model; give --image" in proc.stderr
    (tmp_path / "start.png").write_bytes(b"")                  # exists, and is no image
    proc = run(["--image", "start.png"], host, tmp_path)
    assert proc.returncode == 2 and "--image: start.png is not an image" in proc.stderr
    # I2V samples in standard mode, where the DF widgets do not exist: their flags are refused, not dropped
    proc = run(["--model_path", str(tmp_path / "i2v"), "--image", "start.png", "--ar_step", "5",
                "--causal_attention", "--end_image", "start.png"], host, tmp_path)
    assert proc.returncode == 2
    assert "--ar_step, --causal_attention, --end_image: Diffusion Forcing options;" in proc.stderr


def frames_of(path):
    with av.open(str(path)) as c:
        return torch.stack([torch.from_numpy(f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]).float()


def write_clip(path, frames, width, height, rotation=0, title=None):
    """An h264 clip whose frames differ from each other (a ramp moving 37 levels a frame), with the rotation a phone
    records."""
    with av.open(str(path), "w") as c:
        if title:
            c.metadata["title"] = title
        stream = c.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if rotation:
            stream.set_display_rotation(rotation)
        for i in range(frames):
            picture = torch.full((height, width, 3), 128, dtype=torch.uint8)
            picture[:, :, 0] = (torch.arange(width) * 3 + i * 37) % 256
            c.mux(stream.encode(av.VideoFrame.from_ndarray(picture.numpy(), format="rgb24")))
        c.mux(stream.encode())


def test_skyreels_v2_flags_continue_a_video_to_an_end_image_with_teacache(host, tmp_path):
    # SkyReels-V2's README commands use these flags; on the demo model (DF, TeaCache's 1.3B width) every node runs.
    from PIL import Image
    write_clip(tmp_path / "clip.mp4", 25, 80, 48)             # 5:3, stretched to the demo's 64x64 as SkyReels-V2's
    Image.new("RGB", (80, 48), (200, 30, 30)).save(tmp_path / "end.png")
    proc = run(["--video_path", "clip.mp4", "--end_image", "end.png", "--teacache", "--use_ret_steps",
                "--teacache_thresh", "0.3", "--outdir", "mine"], host, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "overlap_history 17 (through the VAE), addnoise_condition 20, fps 24, a video continued, end image" \
        in proc.stdout
    assert "model calls skipped (threshold 0.3, retention steps;" in proc.stdout
    [video] = list((tmp_path / "mine").iterdir())
    assert video.name.startswith("skyreels_df_long_video_42_")
    out, given = frames_of(video), frames_of(tmp_path / "clip.mp4")
    # As SkyReels-V2's extend_video: the whole given video, then the frames made after its last 17 (57 - 17).
    assert out.shape == (25 + 57 - 17, 64, 64, 3)
    given = torch.nn.functional.interpolate(given.permute(0, 3, 1, 2), size=(64, 64), mode="bicubic")
    gaps = (out[:25, None] - given.permute(0, 2, 3, 1)[None]).abs().mean(dim=(2, 3, 4))    # [output, given]
    # each of the first 25 is its own frame of the given one (through h264 twice), no other
    assert torch.equal(gaps.argmin(dim=1), torch.arange(25)), gaps.argmin(dim=1)
    assert gaps.diagonal().max() < 6, gaps.diagonal()


def test_skyreels_v2_flags_that_cannot_run_say_why(host, tmp_path, monkeypatch, capsys):
    from generate_video_fp8 import main
    from PIL import Image, PngImagePlugin
    monkeypatch.setenv("COMFYUI_PATH", host)
    monkeypatch.chdir(tmp_path)
    write_clip(tmp_path / "short.mp4", 9, 32, 32)
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    (tmp_path / "broken.mp4").write_text("not a video")
    (tmp_path / "clip.gif").write_bytes(b"GIF89a")
    (tmp_path / "cut.png").write_bytes((tmp_path / "a.png").read_bytes()[:60])    # its header, then nothing
    # Found by fuzzing (each was a traceback): a header claiming 20000 x 20000 pixels, which PIL refuses as a
    # decompression bomb, and a title in Latin-1, not UTF-8, which PyAV (and so ComfyUI's Load Video) cannot decode
    png = bytearray((tmp_path / "a.png").read_bytes())
    png[16:24] = struct.pack(">II", 20000, 20000)
    png[29:33] = struct.pack(">I", zlib.crc32(png[12:29]))       # IHDR's CRC, which PIL checks
    (tmp_path / "huge.png").write_bytes(png)
    text = PngImagePlugin.PngInfo()
    text.add_text("comment", "x" * (2 << 20), zip=True)    # past PIL's MAX_TEXT_CHUNK once decompressed: ValueError
    Image.new("RGB", (8, 8)).save(tmp_path / "text.png", pnginfo=text)
    write_clip(tmp_path / "latin1.mp4", 20, 32, 32, title="Café 2019")
    clip = (tmp_path / "latin1.mp4").read_bytes()
    (tmp_path / "latin1.mp4").write_bytes(clip.replace("Café ".encode(), "Café".encode("latin-1") + b"  "))
    for argv, message in (
            (["--image", "cut.png"], "--image: cut.png is not an image"),
            (["--image", "huge.png"], "--image: huge.png is too large to read (Image size (400000000 pixels) exceeds "
                                      "limit of"),
            (["--end_image", "text.png"], "--end_image: text.png is not an image (Decompressed data too large for "
                                          "PngImagePlugin.MAX_TEXT_CHUNK)"),
            (["--video_path", "latin1.mp4"], "--video_path: latin1.mp4: its metadata is not UTF-8 text (b'Caf\\xe9  "
                                             "2019'), which ComfyUI cannot read either; copy the video without it: "
                                             "ffmpeg -i IN -map_metadata -1 -c copy OUT"),
            (["--teacache", "--teacache_thresh", "2"], "--teacache_thresh: 2.0 is outside 0 to 1"),
            (["--video_path", "clip.gif"], "--video_path: clip.gif: ComfyUI's Load Video takes video files"),
            (["--prompt_enhancer"], "--prompt_enhancer: SkyReels-V2's prompt enhancer (Qwen2.5-32B-Instruct) does "
                                    "not run in ComfyUI; run its skyreels_v2_infer/pipelines/prompt_enhancer.py"),
            (["--image", "a.png", "--video_path", "short.mp4"], "--image, --video_path: give one"),
            (["--offload", "--cpu"], "--offload, --cpu: give one (--offload streams the weights to a GPU, --cpu runs "
                                     "without one)"),
            (["--end_image", "a.png", "--causal_block_size", "5"], "--end_image: needs --causal_block_size 1, not 5"),
            (["--video_path", "short.mp4"], "--video_path: 9 frames; a continuation starts from its last "
                                            "overlap_history (17), and this script needs that many: give a longer "
                                            "video, or a smaller --overlap_history"),
            (["--guidance_scale", "nan"], "--guidance_scale: nan; give a number from 0 to 100"),
            (["--shift", "101"], "--shift: 101.0; give a number from 0 to 100"),
            (["--video_path", "broken.mp4"], "--video_path: broken.mp4 is not a video ComfyUI can read"),
            (["--end_image", "none.png"], "--end_image: none.png not found"),
            (["--image", "."], "--image: . is a folder; give a file"),
            (["--model_id", ""], "--model_id: empty; give a model file, folder or Hugging Face id (none: the demo)"),
            (["--image", "a.png", "--num_frames", "1"], "--num_frames: 1 frame is --image's own; give 5 or more")):
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err, argv


def test_model_id_is_found_where_it_was_downloaded(host, tmp_path, monkeypatch, capsys):
    # The Hugging Face cache as huggingface_hub lays it out: refs/main names the snapshot, whose files link to blobs.
    from generate_video_fp8 import main
    from helpers import write_tiny_release
    write_tiny_release(tmp_path / "blobs", "I2V")
    repo = tmp_path / "hub" / "models--Skywork--SkyReels-V2-I2V-14B-540P"
    (repo / "snapshots" / "0c7b").mkdir(parents=True)
    for f in (tmp_path / "blobs").iterdir():
        try:
            (repo / "snapshots" / "0c7b" / f.name).symlink_to(f)
        except OSError:      # Windows without Developer Mode: huggingface_hub copies instead
            shutil.copyfile(f, repo / "snapshots" / "0c7b" / f.name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0c7b")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("COMFYUI_PATH", host)
    assert main(["--model_id", "Skywork/SkyReels-V2-I2V-14B-540P"]) == 2
    err = capsys.readouterr().err       # found, and its tensors read
    assert "SkyReels-V2 I2V" in err and "is an image-to-video model; give --image" in err, err
    assert main(["--model_id", "Skywork/SkyReels-V2-DF-1.3B-540P"]) == 2
    err = capsys.readouterr().err
    assert "--model_id: Skywork/SkyReels-V2-DF-1.3B-540P is not downloaded (looked in " in err
    assert f" and {tmp_path / 'hub' / 'models--Skywork--SkyReels-V2-DF-1.3B-540P'};" in err, err    # the cache too
    # one pattern: hf 1.x reads a second --include value as a file name, and hf 0.3x keeps only a repeated flag's last
    assert ('this script downloads nothing): hf download Skywork/SkyReels-V2-DF-1.3B-540P --exclude "*.pth" '
            '--local-dir ') in err
    from generate_video_fp8 import BadInput, find_model
    # a ComfyUI in a folder with spaces (C:\\Users\\John Smith\\...): the command pastes as one path (POSIX quoting
    # here, cmd's on Windows)
    with pytest.raises(BadInput) as e:
        find_model("Skywork/SkyReels-V2-DF-1.3B-540P", str(tmp_path / "Comfy UI"))
    command = str(e.value).split("this script downloads nothing): ")[1]
    assert shlex.split(command)[-1] == str(tmp_path / "Comfy UI" / "models" / "diffusion_models" /
                                           "SkyReels-V2-DF-1.3B-540P"), command
    # ComfyUI's own models folder comes first
    write_tiny_release(tmp_path / "comfy" / "models" / "diffusion_models" / "SkyReels-V2-I2V-14B-540P", "I2V")
    found = find_model("Skywork/SkyReels-V2-I2V-14B-540P", str(tmp_path / "comfy"))
    assert found == str(tmp_path / "comfy" / "models" / "diffusion_models" / "SkyReels-V2-I2V-14B-540P")
    # a name as the loader lists it: a release folder ("name/") or a file in ComfyUI's diffusion_models folders
    for name in ("SkyReels-V2-I2V-14B-540P", "SkyReels-V2-I2V-14B-540P/"):
        assert find_model(name, str(tmp_path / "comfy")) == found, name
    with pytest.raises(BadInput) as e:
        find_model("wan2.1_t2v_1.3B_fp16.safetensors", str(tmp_path / "comfy"))
    assert str(e.value) == ("--model_id: wan2.1_t2v_1.3B_fp16.safetensors not found: give a file or folder, a name as "
                            "Load FP8 SkyReels Model lists it (looked in "
                            f"{tmp_path / 'comfy' / 'models' / 'diffusion_models'}), or a Hugging Face id (owner/name)")


def test_sizes_frames_and_counts_are_read_as_comfyui_and_skyreels_v2_read_them(tmp_path, capsys):
    from PIL import Image
    from generate_video_fp8 import BadInput, check_flags, parse_args, read_source, video_size
    # a phone's portrait clip: stored 64x32, turned 90 degrees when played (and by ComfyUI's Load Video)
    write_clip(tmp_path / "phone.mp4", 20, 64, 32, rotation=90)
    assert read_source(parse_args(["--video_path", str(tmp_path / "phone.mp4")])) == (32, 64, 20)
    # a photo stored landscape with EXIF orientation 6 (turn 90 degrees): portrait, as LoadImage and SkyReels-V2 see it
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (80, 48)).save(tmp_path / "photo.jpg", exif=exif)
    assert read_source(parse_args(["--image", str(tmp_path / "photo.jpg")])) == (48, 80, 1)
    # SkyReels-V2 turns the video for a portrait picture only: a square one keeps the landscape size
    assert [video_size(parse_args(["--resolution", "540P"]), source) for source in ((48, 80, 1), (64, 64, 1))] == [
        (544, 960), (960, 544)]
    # SkyReels-V2 makes (n - 1) // 4 + 1 latent frames of any n: its README's --num_frames 120 is 117 frames
    args = parse_args(["--num_frames", "120", "--overlap_history", "19"])
    check_flags(args)
    assert (args.num_frames, args.overlap_history) == (117, 17)
    assert "--num_frames 120: 117 frames, as SkyReels-V2 makes them (4k+1)" in capsys.readouterr().out
    args = parse_args(["--base_num_frames", "20"])
    check_flags(args)
    assert args.base_num_frames == 17 and "--base_num_frames 20: 17 frames" in capsys.readouterr().out
    for flag in ("--num_frames", "--base_num_frames", "--overlap_history"):
        with pytest.raises(BadInput, match=f"^{flag}: 0 frames; give 1 or more$"):
            check_flags(parse_args([flag, "0"]))


def test_the_workflow_follows_the_model_and_any_diffusion_forcing_flag():
    from generate_video_fp8 import BadInput, parse_args, pick_workflow
    from quant import tiny
    t2v_14b, i2v = tiny.info("T2V", **tiny.REAL["14B"]), tiny.info("I2V")
    pick = lambda info, *flags: pick_workflow(parse_args(list(flags)), info)     # noqa: E731
    assert pick(t2v_14b) == "skyreels_t2v_fp8_sage.json"
    # DF-14B has T2V-14B's tensors: any DF flag asks for it, a 0 (SkyReels-V2's defaults) as much as another value
    for flags in (["--ar_step", "0"], ["--addnoise_condition", "0"], ["--ar_step", "5"], ["--causal_attention"]):
        assert pick(t2v_14b, *flags) == "skyreels_df_long_video.json", flags
    assert pick(t2v_14b, "--image", "start.png") == "skyreels_df_long_video.json"     # a start image, as DF-14B
    assert pick(tiny.info("DF")) == "skyreels_df_long_video.json"
    assert pick(i2v, "--image", "start.png") == "skyreels_i2v_fp8_sage.json"
    with pytest.raises(BadInput, match=r"^--ar_step: Diffusion Forcing options; SkyReels-V2 I2V"):
        pick(i2v, "--image", "start.png", "--ar_step", "0")


def test_a_release_folder_gets_the_name_the_loader_lists(server, tmp_path):
    # A release of one model.safetensors (no shard index) is listed by its file, a sharded one as "name/".
    import safetensors.torch
    from generate_video_fp8 import BadInput, find_model, inspect_model, link_models, parse_args
    from quant import tiny
    models = os.path.join(server.base, "models", "diffusion_models")
    single = os.path.join(models, "release.single")
    os.makedirs(single)
    safetensors.torch.save_file(tiny.state_dict(tiny.info("DF"), seed=2), os.path.join(single, "model.safetensors"))
    for name in ("te.safetensors", "vae.safetensors"):
        safetensors.torch.save_file({"x": torch.zeros(1)}, str(tmp_path / name))
    args = parse_args(["--text_encoder", str(tmp_path / "te.safetensors"), "--vae", str(tmp_path / "vae.safetensors")])
    listed = server.get("/object_info/SkyReelsFP8ModelLoader")["SkyReelsFP8ModelLoader"]["input"]["required"][
        "model_name"][1]["options"]
    for folder in (single, os.path.join(models, "t2v.sharded")):
        base = tmp_path / os.path.basename(folder)
        base.mkdir()
        name = link_models(str(base), args, None, folder)["diffusion_models"]
        assert name in listed, (name, listed)
    # Shards without their index, or a release with a conversion saved beside it: the loader lists no folder for
    # them, so the script says so before it reads the tensors (which overlap) or ComfyUI does.
    loose, beside = tmp_path / "loose", tmp_path / "beside"
    tiny.write_release(str(loose), tiny.state_dict(tiny.info("T2V")))
    (loose / "model.safetensors.index.json").unlink()
    shutil.copytree(single, beside)
    shutil.copy(os.path.join(single, "model.safetensors"), beside / "model_fp8.safetensors")
    (beside / "config.json").write_text("{}")
    for folder in (loose, beside):
        with pytest.raises(BadInput, match=re.escape(f"--model_id: {folder} holds 2 .safetensors files and no shard "
                                                     "index (*.safetensors.index.json): give one file, or download "
                                                     "the folder with its index")):
            find_model(str(folder), server.host)
    # A folder without model files is left to the reader, which names what it holds (a diffusers pipeline here).
    pipeline = tmp_path / "pipeline"
    tiny.write_release(str(pipeline / "transformer"), tiny.state_dict(tiny.info("T2V")))
    with pytest.raises(BadInput, match=re.escape("the folder has no .safetensors shards; give the subfolder that "
                                                 "holds the diffusion model (transformer/)")):
        inspect_model(find_model(str(pipeline), server.host))


def test_a_video_that_cannot_be_saved_is_kept_and_named(tmp_path):
    # A real refusal by the OS at the end of a run: a 64 KiB file size limit (RLIMIT_FSIZE, SIGXFSZ ignored) stands
    # for a full disk. No half file is left, and the generated video is moved out of the temp folder, not deleted.
    pytest.importorskip("resource")
    video = tmp_path / "base" / "output" / "headless" / "video_00001_.mp4"
    video.parent.mkdir(parents=True)
    video.write_bytes(os.urandom(200_000))
    (tmp_path / "out").mkdir()
    code = f"""
import resource, signal, sys
sys.path.insert(0, {REPO!r})
from generate_video_fp8 import BadInput, parse_args, save_output
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, 1 << 16))
try:
    save_output({str(tmp_path / "base")!r}, parse_args(["--output", {str(tmp_path / "out" / "v.mp4")!r}]), "x.json")
except BadInput as e:
    print(e)
"""
    said = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    kept = [f for f in os.listdir(tmp_path) if f.startswith("skyreels-video-")]
    assert len(kept) == 1 and os.path.getsize(tmp_path / kept[0]) == 200_000, (os.listdir(tmp_path), said.stderr)
    assert said.stdout.strip() == (f"--output: {tmp_path / 'out' / 'v.mp4'} cannot be written (File too large); the "
                                   f"video is kept at {tmp_path / kept[0]}"), said
    assert os.listdir(tmp_path / "out") == [] and not video.exists()


def _one_video(tmp_path):
    video = tmp_path / "base" / "output" / "headless" / "video_00001_.mp4"
    video.parent.mkdir(parents=True)
    video.write_bytes(os.urandom(1000))


def test_a_file_made_meanwhile_is_not_overwritten_and_a_copy_cut_short_leaves_nothing(tmp_path, monkeypatch):
    from generate_video_fp8 import BadInput, parse_args, save_output
    _one_video(tmp_path)
    args = parse_args(["--output", str(tmp_path / "v.mp4")])
    (tmp_path / "v.mp4").write_bytes(b"mine")         # appeared under the name while the video was made
    with pytest.raises(BadInput, match="exists; choose another name"):
        save_output(str(tmp_path / "base"), args, "x.json")
    assert (tmp_path / "v.mp4").read_bytes() == b"mine"
    os.remove(tmp_path / "v.mp4")

    def cut(src, dst):      # Ctrl-C or a kill during the copy
        with open(dst, "wb") as f:
            f.write(b"half")
        raise KeyboardInterrupt
    monkeypatch.setattr(shutil, "copyfile", cut)
    with pytest.raises(KeyboardInterrupt):
        save_output(str(tmp_path / "base"), args, "x.json")
    assert not (tmp_path / "v.mp4").exists()          # no half video under the name


def test_an_upper_case_mp4_name_is_taken(tmp_path):
    from generate_video_fp8 import check_output, parse_args
    check_output(parse_args(["--output", str(tmp_path / "V.MP4")]))


def test_a_short_video_continues_with_a_short_overlap_and_a_too_long_one_is_refused(tmp_path):
    from generate_video_fp8 import BadInput, parse_args, read_source, read_video
    write_clip(tmp_path / "short.mp4", 9, 32, 32)
    assert read_source(parse_args(["--video_path", str(tmp_path / "short.mp4"), "--overlap_history", "5"])) == (
        32, 32, 9)
    write_clip(tmp_path / "long.mp4", 4098, 16, 16)       # core Image From Batch takes up to 4096
    with pytest.raises(BadInput, match="4098 frames; .* this script takes up to 4097: trim it"):
        read_video(str(tmp_path / "long.mp4"), 1)


def test_a_three_part_name_is_not_a_hugging_face_id(tmp_path):
    from generate_video_fp8 import BadInput, find_model
    with pytest.raises(BadInput, match=r"^--model_id: a/b/c not found: give a file or folder"):
        find_model("a/b/c", str(tmp_path))


def test_default_files_are_found_in_the_hosts_extra_folders(tmp_path, monkeypatch):
    # a default VAE / text encoder kept where the host's extra_model_paths.yaml points, not in models/<kind>
    import generate_video_fp8 as gv
    shared = tmp_path / "shared"
    for kind, name in (("vae", "wan_2.1_vae.safetensors"),
                       ("text_encoders", "umt5_xxl_fp8_e4m3fn_scaled.safetensors")):
        (shared / kind).mkdir(parents=True)
        safetensors.torch.save_file({"x": torch.zeros(1)}, str(shared / kind / name))
    host = tmp_path / "ComfyUI"
    monkeypatch.setattr(gv, "find_host", lambda: str(host))
    monkeypatch.setattr(gv, "host_folders", lambda h: {
        "diffusion_models": [str(host / "models" / "diffusion_models")],
        "vae": [str(host / "models" / "vae"), str(shared / "vae")],
        "text_encoders": [str(host / "models" / "text_encoders"), str(shared / "text_encoders")]})
    (tmp_path / "base").mkdir()
    (tmp_path / "m.safetensors").write_bytes(b"")      # the model file (not read here)
    names = gv.link_models(str(tmp_path / "base"), gv.parse_args([]), None, str(tmp_path / "m.safetensors"))
    assert names["vae"] == "wan_2.1_vae.safetensors"
    assert str(shared / "vae") in (tmp_path / "base" / "extra_model_paths.yaml").read_text()


def _model_flags(tmp_path):
    from helpers import write_tiny
    write_tiny(tmp_path / "t2v.safetensors", "T2V")
    for name in ("te", "vae"):
        safetensors.torch.save_file({"x": torch.zeros(2)}, str(tmp_path / f"{name}.safetensors"))
    return ["--model_id", str(tmp_path / "t2v.safetensors"), "--text_encoder", str(tmp_path / "te.safetensors"),
            "--vae", str(tmp_path / "vae.safetensors"), "--output", str(tmp_path / "v.mp4")]


class StubServer:
    """ComfyUI as main() sees it, without starting one: the flags it is started with, and one run's answer."""
    args, info = [], None

    def __init__(self, host, base, extra_args=()):
        self.base = base
        StubServer.args = list(extra_args)

    def start(self):
        if isinstance(self.info, Exception):
            raise self.info

    def stop(self):
        pass

    def get(self, path):
        return self.info

    def run(self, prompt):
        os.makedirs(os.path.join(self.base, "output", "headless"))
        open(os.path.join(self.base, "output", "headless", "video_00001_.mp4"), "wb").close()
        return {"status": {"messages": []}, "outputs": {"9": {"text": ["first line\npeak memory 1 GiB"]}}}


def test_offload_and_monitor_memory_reach_comfyui_and_a_comfyui_failure_exits_1(server, monkeypatch, tmp_path,
                                                                               capsys):
    import generate_video_fp8 as gv
    monkeypatch.setenv("COMFYUI_PATH", server.host)
    monkeypatch.setattr(gv, "HostServer", StubServer)
    flags = _model_flags(tmp_path)
    StubServer.info = server.get("/object_info")
    assert gv.main(flags + ["--offload", "--monitor_memory"]) == 0     # (ComfyUI takes --lowvram or --cpu)
    assert "--lowvram" in StubServer.args and "--cpu" not in StubServer.args, StubServer.args
    assert "first line\npeak memory 1 GiB\n" in capsys.readouterr().out     # the whole report
    os.remove(tmp_path / "v.mp4")
    assert gv.main(flags + ["--cpu"]) == 0
    out = capsys.readouterr().out
    assert "first line\n" in out and "peak memory" not in out, out          # its first line
    assert "--lowvram" not in StubServer.args
    os.remove(tmp_path / "v.mp4")
    StubServer.info = RuntimeError("ComfyUI exited at start-up:\nKilled")   # not a refused prompt: exit 1, not 2
    assert gv.main(flags + ["--cpu"]) == 1
    assert "generate_video_fp8: ComfyUI exited at start-up:" in capsys.readouterr().err


def test_an_i2v_image_of_another_size_is_the_picture_skyreels_v2_gives_its_model(tmp_path):
    # SkyReels-V2's generate_video.py (resizecrop) and Image2VideoPipeline (VideoProcessor) on a 56x40 picture for a
    # 48x32 video, as its own code made it (tests/data/skyreels_df_pixels.py): the PNG handed to ComfyUI is that
    # picture, to the level, so core WanImageToVideo and CLIP Vision Encode have nothing left to resize.
    import numpy as np
    from PIL import Image
    from generate_video_fp8 import write_image
    sys.path.insert(0, os.path.join(REPO, "tests", "data"))
    import skyreels_df_pixels as ref
    Image.fromarray(ref.pictures(1, 4, ref.I2V_IMAGE[0])[0].numpy()).save(tmp_path / "photo.png")
    write_image(str(tmp_path / "photo.png"), str(tmp_path / "given.png"), ref.I2V_IMAGE[1])
    given = torch.from_numpy(np.array(Image.open(tmp_path / "given.png"))).float()
    expected = safetensors.torch.load_file(ref.OUT)["i2v_image/pixels"] * 255
    assert given.shape == expected.shape == (32, 48, 3)
    assert torch.equal(given, expected.round()), (given - expected).abs().max()
    # A DF start image keeps its size (Sample Video fits it), turned upright by its EXIF orientation
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (80, 48)).save(tmp_path / "phone.jpg", exif=exif)
    write_image(str(tmp_path / "phone.jpg"), str(tmp_path / "upright.png"))
    assert Image.open(tmp_path / "upright.png").size == (48, 80)
