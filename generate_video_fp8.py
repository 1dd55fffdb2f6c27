#!/usr/bin/env python3
"""Generate a SkyReels-V2 video headless: runs one of this pack's workflows through a real ComfyUI.

    python generate_video_fp8.py --model_path MODEL [--prompt "..."] [--resolution 540P|720P] [--num_frames 97]
        [--image START.png] [--use_sage_attention] [--no-fp8] [--offload] [--seed N] [--output out.mp4]
        [DF: --ar_step 5 --causal_block_size 5 --base_num_frames 97 --overlap_history 17 --addnoise_condition 20]
        (all options and their defaults, SkyReels-V2's: --help)

The workflow follows from the model's tensors (I2V with --image: skyreels_i2v_fp8_sage.json; DF model or any DF
flag: skyreels_df_long_video.json; else skyreels_t2v_fp8_sage.json). With no --model_path it runs the DF workflow on
an embedded tiny model on the CPU (random conditioning stands in for umt5-xxl): noise, but every node runs.
ComfyUI is found as the tests find it ($COMFYUI_PATH, the ComfyUI this pack is in, ~/ComfyUI) and started on
127.0.0.1 with a temporary base folder. Exit status: 0 done, 2 bad input or no ComfyUI, 1 generation failed.
"""
import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid

REPO = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, REPO)
PACK = "ComfyUI-SkyReels-FP8"
DEFAULT_HOST = os.path.join(os.path.expanduser("~"), "ComfyUI")
RESOLUTIONS = {"540P": (960, 544), "720P": (1280, 720)}
# SkyReels-V2's generate_video_df.py defaults (its overlap_history has none; 17 is what its README uses).
DF_DEFAULTS = dict(ar_step=0, causal_block_size=1, base_num_frames=97, overlap_history=17, addnoise_condition=0)
DF_FLAGS = tuple(DF_DEFAULTS)
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
            raise RuntimeError(f"COMFYUI_PATH={env} is not a ComfyUI folder (no main.py / comfy/)")
        return os.path.abspath(env)
    parent = os.path.dirname(os.path.dirname(REPO))
    if os.path.basename(os.path.dirname(REPO)) == "custom_nodes" and is_host(parent):
        return parent
    return DEFAULT_HOST if is_host(DEFAULT_HOST) else None


# What ComfyUI loads of this pack (never a clone's venv, models or videos).
PACK_FILES = ("__init__.py", "pyproject.toml", "requirements.txt", "nodes", "quant", "attention", "sampling",
              "workflows")


def install_copy(dst):
    os.makedirs(dst)
    for name in PACK_FILES:
        src = os.path.join(REPO, name)
        if os.path.isdir(src):
            shutil.copytree(src, os.path.join(dst, name), ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copyfile(src, os.path.join(dst, name))


class HostServer:
    """ComfyUI's main.py on a free loopback port with `base` as its base folder (this pack copied into its
    custom_nodes unless install_pack is False)."""

    def __init__(self, host, base, extra_args=(), python=sys.executable, install_pack=True):
        self.host, self.base, self.extra_args, self.python = host, base, list(extra_args), python
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
        cmd = [self.python, "main.py", "--listen", "127.0.0.1", "--port", str(self.port), "--base-directory",
               self.base, "--database-url", "sqlite:///:memory:", "--disable-auto-launch", *self.extra_args]
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, cwd=self.host, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited at start-up:\n{self.read_log()[-4000:]}")
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
        with open(self.log_path) as f:
            return f.read()

    def get(self, path):
        with urllib.request.urlopen(self.url + path, timeout=60) as r:
            return json.loads(r.read())

    def post(self, path, data):
        req = urllib.request.Request(self.url + path, data=json.dumps(data).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def run(self, prompt, timeout=None):
        """Queue an API-format prompt and wait for it; returns its history entry (status, outputs)."""
        status, body = self.post("/prompt", {"prompt": prompt, "client_id": "headless",
                                             "prompt_id": str(uuid.uuid4())})
        if status != 200:
            raise RuntimeError(f"ComfyUI refused the prompt ({status}): {json.dumps(body)[:3000]}")
        pid = body["prompt_id"]
        deadline = None if timeout is None else time.time() + timeout
        while deadline is None or time.time() < deadline:
            hist = self.get(f"/history/{pid}")
            if pid in hist:
                return hist[pid]
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited:\n{self.read_log()[-4000:]}")
            time.sleep(0.25)
        raise TimeoutError(f"prompt {pid} did not finish in {timeout} s")


def error_of(entry):
    """The execution_error message of a finished prompt, or None if it succeeded."""
    for kind, data in entry["status"].get("messages", []):
        if kind == "execution_error":
            return data
    return None


def write_tiny_vae(path, seed=0):
    """A Wan 2.1 VAE of the real structure at width 8, seeded random weights, built with the host's own class."""
    import comfy.ldm.wan.vae
    import safetensors.torch
    import torch

    module = comfy.ldm.wan.vae.WanVAE(dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                                      temperal_downsample=[False, True, True])
    g, sd = torch.Generator().manual_seed(seed), {}
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
    p.add_argument("--model_path", help="SkyReels-V2 model file or downloaded folder (none: the tiny demo)")
    p.add_argument("--prompt", default="A graceful white swan swimming in a serene lake at dawn.")
    p.add_argument("--negative_prompt", help="default: the workflow's")
    p.add_argument("--resolution", choices=list(RESOLUTIONS), default="540P")
    p.add_argument("--num_frames", type=int, default=97)
    p.add_argument("--image", help="start image (I2V model: image to video; DF model: first frame)")
    p.add_argument("--inference_steps", type=int, default=30)
    p.add_argument("--guidance_scale", type=float, help="cfg (default: the workflow's, 6.0; I2V 5.0)")
    p.add_argument("--shift", type=float, help="flow shift (default: the workflow's, 8.0; I2V 3.0)")
    p.add_argument("--fps", type=int, default=24)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--use_fp8", dest="fp8", action="store_true", default=True, help="FP8 weights (default)")
    p.add_argument("--no-fp8", "--no_fp8", dest="fp8", action="store_false", help="bf16 weights")
    p.add_argument("--use_sage_attention", action="store_true", help="8-bit SageAttention (Patch SageAttention)")
    p.add_argument("--offload", action="store_true", help="start ComfyUI with --lowvram (weights streamed to the GPU)")
    p.add_argument("--monitor_memory", action="store_true", help="print peak memory and time per step")
    p.add_argument("--output", help="video file to write (default: video_out/<workflow>_<seed>_<time>.mp4)")
    for flag, default in DF_DEFAULTS.items():
        p.add_argument("--" + flag, type=int, help=f"Diffusion Forcing (default: {default}, as SkyReels-V2)")
    p.add_argument("--causal_attention", action="store_true",
                   help="Diffusion Forcing: causal attention, as SkyReels-V2")
    p.add_argument("--use_usp", action="store_true",
                   help="several GPUs through Ray: Parallel Config (cfg parallel, then Ulysses/ring); see README")
    p.add_argument("--workers", type=int, default=2, help="with --use_usp: GPUs, one worker each (default 2)")
    p.add_argument("--text_encoder", help="umt5-xxl file (default: models/text_encoders/umt5_xxl_fp8_e4m3fn_scaled)")
    p.add_argument("--vae", help="Wan 2.1 VAE file (default: models/vae/wan_2.1_vae.safetensors)")
    p.add_argument("--clip_vision", help="CLIP vision file for I2V (default: models/clip_vision/clip_vision_h)")
    p.add_argument("--cpu", action="store_true", help="run ComfyUI on the CPU (the demo always does)")
    return p.parse_args(argv)


def pick_workflow(args, info):
    if info is None:
        if args.image:
            raise BadInput("--image needs --model_path (the demo model takes no image)")
        return "skyreels_df_long_video.json"
    if info.variant == "I2V":
        if not args.image:
            raise BadInput(f"--model_path: {info.describe()} is an image-to-video model; give --image")
        given = [f"--{f}" for f in (*DF_FLAGS, "causal_attention") if getattr(args, f) not in (None, False)]
        if given:
            raise BadInput(f"{', '.join(given)}: Diffusion Forcing options; {info.describe()} samples in standard "
                           "mode (use a DF model)")
        return "skyreels_i2v_fp8_sage.json"
    # DF-14B has the same tensors as T2V-14B: a start image or a DF flag asks for Diffusion Forcing.
    if info.variant == "DF" or args.image or args.causal_attention or any(getattr(args, f) is not None
                                                                         for f in DF_FLAGS):
        return "skyreels_df_long_video.json"
    return "skyreels_t2v_fp8_sage.json"


def inspect_model(path):
    """The model's ModelInfo, read from its tensors (BadInput if it is not a SkyReels-V2 model)."""
    from quant import Checkpoint, CheckpointError

    try:
        with Checkpoint(path) as ckpt:
            return ckpt.model_info()
    except (CheckpointError, FileNotFoundError, ValueError) as e:
        raise BadInput(f"--model_path: {e}") from None


class BadInput(Exception):
    pass


def link_models(base, args, info):
    """extra_model_paths.yaml pointing ComfyUI at the given files; returns {widget: file name}."""
    host_models = os.path.join(find_host() or DEFAULT_HOST, "models")
    wanted = [("diffusion_models", "model_path", None),
              ("text_encoders", "text_encoder", "umt5_xxl_fp8_e4m3fn_scaled.safetensors"),
              ("vae", "vae", "wan_2.1_vae.safetensors")]
    if args.image and info.variant == "I2V":
        wanted.append(("clip_vision", "clip_vision", "clip_vision_h.safetensors"))
    files = {}
    for kind, flag, default in wanted:
        given = getattr(args, flag)
        files[kind] = os.path.abspath(given) if given else os.path.join(host_models, kind, default)
        if not os.path.exists(files[kind]):
            raise BadInput(f"{kind}: {files[kind]} not found; pass --{flag} or put the file there")
    lines = ["headless:"] + [f"  {kind}: {os.path.dirname(path)}" for kind, path in files.items()]
    with open(os.path.join(base, "extra_model_paths.yaml"), "w") as f:
        f.write("\n".join(lines) + "\n")
    names = {kind: os.path.basename(path) for kind, path in files.items()}
    if os.path.isdir(files["diffusion_models"]):
        names["diffusion_models"] += "/"
    return names


def build_prompt(workflow, object_info, args, names, demo):
    from workflows.api import ui_to_api

    prompt = ui_to_api(workflow, object_info)
    width, height = RESOLUTIONS[args.resolution]
    sizes = dict(width=width, height=height, frames=args.num_frames, steps=args.inference_steps)
    if demo:
        sizes.update(DEMO)
    for node_id, node in list(prompt.items()):
        kind, inputs = node["class_type"], node["inputs"]
        if kind == "SkyReelsFP8ModelLoader":
            inputs["model_name"] = names["diffusion_models"]
            inputs["weight_format"] = "auto" if args.fp8 else "bf16"
        elif kind == "SkyReelsPatchSageAttention":
            inputs["mode"] = "auto" if args.use_sage_attention else "disabled"
        elif kind == "SkyReelsSampleVideo":
            inputs.update(width=sizes["width"], height=sizes["height"], frames=sizes["frames"], steps=sizes["steps"],
                          seed=args.seed, fps=args.fps)
            for key, value in (("cfg", args.guidance_scale), ("shift", args.shift)):
                if value is not None:
                    inputs[key] = value
            if inputs["mode"] == "diffusion forcing":         # its widgets are under mode, a dynamic combo
                for flag in DF_FLAGS:
                    given = getattr(args, flag)
                    inputs["mode." + flag] = given if given is not None else sizes.get(flag, DF_DEFAULTS[flag])
                inputs["mode.causal_attention"] = args.causal_attention
            if args.use_usp:
                prompt["parallel"] = {"class_type": "SkyReelsParallelConfig",
                                      "inputs": {"workers": args.workers, "device": "auto", "ray_address": "",
                                                 "cfg_parallel": True, "keep_workers": True, "ring_degree": 0}}
                inputs["parallel"] = ["parallel", 0]
            if args.image and inputs["mode"] == "diffusion forcing":
                prompt["start"] = {"class_type": "LoadImage", "inputs": {"image": os.path.basename(args.image)}}
                inputs["start_image"] = ["start", 0]
                inputs["vae"] = next([i, 0] for i, n in prompt.items() if n["class_type"] == "VAELoader")
        elif kind == "WanImageToVideo":
            inputs.update(width=sizes["width"], height=sizes["height"], length=sizes["frames"])
        elif kind == "LoadImage" and args.image:
            inputs["image"] = os.path.basename(args.image)
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
        elif kind == "CreateVideo":
            inputs["fps"] = args.fps
        elif kind == "SaveVideo":
            inputs["filename_prefix"] = "headless/video"
    if demo:
        prompt = {k: v for k, v in prompt.items() if v["class_type"] != "CLIPLoader"}
        for node in prompt.values():   # Load Training Dataset gives (latents, conditioning)
            for name, link in node["inputs"].items():
                if isinstance(link, list) and prompt[link[0]]["class_type"] == "LoadTrainingDataset":
                    node["inputs"][name] = [link[0], 1]
    return prompt


def negative_encoder(prompt):
    """The id of the CLIPTextEncode feeding a 'negative' input."""
    for node in prompt.values():
        link = node["inputs"].get("negative")
        if isinstance(link, list) and prompt[link[0]]["class_type"] == "CLIPTextEncode":
            return link[0]
    return None


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
        return error("no ComfyUI found: set COMFYUI_PATH to a ComfyUI folder, install this pack in "
                     "ComfyUI/custom_nodes, or lay ComfyUI out at ~/ComfyUI (with its requirements installed)", 2)
    base = tempfile.mkdtemp(prefix="skyreels-headless-")
    server = None
    try:
        check_output(args.output)
        info = None if demo else inspect_model(args.model_path)
        if args.image and not os.path.isfile(args.image):
            raise BadInput(f"--image: {args.image} not found")
        name = pick_workflow(args, info)
        extra = []
        if demo:
            names = prepare_demo(host, base)
            extra.append("--cpu")
            print(f"no --model_path: {name} on the embedded tiny SkyReels-V2 DF model, CPU (random conditioning "
                  "stands in for umt5-xxl; the prompt is not read)")
        else:
            names = link_models(base, args, info)
            extra += ["--extra-model-paths-config", os.path.join(base, "extra_model_paths.yaml")]
            extra += ["--cpu"] if args.cpu else []
            extra += ["--lowvram"] if args.offload else []
            print(f"{info.describe()}: {name}")
        if args.image:
            shutil.copy(args.image, os.path.join(base, "input", os.path.basename(args.image)))
        server = HostServer(host, base, extra).start()
        with open(os.path.join(REPO, "workflows", name)) as f:
            workflow = json.load(f)
        prompt = build_prompt(workflow, server.get("/object_info"), args, names, demo)
        started = time.time()
        entry = server.run(prompt)
        err = error_of(entry)
        if err:
            return error(f"{err['node_type']} failed: {err['exception_message'].strip()}", 1)
        report = "".join(text for out in entry["outputs"].values() for text in out.get("text", []))
        video = save_output(base, args, name)
        print(report if args.monitor_memory or demo else report.splitlines()[0])
        print(f"wrote {video} ({time.time() - started:.1f} s)")
        return 0
    except BadInput as e:
        return error(e, 2)
    except RuntimeError as e:
        return error(e, 1)
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
    """Tiny DF release folder, tiny VAE and the random conditioning, written under the base folder."""
    models = os.path.join(base, "models")
    from quant import tiny
    tiny.write_release(os.path.join(models, "diffusion_models", "tiny-SkyReels-V2-DF"),
                       tiny.state_dict(tiny.info("DF"), seed=2))
    os.makedirs(os.path.join(models, "vae"), exist_ok=True)
    vae = os.path.join(models, "vae", "tiny_wan_vae.safetensors")
    code = (f"import sys; sys.path[:0] = [{host!r}, {REPO!r}]\nimport comfy.cli_args; comfy.cli_args.args.cpu = True\n"
            f"from generate_video_fp8 import write_tiny_vae; write_tiny_vae({vae!r})")
    subprocess.run([sys.executable, "-c", code], cwd=host, check=True, capture_output=True)
    write_demo_conditioning(base)
    return {"diffusion_models": "tiny-SkyReels-V2-DF/", "vae": "tiny_wan_vae.safetensors"}


def check_output(path):
    """Refuse an --output that exists or that this OS could not name, before the generation rather than after."""
    from quant.writer import name_problem

    if path and os.path.exists(path):
        raise BadInput(f"--output: {path} exists; choose another name")
    problem = path and name_problem(os.path.basename(path), windows=os.name == "nt")
    if problem:
        raise BadInput(f"--output: {path}: {problem}; choose another name")


def save_output(base, args, workflow_name):
    """Moves the video out of the temp output folder to --output, never over an existing file."""
    found = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(base, "output", "headless")) for f in fs]
    if len(found) != 1:
        raise RuntimeError(f"expected one video in the output folder, found {found}")
    ext = os.path.splitext(found[0])[1]
    dst = args.output or os.path.join("video_out", f"{workflow_name.split('.')[0]}_{args.seed}_"
                                                   f"{time.strftime('%Y%m%d_%H%M%S')}{ext}")
    if os.path.exists(dst):
        raise BadInput(f"--output: {dst} exists; choose another name")
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    tmp = dst + ".part"
    shutil.copyfile(found[0], tmp)
    os.replace(tmp, dst)
    return dst


if __name__ == "__main__":
    sys.exit(main())
