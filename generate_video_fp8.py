#!/usr/bin/env python3
"""Generate a SkyReels-V2 video headless: runs one of this pack's workflows through a real ComfyUI.

    python generate_video_fp8.py --model_id MODEL [--prompt "..."] [--image START.png] [--output out.mp4] ...
        (all options and their defaults, SkyReels-V2's, Diffusion Forcing's and TeaCache's: --help)

The workflow follows from the model's tensors (I2V with --image: skyreels_i2v_fp8_sage.json; DF model or any DF
flag: skyreels_df_long_video.json; else skyreels_t2v_fp8_sage.json), with nodes added for the flags that need them.
With no --model_id it runs the DF workflow on an embedded tiny model on the CPU (random conditioning stands in for
umt5-xxl): noise, but every node runs.
ComfyUI is found as the tests find it ($COMFYUI_PATH, the ComfyUI this pack is in, ~/ComfyUI) and started on
127.0.0.1 with a temporary base folder. Exit status: 0 done, 2 bad input or no ComfyUI, 1 generation failed.
"""
import argparse
import contextlib
import functools
import json
import mimetypes
import os
import random
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

REPO = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, REPO)
PACK = "ComfyUI-SkyReels-FP8"
# What PyTorch says when ComfyUI, started without --cpu, finds no GPU (its traceback's last line).
NO_GPU = ("Found no NVIDIA driver", "Torch not compiled with CUDA enabled", "No CUDA GPUs are available")
# ComfyUI on 127.0.0.1, never through a proxy: urllib takes one from HTTP_PROXY, or on Windows from the system's
# settings, whose usual "<local>" exception leaves 127.0.0.1 out.
OPEN = urllib.request.build_opener(urllib.request.ProxyHandler({})).open
DEFAULT_HOST = os.path.join(os.path.expanduser("~"), "ComfyUI")
RESOLUTIONS = {"540P": (960, 544), "720P": (1280, 720)}
# SkyReels-V2's generate_video_df.py defaults (its overlap_history has none; 17 is what its README uses).
DF_DEFAULTS = dict(ar_step=0, causal_block_size=1, base_num_frames=97, overlap_history=17, addnoise_condition=0)
DF_INPUTS = ("end_image", "video_path")     # files only Diffusion Forcing takes
PATH_FLAGS = ("model_path", "image", *DF_INPUTS, "output", "outdir", "text_encoder", "vae", "clip_vision")
SIZE_FLAGS = dict(resolution="540P", num_frames=97, inference_steps=30)
# The widgets that ComfyUI names when it refuses a value, and the flags that set them.
FLAG_OF = dict(cfg="--guidance_scale", steps="--inference_steps", frames="--num_frames", shift="--shift",
               fps="--fps", seed="--seed", workers="--workers", start_image="--image", prefix_video="--video_path",
               end_image="--end_image", **{flag: "--" + flag for flag in DF_DEFAULTS})
# The demo's long video, small and asynchronous: 57 frames in windows of 37 overlapping by 17, causal blocks of 5.
DEMO = dict(width=64, height=64, frames=57, steps=4, ar_step=5, causal_block_size=5, base_num_frames=37,
            overlap_history=17, addnoise_condition=20)


def is_host(path):
    return all(os.path.exists(os.path.join(path, p)) for p in ("main.py", "nodes.py", "comfy", "folder_paths.py"))


def find_host():
    """$COMFYUI_PATH, else the ComfyUI this pack sits in (ComfyUI/custom_nodes/<pack>), else ~/ComfyUI."""
    env = os.environ.get("COMFYUI_PATH")
    if env:
        if not is_host(env):
            raise RuntimeError(f"COMFYUI_PATH={env} is not a ComfyUI folder (no main.py / comfy/)"
                               + (f"; {desktop_advice(env)}" if is_desktop(env) else ""))
        return os.path.abspath(env)
    parent = os.path.dirname(os.path.dirname(REPO))
    if os.path.basename(os.path.dirname(REPO)) == "custom_nodes" and is_host(parent):
        return parent
    return DEFAULT_HOST if is_host(DEFAULT_HOST) else None


def is_desktop(path):
    """Whether `path` is the folder ComfyUI Desktop was installed to: custom_nodes, models and its .venv, with
    ComfyUI's code inside the app instead (Comfy-Org/desktop runs resources/ComfyUI/main.py --base-directory it)."""
    return all(os.path.isdir(os.path.join(path, p)) for p in (".venv", "models", "custom_nodes"))


def desktop_advice(path):
    inside = ("/Applications/ComfyUI.app/Contents/Resources/ComfyUI" if sys.platform == "darwin" else
              "the resources\\ComfyUI folder of the app's install folder")   # Electron's resources folder
    return (f"{path} is ComfyUI Desktop's, whose ComfyUI is inside the app: set COMFYUI_PATH to {inside}, and give "
            "the model files' paths (--model_id, --text_encoder, --vae, and for I2V --clip_vision)")


# What ComfyUI loads of this pack (never a clone's venv, models or videos).
PACK_FILES = ("__init__.py", "pyproject.toml", "requirements.txt", "nodes", "quant", "attention", "sampling",
              "workflows", "subgraphs")


def install_copy(dst):
    def left_out(folder, names):    # at the top only what PACK_FILES names; nowhere a __pycache__
        return [n for n in names if n == "__pycache__" or (folder == REPO and n not in PACK_FILES)]
    shutil.copytree(REPO, dst, ignore=left_out)


class HostServer:
    """ComfyUI's main.py on a free loopback port with `base` as its base folder (this pack copied into its
    custom_nodes unless install_pack is False)."""

    def __init__(self, host, base, extra_args=(), install_pack=True):
        self.host, self.base, self.extra_args = host, base, list(extra_args)
        for sub in ("custom_nodes", "models/diffusion_models", "input", "output", "user"):
            os.makedirs(os.path.join(base, sub), exist_ok=True)
        if install_pack:   # a copy, not a link: Windows allows links only to admins or in Developer Mode
            install_copy(os.path.join(base, "custom_nodes", PACK))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = os.path.join(base, "comfyui.log")
        self.proc = None

    def start(self, timeout=300):
        cmd = [sys.executable, "main.py", "--listen", "127.0.0.1", "--port", str(self.port), "--base-directory",
               self.base, "--database-url", "sqlite:///:memory:", "--disable-auto-launch", *self.extra_args]
        self.log = open(self.log_path, "wb")
        # UTF-8 whatever the console's code page: what the host logs (a user's file name, a prompt) always encodes
        env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
        self.proc = subprocess.Popen(cmd, cwd=self.host, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                log = self.read_log()
                no_gpu = [line for line in log.splitlines() if any(s in line for s in NO_GPU)]
                if no_gpu and "--cpu" not in self.extra_args:
                    todo = "leave out --offload and add --cpu" if "--lowvram" in self.extra_args else "add --cpu"
                    raise BadInput(f"ComfyUI found no GPU ({no_gpu[-1].strip()}); {todo} to run on the CPU "
                                   "(slow), or install a PyTorch with CUDA")
                raise RuntimeError(f"ComfyUI exited at start-up:\n{log[-4000:]}")
            try:
                self.get("/system_stats")
                return self
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.5)
        raise RuntimeError(f"ComfyUI did not answer in {timeout} s:\n{self.read_log()[-4000:]}")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if self.proc:
            self.log.close()

    def read_log(self):
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def get(self, path):
        with OPEN(self.url + path, timeout=60) as r:
            return json.loads(r.read())

    def post(self, path, data):
        req = urllib.request.Request(self.url + path, data=json.dumps(data).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with OPEN(req, timeout=60) as r:
                return r.status, json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def run(self, prompt, timeout=None):
        """Queue an API-format prompt and wait for it; returns its history entry (status, outputs)."""
        status, body = self.post("/prompt", {"prompt": prompt, "client_id": "headless"})
        if status != 200:
            reasons = [f"{node.get('class_type')}: {e.get('message')}: {e.get('details')}"
                       for node in body.get("node_errors", {}).values() for e in node.get("errors", [])]
            if reasons:
                raise RuntimeError(f"ComfyUI refused the prompt's inputs: {'; '.join(reasons)}")
            raise RuntimeError(f"ComfyUI refused the prompt ({status}): {json.dumps(body)[:3000]}")
        pid = body["prompt_id"]
        deadline = None if timeout is None else time.time() + timeout
        while deadline is None or time.time() < deadline:
            try:
                hist = self.get(f"/history/{pid}")
            except OSError:       # it is gone (killed for lack of memory?) or busy: poll() tells
                hist = {}
            if pid in hist:
                return hist[pid]
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited (code {self.proc.returncode}; a negative code: killed, e.g. by "
                                   f"the system for lack of memory, try --offload). Its log ends:\n"
                                   f"{self.read_log()[-4000:]}")
            time.sleep(0.25)
        raise TimeoutError(f"prompt {pid} did not finish in {timeout} s")


def check_pack_loaded(server, object_info):
    """BadInput with the reason ComfyUI logged for not loading this pack (an old ComfyUI, a missing requirement)."""
    if "SkyReelsSampleVideo" in object_info:
        return
    log = server.read_log()
    # "Cannot import <pack> module for custom nodes: <why>", "Error while calling comfy_entrypoint in <pack>: <why>"
    why = [line.split(PACK, 1)[1].partition(": ")[2] for line in log.splitlines()
           if PACK in line and ("module for custom nodes: " in line or "comfy_entrypoint in " in line)]
    reason = why[-1] if why else "its log ends:\n" + log[-3000:]
    raise BadInput(f"ComfyUI ({server.host}) did not load this pack: {reason}")


def error_of(entry):
    """The execution_error message of a finished prompt, or None if it succeeded."""
    return next((data for kind, data in entry["status"].get("messages", []) if kind == "execution_error"), None)


def write_tiny_vae(path):
    """A Wan 2.1 VAE of the real structure at width 8, seeded random weights, built with the host's own class."""
    import comfy.ldm.wan.vae
    import safetensors.torch
    import torch

    module = comfy.ldm.wan.vae.WanVAE(dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                                      temperal_downsample=[False, True, True])
    g, sd = torch.Generator().manual_seed(0), {}
    for key, value in module.state_dict().items():
        if key.endswith("gamma"):
            sd[key] = torch.ones(value.shape)
        elif value.ndim >= 2:
            sd[key] = torch.randn(value.shape, generator=g) / value[0].numel() ** 0.5
        else:
            sd[key] = torch.zeros(value.shape)
    safetensors.torch.save_file(sd, path)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model_id", "--model_path", dest="model_path",
                   help="SkyReels-V2 model: a file, a downloaded folder, a name as Load FP8 SkyReels Model lists it "
                        "(ComfyUI's diffusion_models folders, extra_model_paths.yaml's too), or a Hugging Face id "
                        "already downloaded (into models/diffusion_models/<name> or the Hugging Face cache; nothing "
                        "is downloaded). None: the tiny demo")
    p.add_argument("--prompt", default="A graceful white swan swimming in a serene lake at dawn.",
                   help="default: %(default)s")
    p.add_argument("--negative_prompt", help="default: the workflow's")
    p.add_argument("--resolution", choices=list(RESOLUTIONS), help="default: 540P (the demo: 64x64)")
    p.add_argument("--num_frames", type=int, help="default: 97 (the demo: 57); rounded down to 4k+1 frames, as "
                                                   "SkyReels-V2 makes them")
    p.add_argument("--image", help="start image (I2V model: image to video; DF model: first frame); a portrait "
                                   "image makes a portrait video, as SkyReels-V2's scripts do")
    p.add_argument("--end_image", help="Diffusion Forcing: the frame the video leads to (causal_block_size 1)")
    p.add_argument("--video_path", help="Diffusion Forcing: a video to continue; the output is that video, then the "
                                        "new frames (SkyReels-V2's extend_video)")
    p.add_argument("--inference_steps", type=int, help="default: 30 (the demo: 4)")
    p.add_argument("--guidance_scale", type=float, help="cfg (default: the workflow's, 6.0; I2V 5.0)")
    p.add_argument("--shift", type=float, help="flow shift (default: the workflow's, 8.0; I2V 3.0)")
    p.add_argument("--fps", type=int, default=24,
                   help="what DF-1.3B is told, and the video file's rate (default: 24)")
    p.add_argument("--seed", type=int, help="default: a random one, as SkyReels-V2's scripts (it names the video "
                                            "file); the demo: 42")
    p.add_argument("--cpu_noise", action="store_true",
                   help="draw the seed's noise on the CPU, as ComfyUI's KSampler: the same noise on every machine "
                        "(default: on the GPU, as SkyReels-V2's scripts, so --seed starts from their noise on a GPU "
                        "with the same number of multiprocessors)")
    p.add_argument("--use_fp8", dest="fp8", action="store_true", default=True, help="FP8 weights (default)")
    p.add_argument("--no-fp8", "--no_fp8", dest="fp8", action="store_false", help="bf16 weights")
    p.add_argument("--use_sage_attention", action="store_true", help="8-bit SageAttention (Patch SageAttention)")
    p.add_argument("--offload", action="store_true",
                   help="start ComfyUI with --lowvram (weights streamed to the GPU; its Dynamic VRAM, the default on "
                        "NVIDIA GPUs, does that anyway)")
    p.add_argument("--monitor_memory", action="store_true",
                   help="print the whole report: peak memory, time per model call")
    p.add_argument("--teacache", action="store_true", help="TeaCache (SkyReels-V2): skip model passes that would "
                                                           "change little")
    p.add_argument("--teacache_thresh", type=float, default=0.2,
                   help="with --teacache: higher is faster and further from the video without it (default 0.2; "
                        "SkyReels-V2's figures: 0.1 about 2x, 0.2 about 3x)")
    p.add_argument("--use_ret_steps", action="store_true",
                   help="with --teacache: retention steps (SkyReels-V2: faster and better)")
    p.add_argument("--prompt_enhancer", action="store_true", help="not available here (it says why)")
    p.add_argument("--output", help="MP4 file to write (default: OUTDIR/<workflow>_<seed>_<time>.mp4)")
    p.add_argument("--outdir", default="video_out",
                   help="folder of the video when --output is not given (default: video_out)")
    for flag, default in DF_DEFAULTS.items():
        source = ("SkyReels-V2's README commands; its script has none and asks for one past base_num_frames"
                  if flag == "overlap_history" else "SkyReels-V2")
        p.add_argument("--" + flag, type=int, help=f"Diffusion Forcing (default: {default}, as {source})")
    p.add_argument("--causal_attention", action="store_true",
                   help="Diffusion Forcing: causal attention, as SkyReels-V2")
    p.add_argument("--use_usp", action="store_true",
                   help="several GPUs through Ray: Parallel Config (cfg parallel, then Ulysses/ring); see README")
    p.add_argument("--workers", type=int, default=2, help="with --use_usp: GPUs, one worker each (default 2)")
    p.add_argument("--text_encoder",
                   help="umt5-xxl file (default: models/text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors)")
    p.add_argument("--vae", help="Wan 2.1 VAE file (default: models/vae/wan_2.1_vae.safetensors)")
    p.add_argument("--clip_vision",
                   help="CLIP vision file for I2V (default: models/clip_vision/clip_vision_h.safetensors)")
    p.add_argument("--cpu", action="store_true", help="run ComfyUI on the CPU (the demo always does)")
    args = p.parse_args(argv)
    # The demo keeps its small sizes except those given here; a model takes SkyReels-V2's defaults.
    args.given = {flag for flag in SIZE_FLAGS if getattr(args, flag) is not None}
    if args.seed is None:       # SkyReels-V2's scripts draw one in the same range; the demo stays reproducible
        args.seed = 42 if args.model_path is None else random.randrange(4294967294)
    for flag, default in SIZE_FLAGS.items():
        setattr(args, flag, default if getattr(args, flag) is None else getattr(args, flag))
    return args


def pick_workflow(args, info):
    # `is not`, as 0 == False: --ar_step 0 (SkyReels-V2's synchronous default) asks for Diffusion Forcing too
    given = [f"--{f}" for f in (*DF_DEFAULTS, "causal_attention", *DF_INPUTS)
             if getattr(args, f) is not None and getattr(args, f) is not False]
    if info is None:    # the demo model is DF-1.3B-like
        return "skyreels_df_long_video.json"
    if info.variant == "I2V":
        if not args.image:
            raise BadInput(f"--model_id: {info.describe()} is an image-to-video model; give --image")
        if given:
            raise BadInput(f"{', '.join(given)}: Diffusion Forcing options; {info.describe()} samples in standard "
                           "mode (use a DF model)")
        return "skyreels_i2v_fp8_sage.json"
    # DF-14B has the same tensors as T2V-14B: a start image or a DF flag asks for Diffusion Forcing.
    if info.variant == "DF" or args.image or given:
        return "skyreels_df_long_video.json"
    return "skyreels_t2v_fp8_sage.json"


def check_flags(args):
    """What SkyReels-V2's scripts refuse, or would ignore, refused here before ComfyUI starts."""
    if args.prompt_enhancer:
        raise BadInput("--prompt_enhancer: SkyReels-V2's prompt enhancer (Qwen2.5-32B-Instruct) does not run in "
                       "ComfyUI; run its skyreels_v2_infer/pipelines/prompt_enhancer.py and pass what it prints as "
                       "--prompt")
    for flag in PATH_FLAGS:     # cmd and PowerShell read "D:\out\" as D:\out" and the rest of the line
        if os.name == "nt" and '"' in (getattr(args, flag) or ""):
            raise BadInput(f'--{flag}: {getattr(args, flag)}: a folder ending in \\" takes the quote and what follows '
                           'into the name; leave out the last backslash')
    if args.model_path is not None and not args.model_path.strip():    # e.g. an unset shell variable
        raise BadInput("--model_id: empty; give a model file, folder or Hugging Face id (none: the demo)")
    for flag in ("image", *DF_INPUTS):
        path = getattr(args, flag)
        if path and not os.path.isfile(path):
            raise BadInput(f"--{flag}: {path} " + ("is a folder; give a file" if os.path.isdir(path) else "not found"))
    if args.image and args.video_path:
        raise BadInput("--image, --video_path: give one (a first frame, or a video to continue)")
    if args.offload and args.cpu:   # ComfyUI refuses --lowvram beside --cpu, and exited at start-up
        raise BadInput("--offload, --cpu: give one (--offload streams the weights to a GPU, --cpu runs without one)")
    if args.end_image and args.causal_block_size not in (None, 1):
        raise BadInput(f"--end_image: needs --causal_block_size 1, not {args.causal_block_size} (the end image is "
                       "one latent frame)")
    for flag in ("guidance_scale", "shift"):
        if getattr(args, flag) is not None and not 0 <= getattr(args, flag) <= 100:   # NaN too
            raise BadInput(f"--{flag}: {getattr(args, flag)}; give a number from 0 to 100 (the node's range)")
    if not 0 <= args.teacache_thresh <= 1:
        raise BadInput(f"--teacache_thresh: {args.teacache_thresh} is outside 0 to 1 (SkyReels-V2 uses 0.1 to 0.3)")
    if args.inference_steps < 1:
        raise BadInput(f"--inference_steps: {args.inference_steps}; give 1 or more (SkyReels-V2 uses 30 to 50)")
    for flag in ("num_frames", "base_num_frames", "overlap_history"):
        n = getattr(args, flag)
        if n is not None and n < 1:
            raise BadInput(f"--{flag}: {n} frames; give 1 or more")
        if n is not None and (n - 1) % 4:   # SkyReels-V2 makes (n - 1) // 4 + 1 latent frames of any n
            setattr(args, flag, (n - 1) // 4 * 4 + 1)
            print(f"--{flag} {n}: {getattr(args, flag)} frames, as SkyReels-V2 makes them (4k+1)")


def read_source(args):
    """(width, height, frames) of --video_path or --image, or None: SkyReels-V2 makes a portrait video from a portrait
    one, and can continue a video of at least overlap_history frames."""
    if args.video_path:
        return read_video(args.video_path, args.overlap_history or DF_DEFAULTS["overlap_history"])
    return (*open_image(args.image, "image").size, 1) if args.image else None


def open_image(path, flag):
    """The picture, RGB and upright by its EXIF orientation (as ComfyUI's Load Image and SkyReels-V2 turn it)."""
    from PIL import Image, ImageOps
    try:
        with Image.open(path) as picture:
            return ImageOps.exif_transpose(picture).convert("RGB")
    except Image.DecompressionBombError as e:    # PIL's guard, also for a damaged header that claims such a size
        raise BadInput(f"--{flag}: {path} is too large to read ({e}); give a smaller image") from None
    # OSError: PIL's UnidentifiedImageError is one, and a truncated file fails when its pixels are read; ValueError:
    # a PNG whose text or ICC chunks decompress past PIL's limits
    except (OSError, ValueError) as e:
        raise BadInput(f"--{flag}: {path} is not an image ({e})") from None


def read_video(path, overlap):
    """(width, height, frames) as ComfyUI's Load Video gives them: turned by the rotation a phone records, without
    the frames before time 0 that an mp4 edit list hides."""
    import av
    if not (mimetypes.guess_type(path, strict=False)[0] or "").startswith("video/"):
        raise BadInput(f"--video_path: {path}: ComfyUI's Load Video takes video files (.mp4, .webm, .mov, .mkv, ...)")
    size, frames = None, 0
    try:
        with av.open(path) as container:
            for frame in container.decode(container.streams.video[0]):
                if frame.pts is not None and frame.pts < 0:
                    continue
                if size is None:
                    size = (frame.height, frame.width) if frame.rotation % 180 else (frame.width, frame.height)
                frames += 1
    except (av.FFmpegError, IndexError) as e:
        raise BadInput(f"--video_path: {path} is not a video ComfyUI can read ({e})") from None
    except UnicodeDecodeError as e:     # tags written in another encoding: ComfyUI's Load Video fails on them too
        raise BadInput(f"--video_path: {path}: its metadata is not UTF-8 text ({e.object[:40]!r}), which ComfyUI "
                       "cannot read either; copy the video without it: ffmpeg -i IN -map_metadata -1 -c copy OUT"
                       ) from None
    if not overlap <= frames <= overlap + 4096:     # core Image From Batch takes up to 4096 frames
        todo = f"takes up to {overlap + 4096}: trim it" if frames > overlap else (
            "needs that many: give a longer video, or a smaller --overlap_history")
        raise BadInput(f"--video_path: {frames} frames; a continuation starts from its last overlap_history "
                       f"({overlap}), and this script {todo}")
    return (*size, frames)


def find_model(given, host):
    """--model_id: a file or folder, a name as Load FP8 SkyReels Model lists it, else a Hugging Face id (as
    SkyReels-V2's) already downloaded into ComfyUI's models/diffusion_models/<name> or the Hugging Face cache."""
    if os.path.exists(given):
        return check_folder(given)
    folders = host_folders(host)["diffusion_models"]
    listed = [p for p in (os.path.join(f, *given.replace("\\", "/").strip("/").split("/")) for f in folders)
              if os.path.exists(p)]
    if listed:
        return check_folder(listed[0])
    owner, _, name = given.partition("/")
    if not (owner and name) or "/" in name:
        raise BadInput(f"--model_id: {given} not found: give a file or folder, a name as Load FP8 SkyReels Model "
                       f"lists it (looked in {' and '.join(folders)}), or a Hugging Face id (owner/name)")
    places = [os.path.join(host, "models", "diffusion_models", name)]    # first: where the hf command below puts it
    places += [p for p in (os.path.join(f, name) for f in folders) if p not in places]
    hf_home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    repo = os.path.join(os.environ.get("HF_HUB_CACHE") or os.path.join(hf_home, "hub"), f"models--{owner}--{name}")
    try:
        with open(os.path.join(repo, "refs", "main")) as f:
            places.append(os.path.join(repo, "snapshots", f.read().strip()))
    except OSError:
        pass
    for place in places:
        if os.path.isdir(place):
            return check_folder(place)
    looked = places + ([] if any(p.startswith(repo) for p in places) else [repo])     # the cache, not there either
    local_dir = f'"{places[0]}"' if os.name == "nt" else shlex.quote(places[0])    # as cmd / PowerShell or sh take it
    raise BadInput(f"--model_id: {given} is not downloaded (looked in {' and '.join(looked)}; this script downloads "
                   f"nothing): hf download {given} --exclude \"*.pth\" --local-dir {local_dir}")


def check_folder(path):
    """A folder is one model as the loader lists it: a release (shards and their index), or one file."""
    from quant.checkpoint import is_release

    if os.path.isdir(path):
        inside = os.listdir(path)
        single = [f for f in inside if f.endswith(".safetensors")]
        if not is_release(inside) and len(single) > 1:     # none: the reader names what the folder holds
            raise BadInput(f"--model_id: {path} holds {len(single)} .safetensors files and no shard index "
                           "(*.safetensors.index.json): give one file, or download the folder with its index")
    return path


@functools.lru_cache(maxsize=None)   # one host, asked by the model lookup and the file links: one subprocess
def host_folders(host):
    """{kind: folders} as the host's own folder_paths lists them for its main.py: its models/ folders, then what its
    extra_model_paths.yaml adds (users keep models shared between installs there); models/<kind> if it cannot say."""
    kinds = ("diffusion_models", "text_encoders", "vae", "clip_vision")
    code = ("import json, os, sys; sys.path.insert(0, os.getcwd()); import folder_paths\n"
            "from utils.extra_config import load_extra_path_config\n"
            "yaml = os.path.join(os.getcwd(), 'extra_model_paths.yaml')\n"
            "if os.path.isfile(yaml): load_extra_path_config(yaml)\n"
            f"print(json.dumps({{k: folder_paths.get_folder_paths(k) for k in {kinds!r}}}))")
    try:
        out = subprocess.run([sys.executable, "-c", code], cwd=host, capture_output=True, text=True, timeout=60,
                             encoding="utf-8")
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return {k: [os.path.join(host, "models", k)] for k in kinds}


def inspect_model(path):
    """The model's ModelInfo, read from its tensors (BadInput if it is not a SkyReels-V2 model)."""
    from quant import Checkpoint, CheckpointError

    try:
        with Checkpoint(path) as ckpt:
            return ckpt.model_info()
    except (CheckpointError, FileNotFoundError, ValueError) as e:
        raise BadInput(f"--model_id: {e}") from None


class BadInput(Exception):
    pass


def link_models(base, args, info, model):
    """extra_model_paths.yaml pointing ComfyUI at the given files; returns {widget: file name}."""
    from quant.checkpoint import CheckpointError, check_safetensors, is_release
    host = find_host() or DEFAULT_HOST
    wanted = [("diffusion_models", "model_id", None),
              ("text_encoders", "text_encoder", "umt5_xxl_fp8_e4m3fn_scaled.safetensors"),
              ("vae", "vae", "wan_2.1_vae.safetensors")]
    if args.image and info.variant == "I2V":
        wanted.append(("clip_vision", "clip_vision", "clip_vision_h.safetensors"))
    files, folders = {}, host_folders(host)
    for kind, flag, default in wanted:
        given = model if kind == "diffusion_models" else getattr(args, flag)
        # as that ComfyUI finds a file: its models folder, then the folders its extra_model_paths.yaml adds
        found = [os.path.join(f, default) for f in folders.get(kind, []) if default and
                 os.path.isfile(os.path.join(f, default))]
        files[kind] = os.path.abspath(given) if given else (found or [os.path.join(host, "models", kind, default)])[0]
        if not os.path.exists(files[kind]):
            raise BadInput(f"{kind}: {files[kind]} not found; pass --{flag} or put the file there")
        if kind != "diffusion_models" and files[kind].lower().endswith((".safetensors", ".sft")):   # as ComfyUI reads
            # a truncated download (umt5-xxl is 6.7 GB) is named now, not after ComfyUI has loaded the model
            try:
                check_safetensors(files[kind])
            except CheckpointError as e:
                raise BadInput(f"--{flag}: {e}") from None
    # Quoted (a folder may hold " #" or ": ") and UTF-8, as ComfyUI reads it, not this OS's code page
    lines = ["headless:"] + [f"  {kind}: {json.dumps(os.path.dirname(path), ensure_ascii=False)}"
                             for kind, path in files.items()]
    with open(os.path.join(base, "extra_model_paths.yaml"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    names = {kind: os.path.basename(path) for kind, path in files.items()}
    folder = files["diffusion_models"]
    if os.path.isdir(folder):    # as the loader lists it: a release as "name/", else by its one file
        inside = os.listdir(folder)
        single = [f for f in inside if f.endswith(".safetensors")]     # one (check_folder)
        names["diffusion_models"] = (names["diffusion_models"] + "/" if is_release(inside)
                                     else os.path.join(names["diffusion_models"], single[0]))
    return names


def build_prompt(workflow, object_info, args, names, demo, source=None):
    """The workflow in API form with the flags' values, and the nodes some flags add (`connect_flags`); `source`:
    read_source's (width, height, frames)."""
    from workflows.api import ui_to_api

    prompt = ui_to_api(workflow, object_info)
    width, height = video_size(args, source)
    sizes = dict(width=width, height=height, frames=args.num_frames, steps=args.inference_steps)
    if demo:
        # its causal blocks of 5 latent frames fit its own windows, not any other --num_frames
        # (a start image is one latent frame: a causal block of 5 cannot start from it)
        own = dict(DEMO, causal_block_size=1 if args.image or args.end_image or "num_frames" in args.given else
                   DEMO["causal_block_size"])
        given = {"resolution": ("width", "height"), "num_frames": ("frames",), "inference_steps": ("steps",)}
        sizes.update({k: v for k, v in own.items() if not any(k in given[f] for f in args.given)})
    for node_id, node in list(prompt.items()):
        kind, inputs = node["class_type"], node["inputs"]
        if kind == "SkyReelsFP8ModelLoader":
            inputs["model_name"] = names["diffusion_models"]
            inputs["weight_format"] = "auto" if args.fp8 else "bf16"
        elif kind == "SkyReelsPatchSageAttention":
            inputs["mode"] = "auto" if args.use_sage_attention else "disabled"
        elif kind == "SkyReelsSampleVideo":
            inputs.update(width=sizes["width"], height=sizes["height"], frames=sizes["frames"], steps=sizes["steps"],
                          seed=args.seed, fps=args.fps,
                          noise="cpu (ComfyUI)" if args.cpu_noise else "gpu (SkyReels-V2)")
            inputs.update({k: v for k, v in (("cfg", args.guidance_scale), ("shift", args.shift)) if v is not None})
            if inputs["mode"] == "diffusion forcing":         # its widgets are under mode, a dynamic combo
                for flag in DF_DEFAULTS:
                    given = getattr(args, flag)
                    inputs["mode." + flag] = given if given is not None else sizes.get(flag, DF_DEFAULTS[flag])
                inputs["mode.causal_attention"] = args.causal_attention
        elif kind == "WanImageToVideo":
            inputs.update(width=sizes["width"], height=sizes["height"], length=sizes["frames"])
        elif kind == "LoadImage" and args.image:
            inputs["image"] = input_name(args, "image")
        elif kind == "CLIPLoader" and not demo:
            inputs["clip_name"] = names["text_encoders"]
        elif kind == "VAELoader":
            inputs["vae_name"] = names["vae"]
        elif kind == "CLIPVisionLoader":
            inputs["clip_name"] = names["clip_vision"]
        elif kind == "CLIPTextEncode":
            negative = node_id == negative_encoder(prompt)
            if demo:   # no tiny umt5-xxl exists: random conditioning of its shape, read by a core node
                node.update(class_type="LoadTrainingDataset", inputs={"folder_name": DEMO_CONDITIONING[negative]})
            elif negative and args.negative_prompt is not None:
                inputs["text"] = args.negative_prompt
            elif not negative:
                inputs["text"] = args.prompt
        elif kind == "SaveVideo":
            inputs["filename_prefix"] = "headless/video"
    connect_flags(prompt, args, sizes, source)
    if demo:
        prompt = {k: v for k, v in prompt.items() if v["class_type"] != "CLIPLoader"}
        for node in prompt.values():   # Load Training Dataset gives (latents, conditioning)
            for name, link in node["inputs"].items():
                if isinstance(link, list) and prompt[link[0]]["class_type"] == "LoadTrainingDataset":
                    node["inputs"][name] = [link[0], 1]
    return prompt


def video_size(args, source):
    """(width, height): --resolution's, portrait for a portrait --image / --video_path as SkyReels-V2's scripts."""
    width, height = RESOLUTIONS[args.resolution]
    return (height, width) if source and source[1] > source[0] else (width, height)


def input_name(args, flag):
    """The name --image / --end_image / --video_path get in ComfyUI's input folder (two files may share a name);
    the images are written as PNG (`write_image`)."""
    name = os.path.basename(getattr(args, flag))
    return f"{flag}_{os.path.splitext(name)[0]}.png" if flag in ("image", "end_image") else f"{flag}_{name}"


def write_image(src, dst, size=None, flag="image"):
    """An image as SkyReels-V2 reads it (PIL, upright by its EXIF orientation, RGB), written as PNG: ComfyUI's Load
    Image decodes a JPEG through ffmpeg, a few levels away from PIL. With `size` (I2V) as SkyReels-V2 hands it to
    its model: cropped to the video's aspect (its resizecrop), then PIL's Lanczos resize (its VideoProcessor), so
    core WanImageToVideo takes it as it is where it would resize it bilinearly."""
    from PIL import Image
    from sampling.schedule import aspect_crop
    picture = open_image(src, flag)
    (pw, ph), (w, h) = picture.size, size or picture.size
    if (pw, ph) != (w, h):
        picture = picture.crop(aspect_crop(pw, ph, w, h)).resize((w, h), Image.LANCZOS)
    picture.save(dst, "PNG")


def connect_flags(prompt, args, sizes, source):
    """Nodes for the flags that feed Sample Video more: TeaCache, Parallel Config, start / end image (DF), a video
    to continue."""
    sample = next(n["inputs"] for n in prompt.values() if n["class_type"] == "SkyReelsSampleVideo")
    vae = next([i, 0] for i, n in prompt.items() if n["class_type"] == "VAELoader")
    if args.teacache:
        prompt["teacache"] = {"class_type": "SkyReelsTeaCache", "inputs": {
            "model": sample["model"], "threshold": args.teacache_thresh, "retention_steps": args.use_ret_steps}}
        sample["model"] = ["teacache", 0]
    if args.use_usp:
        prompt["parallel"] = {"class_type": "SkyReelsParallelConfig",
                              "inputs": {"workers": args.workers, "device": "auto", "ray_address": "",
                                         "cfg_parallel": True, "keep_workers": True, "ring_degree": 0}}
        sample["parallel"] = ["parallel", 0]
    if sample["mode"] != "diffusion forcing":
        return
    for flag, slot in (("image", "start_image"), ("end_image", "end_image")):
        if getattr(args, flag):
            prompt[slot] = {"class_type": "LoadImage", "inputs": {"image": input_name(args, flag)}}
            sample[slot], sample["vae"] = [slot, 0], vae
    if args.video_path:
        continue_video(prompt, sample, args, sizes, source[2], vae)


def continue_video(prompt, sample, args, sizes, frames, vae):
    """--video_path as SkyReels-V2's extend_video: the video resized to the output size (stretched, as its reader
    does) is Sample Video's prefix_video, and the saved video is all of it, then the new frames. Its reader resizes
    with ffmpeg's bicubic, which widens its filter when shrinking and gives 8-bit RGB: core's lanczos (PIL, 8-bit)
    comes closer to it than core's bicubic on every clip measured (bench/preprocess.py)."""
    prompt["video"] = {"class_type": "LoadVideo", "inputs": {"file": input_name(args, "video_path")}}
    prompt["video_frames"] = {"class_type": "GetVideoComponents", "inputs": {"video": ["video", 0]}}
    prompt["video_sized"] = {"class_type": "ImageScale", "inputs": {
        "image": ["video_frames", 0], "upscale_method": "lanczos", "width": sizes["width"],
        "height": sizes["height"], "crop": "disabled"}}
    sample["prefix_video"], sample["vae"] = ["video_sized", 0], vae
    head = frames - sample["mode.overlap_history"]     # Sample Video's images start with the last overlap_history
    if head > 0:
        create = next(n["inputs"] for n in prompt.values() if n["class_type"] == "CreateVideo")
        prompt["video_head"] = {"class_type": "ImageFromBatch",
                                "inputs": {"image": ["video_sized", 0], "batch_index": 0, "length": head}}
        prompt["whole_video"] = {"class_type": "BatchImagesNode", "inputs": {
            "images.image0": ["video_head", 0], "images.image1": create["images"]}}
        create["images"] = ["whole_video", 0]


def negative_encoder(prompt):
    """The id of the CLIPTextEncode feeding a 'negative' input."""
    for node in prompt.values():
        link = node["inputs"].get("negative")
        if isinstance(link, list) and prompt[link[0]]["class_type"] == "CLIPTextEncode":
            return link[0]
    return None


LOADER_FLAGS = {"VAELoader": ("vae", "--vae"), "CLIPLoader": ("text_encoders", "--text_encoder"),
                "CLIPVisionLoader": ("clip_vision", "--clip_vision")}


def node_failure(err, object_info, names):
    """One line for a node that failed while the video was made: the node as the graph names it and, for a core
    loader (whose message does not say), the file it read and its flag."""
    node = object_info.get(err["node_type"], {}).get("display_name") or err["node_type"]
    message = " ".join(err["exception_message"].split())      # one line, as the script's other errors
    if message.startswith(f"{node}: "):     # this pack's nodes name themselves, and their widgets
        return with_flags(message)
    kind, flag = LOADER_FLAGS.get(err["node_type"], (None, None))
    read = f" ({flag} {names[kind]})" if kind in names else ""
    return f"{node}{read} failed: {message}"


def with_flags(message):
    """A message naming widgets, with the flags that set them here."""
    flags = [f"{w} is {f}" for w, f in FLAG_OF.items() if re.search(rf"\b{w}\b", message)]
    return message + (f" (here {', '.join(flags)})" if flags else "")


def error(message, code):
    print(f"generate_video_fp8: {message}", file=sys.stderr)
    return code


def main(argv=None):
    args = parse_args(argv)
    demo = args.model_path is None
    try:
        host = find_host()
    except RuntimeError as e:
        return error(e, 2)
    if host is None:
        installed_in = os.path.dirname(os.path.dirname(REPO))    # .../custom_nodes/<pack>
        return error("no ComfyUI found: " + (
            desktop_advice(installed_in) if is_desktop(installed_in) else
            "set COMFYUI_PATH to a ComfyUI folder, install this pack in ComfyUI/custom_nodes, or lay ComfyUI out at "
            "~/ComfyUI (with its requirements installed)"), 2)
    base, server = tempfile.mkdtemp(prefix="skyreels-headless-"), None
    try:
        check_output(args)
        check_flags(args)
        model = None if demo else find_model(args.model_path, host)
        info = None if demo else inspect_model(model)
        name = pick_workflow(args, info)
        # Diffusion Forcing's first latent frame is --image's (Sample Video says so too, but once ComfyUI runs)
        if name == "skyreels_df_long_video.json" and args.image and args.num_frames < 5:
            raise BadInput(f"--num_frames: {args.num_frames} frame is --image's own; give 5 or more (4k+1) to make "
                           "new frames after it")
        source = read_source(args)
        extra = ["--cpu"] if demo or args.cpu else []
        if demo:
            names = prepare_demo(host, base)
            print(f"no --model_id: {name} on the embedded tiny SkyReels-V2 DF model, CPU (random conditioning "
                  "stands in for umt5-xxl; the prompt is not read)")
        else:
            names = link_models(base, args, info, model)
            extra += ["--extra-model-paths-config", os.path.join(base, "extra_model_paths.yaml")]
            extra += ["--lowvram"] if args.offload else []
            print(f"{info.describe()}: {name}")
        os.makedirs(os.path.join(base, "input"))
        # Sample Video crops and resizes DF start / end images itself, as SkyReels-V2's DF script does
        i2v = name == "skyreels_i2v_fp8_sage.json"
        for flag in ("image", "end_image"):
            if getattr(args, flag):
                write_image(getattr(args, flag), os.path.join(base, "input", input_name(args, flag)),
                            video_size(args, source) if i2v else None, flag)
        if args.video_path:
            shutil.copy(args.video_path, os.path.join(base, "input", input_name(args, "video_path")))
        server = HostServer(host, base, extra)      # named first: a kill while it starts still stops it
        server.start()
        with open(os.path.join(REPO, "workflows", name), encoding="utf-8") as f:
            workflow = json.load(f)
        object_info = server.get("/object_info")
        check_pack_loaded(server, object_info)
        prompt = build_prompt(workflow, object_info, args, names, demo, source)
        started = time.time()
        entry = server.run(prompt)
        err = error_of(entry)
        if err:
            return error(node_failure(err, object_info, names), 1)
        report = "".join(text for out in entry["outputs"].values() for text in out.get("text", []))
        video = save_output(base, args, name)
        print(report if args.monitor_memory or demo else report.splitlines()[0])
        print(f"wrote {video} ({time.time() - started:.1f} s)")
        return 0
    except BadInput as e:
        return error(e, 2)
    except RuntimeError as e:     # a prompt ComfyUI refuses names the widgets: bad input too, said with the flags
        if not str(e).startswith("ComfyUI refused the prompt's inputs"):
            return error(e, 1)
        return error(with_flags(str(e)), 2)
    finally:
        if server:
            server.stop()
        shutil.rmtree(base, ignore_errors=True)


DEMO_CONDITIONING = {False: "skyreels_demo_positive", True: "skyreels_demo_negative"}


def write_demo_conditioning(base):
    """Random conditioning of umt5-xxl's shape [1, 8, 4096] as the one-sample datasets core's Load Training
    Dataset reads (metadata.json, shard_00000.pkl)."""
    import torch

    g = torch.Generator().manual_seed(1)
    for name in DEMO_CONDITIONING.values():
        folder = os.path.join(base, "datasets", name)
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "metadata.json"), "w") as f:
            json.dump({"num_samples": 1, "num_shards": 1, "source": "generate_video_fp8.py demo"}, f)
        shard = {"latents": [{"samples": torch.zeros(1, 16, 1, 8, 8)}],
                 "conditioning": [[[torch.randn(1, 8, 4096, generator=g), {}]]]}
        torch.save(shard, os.path.join(folder, "shard_00000.pkl"))


def prepare_demo(host, base):
    """Tiny DF release folder, tiny VAE and the random conditioning, written under the base folder. The model has
    DF-1.3B's width, which TeaCache's coefficients are for, and 2 blocks."""
    models = os.path.join(base, "models")
    from quant import tiny
    tiny.write_release(os.path.join(models, "diffusion_models", "tiny-SkyReels-V2-DF"),
                       tiny.state_dict(tiny.info("DF", dim=1536, ffn_dim=1024), seed=2))
    os.makedirs(os.path.join(models, "vae"), exist_ok=True)
    vae = os.path.join(models, "vae", "tiny_wan_vae.safetensors")
    code = (f"import sys; sys.path[:0] = [{host!r}, {REPO!r}]\nimport comfy.cli_args; comfy.cli_args.args.cpu = True\n"
            f"from generate_video_fp8 import write_tiny_vae; write_tiny_vae({vae!r})")
    subprocess.run([sys.executable, "-c", code], cwd=host, check=True, capture_output=True)
    write_demo_conditioning(base)
    return {"diffusion_models": "tiny-SkyReels-V2-DF/", "vae": "tiny_wan_vae.safetensors"}


def check_output(args):
    """Refuse an --output that exists, that this OS could not name, or a folder that cannot be made, before the
    generation rather than after."""
    from quant.writer import name_problem, writable

    path, flag = (args.output, "--output") if args.output else (os.path.join(args.outdir, "video.mp4"), "--outdir")
    given = args.output or args.outdir
    if args.output and os.path.exists(path):
        raise BadInput(f"--output: {path} exists; choose another name")
    if args.output and os.path.splitext(path)[1].lower() != ".mp4":     # Save Video writes MP4 (H.264)
        raise BadInput(f"--output: {path}: the video is an MP4 file; give a name ending in .mp4")
    problem = args.output and name_problem(os.path.basename(path), windows=os.name == "nt")
    if problem:
        raise BadInput(f"--output: {path}: {problem}; choose another name")
    folder = made = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(folder) and os.path.dirname(folder) != folder:    # a drive or share that is not there
        folder = os.path.dirname(folder)
    if not (os.path.isdir(folder) and writable(folder, make_folder=folder != made)):
        why = "not a folder" if os.path.isfile(folder) else "not writable" if os.path.exists(folder) else "not there"
        raise BadInput(f"{flag}: {given}: {folder} is {why}; choose another place")


def save_output(base, args, workflow_name):
    """Moves the video out of the temp output folder to --output, never over an existing file."""
    found = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(base, "output", "headless")) for f in fs]
    if len(found) != 1:
        raise RuntimeError(f"expected one video in the output folder, found {found}")
    ext = os.path.splitext(found[0])[1]
    dst = args.output or os.path.join(args.outdir, f"{workflow_name.split('.')[0]}_{args.seed}_"
                                                   f"{time.strftime('%Y%m%d_%H%M%S')}{ext}")
    if os.path.exists(dst):
        raise BadInput(f"--output: {dst} exists; choose another name")
    tmp = dst + ".part"
    try:
        os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
        shutil.copyfile(found[0], tmp)
        os.replace(tmp, dst)
    except OSError as e:    # e.g. a full disk: no half file, and the video (minutes of work) is kept
        with contextlib.suppress(OSError):
            os.remove(tmp)
        kept = os.path.join(os.path.dirname(base), f"skyreels-video-{time.strftime('%Y%m%d_%H%M%S')}{ext}")
        try:
            os.replace(found[0], kept)     # the temp folder's own disk: a rename, nothing written
            where = f"the video is kept at {kept}"
        except OSError:
            where = "the video could not be kept either"
        raise BadInput(f"--output: {dst} cannot be written ({e.strerror or e}); {where}") from None
    return dst


def exit_on_kill():
    """A kill (SIGTERM: `timeout`, a job scheduler; SIGHUP: the terminal closed; Windows' Ctrl+Break: SIGBREAK) ends
    main through its `finally`, as Ctrl-C does, so the ComfyUI it started stops and its temp folder goes; killed
    outright, both stayed behind. A signal already ignored stays so (`nohup` ignores SIGHUP, and ComfyUI inherits
    that). Closing a Windows console ends the process before any handler can run."""
    kills = [getattr(signal, name) for name in ("SIGTERM", "SIGHUP", "SIGBREAK") if hasattr(signal, name)]

    def leave(signum, frame):
        for s in kills:     # a second kill must not cut the cleanup short
            signal.signal(s, signal.SIG_IGN)
        sys.exit(128 + signum)
    for s in kills:
        if signal.getsignal(s) == signal.SIG_DFL:
            signal.signal(s, leave)


if __name__ == "__main__":
    sys.stdout.reconfigure(errors="backslashreplace")   # piped on Windows it has the code page's characters only
    exit_on_kill()
    sys.exit(main())
