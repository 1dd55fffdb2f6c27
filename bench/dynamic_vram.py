#!/usr/bin/env python3
"""This pack's FP8 model under Dynamic VRAM, ComfyUI's default on NVIDIA GPUs (a script, not a test).

    python bench/dynamic_vram.py [--host PATH] [--cpu]

ComfyUI's main.py turns Dynamic VRAM (comfy-aimdo) on by itself on an NVIDIA GPU: its ModelPatcherDynamic then
streams each layer's weights (our FP8 layout included) through comfy-aimdo's buffers, and a LoRA is applied per
layer as the weights arrive. `--cpu` turns that off, so no test reaches it. This starts the real main.py twice,
as users run it and with --disable-dynamic-vram (the legacy ModelPatcher), and queues the same prompts on each:
the demo's tiny DF model (dim 1536, 2 blocks; 64x64, 17 frames, 2 steps) through Load FP8 SkyReels Model (FP8,
compute auto; and per-tensor, upcast), Patch SageAttention auto and Sample Video, without and with a LoRA
(LoraLoaderModelOnly). It prints whether the host said the dynamic path ran, and per prompt the seconds, Sample
Video's report (matmul products, time per call, peak memory) and the relative L2 distance between the two servers'
final latents: the same weights and arithmetic give ~0; a LoRA is merged by one path and re-quantized per use by
the other, both rounding stochastically (with different seeds), so there a small distance is expected. Any failed
prompt or non-finite latent makes the exit code 1.
On a CPU (or with --cpu) both servers get --cpu, so both use the legacy ModelPatcher, and run only the LoRA prompt
in one step: the script's smoke run.
"""
import argparse
import glob
import importlib.util
import json
import math
import os
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path[:0] = [REPO, os.path.join(REPO, "tests")]

import safetensors.torch  # noqa: E402
import torch  # noqa: E402
from comfy_host import find_host  # noqa: E402

import generate_video_fp8 as gen  # noqa: E402
from quant import tiny  # noqa: E402

LORA = "tiny_lora.safetensors"
LABELS = ("per-channel, compute auto", "per-tensor, upcast", "per-channel, compute auto + LoRA", "bf16", "bf16 + LoRA")
CPU_LABELS = LABELS[2::2]   # the smoke run: the LoRA prompt and its bf16 counterpart, in one step


def unquantized(label):
    """The bf16 prompt an FP8 prompt's latents are measured against: FP8's own distance, the scale of its rounding."""
    return "bf16 + LoRA" if "LoRA" in label else "bf16"
SERVERS = {"dynamic VRAM (default)": [], "legacy (--disable-dynamic-vram)": ["--disable-dynamic-vram"]}


def write_lora(path, seed=3, rank=4):
    """A rank-4 LoRA on every attention and FFN Linear of the demo model (ComfyUI's lora_up/lora_down keys)."""
    g = torch.Generator().manual_seed(seed)
    lora = {}
    for key, shape in tiny.info("DF", dim=1536, ffn_dim=1024).expected_shapes().items():
        if key.startswith("blocks.") and key.endswith(".weight") and len(shape) == 2 and "modulation" not in key:
            base = "diffusion_model." + key[:-len(".weight")]
            lora[base + ".lora_up.weight"] = torch.randn(shape[0], rank, generator=g) * 0.05
            lora[base + ".lora_down.weight"] = torch.randn(rank, shape[1], generator=g) * 0.05
    os.makedirs(os.path.dirname(path), exist_ok=True)
    safetensors.torch.save_file(lora, path)


def prompts(server, names, gpu):
    """{label: API prompt}: the demo workflow with Patch SageAttention auto, its final latent saved, per-channel
    (compute auto) and per-tensor (upcast); the first with a LoRA after the loader; and the model in bf16 without
    and with the LoRA. On a CPU only CPU_LABELS, in one step: the script's smoke run."""
    # 17 frames, 2 steps: the path is what is checked here (bench/sample.py measures speed at real sizes)
    args = gen.parse_args(["--use_sage_attention", "--num_frames", "17", "--inference_steps", "2" if gpu else "1"])
    workflow_name = gen.pick_workflow(args, None)
    with open(os.path.join(REPO, "workflows", workflow_name), encoding="utf-8") as f:
        base = gen.build_prompt(json.load(f), server.get("/object_info"), args, names, True)
    out = {}
    for label in LABELS if gpu else CPU_LABELS:
        p = {k: dict(v, inputs=dict(v["inputs"])) for k, v in base.items()}
        loader = next(k for k, v in p.items() if v["class_type"] == "SkyReelsFP8ModelLoader")
        sample = next(k for k, v in p.items() if v["class_type"] == "SkyReelsSampleVideo")
        if "per-tensor" in label:
            p[loader]["inputs"].update(weight_format="fp8_e4m3fn (per-tensor)", compute="upcast")
        if label.startswith("bf16"):
            p[loader]["inputs"].update(weight_format="bf16", compute="upcast")
        if "LoRA" in label:
            for node in p.values():
                for name, link in node["inputs"].items():
                    if link == [loader, 0]:
                        node["inputs"][name] = ["lora", 0]
            p["lora"] = dict(class_type="LoraLoaderModelOnly",
                             inputs=dict(model=[loader, 0], lora_name=LORA, strength_model=1.0))
        p["save_latent"] = dict(class_type="SaveLatent",
                                inputs=dict(samples=[sample, 0], filename_prefix="dyn/latent"))
        out[label] = p
    return out


def run_server(host, base, name, flags, names, first, gpu):
    """{label: result} of the prompts on one server. Each result is printed as soon as it is known, and a server that
    fails to start, exits or refuses a prompt is recorded, not raised: gpu_check.sh's time limit or one server's
    failure still leaves what ran in the report, and the other server still runs."""
    if importlib.util.find_spec("comfyui_frontend_package") is None:   # as on the GPU machine: only the API is used
        os.makedirs(os.path.join(base, "frontend"), exist_ok=True)
        flags = flags + ["--front-end-root", os.path.join(base, "frontend")]
    server = gen.HostServer(host, base, flags, install_pack=first)
    results = {}
    try:
        server.start()
        for label, prompt in prompts(server, names, gpu).items():
            for old in glob.glob(os.path.join(base, "output", "dyn", "*")):
                os.remove(old)
            started = time.time()
            try:
                entry = server.run(prompt, timeout=300)
            except Exception as e:      # refused, timed out, or the server exited (its log's end is in the text)
                results[label] = dict(error=f"{type(e).__name__}: {str(e).strip()[-2000:]}")
                print(f"  {label}, {name}: FAILED: {results[label]['error']}")
                if server.proc.poll() is not None:
                    break
                continue
            seconds = time.time() - started
            err = gen.error_of(entry)
            if err:
                results[label] = dict(error=f"{err['node_type']}: {err['exception_message'].strip()[:300]}")
                print(f"  {label}, {name}: FAILED: {results[label]['error']}")
                continue
            latent = safetensors.torch.load_file(glob.glob(os.path.join(base, "output", "dyn", "*.latent"))[0])
            report = "".join(t for out in entry["outputs"].values() for t in out.get("text", []))
            results[label] = dict(latent=latent["latent_tensor"].float(), seconds=seconds)
            print(f"  {label}, {name}: {seconds:.1f} s; report:"
                  + "".join(f"\n    {line}" for line in report.splitlines() if line.strip()))
    except Exception as e:
        results["start"] = dict(error=f"{type(e).__name__}: {str(e).strip()[-2000:]}")
        print(f"  {name}: FAILED: {results['start']['error']}")
    finally:
        server.stop()
    log = server.read_log() if os.path.exists(server.log_path) else ""
    print(f"{name}: host said dynamic VRAM enabled: {'DynamicVRAM support detected and enabled' in log}; models "
          f"prepared for dynamic loading: {log.count('prepared for dynamic VRAM loading')}"
          # the last: the first are the start-up's (core nodes whose packages this machine lacks, e.g. kornia)
          + "".join(f"\n  log: {w}" for w in [l for l in log.splitlines() if "Traceback" in l or "Error" in l][-5:]))
    return results


def distance(x, y):
    return ((x - y).norm() / y.norm()).item()


def to_bf16(label, runs):
    """Each server's distance from its own bf16 run of the same prompt (FP8's rounding error), if both ran."""
    ref = unquantized(label)
    if ref == label:
        return ""
    found = [distance(r[label]["latent"], r[ref]["latent"]) for r in runs.values()
             if "latent" in r.get(label, {}) and "latent" in r.get(ref, {})]
    return f"; from {ref}: " + " and ".join(f"{d:.2e}" for d in found) if len(found) == 2 else ""


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", help="ComfyUI folder (default: found as the tests find it)")
    p.add_argument("--cpu", action="store_true", help="the CPU smoke run even where a GPU is present")
    args = p.parse_args()
    host = args.host or find_host()
    if not host:
        raise SystemExit("no ComfyUI host found: set COMFYUI_PATH or pass --host")
    gpu = torch.cuda.is_available() and not args.cpu
    print(f"device: {torch.cuda.get_device_name() if gpu else 'CPU'}, torch {torch.__version__}; host {host}")
    base = tempfile.mkdtemp(prefix="skyreels-dynvram-")
    failed = False
    try:
        names = gen.prepare_demo(host, base)
        write_lora(os.path.join(base, "models", "loras", LORA))
        runs = {}
        for i, (server, flags) in enumerate(SERVERS.items()):
            print(f"{server}:")
            runs[server] = run_server(host, base, server, flags + ([] if gpu else ["--cpu"]), names, i == 0, gpu)
        (a_name, a), (b_name, b) = runs.items()
        failed = any("error" in r for r in (*a.values(), *b.values()))
        for label in LABELS if gpu else CPU_LABELS:
            if "latent" in a.get(label, {}) and "latent" in b.get(label, {}):
                x, y = a[label]["latent"], b[label]["latent"]
                finite = bool(torch.isfinite(x).all() and torch.isfinite(y).all())
                failed |= not finite or not math.isfinite(distance(x, y))
                print(f"  {label}: final latents, dynamic vs legacy: relative L2 {distance(x, y):.2e}; "
                      f"all finite: {finite}" + to_bf16(label, runs))
            else:
                failed = True
                print(f"  {label}: not compared (a server has no latent for it)")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
