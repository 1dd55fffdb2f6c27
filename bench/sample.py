#!/usr/bin/env python3
"""Sample Video step time and peak memory: FP8 + 8-bit attention vs bf16 + PyTorch attention (a script, not a test).

    python bench/sample.py [--host PATH] [--steps 3] [--cpu] [--only LETTERS] [--model {1.3B,14B}] [--blocks N]

Configurations that load the same model share a fresh host process (and one load); each runs through the real
nodes (loader -> [Patch SageAttention] -> Sample Video, standard mode, cfg 6, unipc), first one warm-up step, then
`--steps` measured steps; the time per step and the peak memory come from Sample Video's own report (CUDA:
max_memory_allocated; CPU: the process's peak RSS, reset before the run).

CPU: a tiny SkyReels-V2 model (dim 512, 4 blocks), 128x128, 17 frames; FP8 per-channel with upcast matmuls and
this pack's PyTorch SageAttention vs the same weights in bf16 with the host's attention. (Neither FP8 nor 8-bit
attention is faster on a CPU; the CPU run proves the path and shows the overhead.)
GPU: the real 1.3B shapes with random weights (`--model 14B`: the 14B model's widths, 40 heads, with `--blocks` of
its 40 blocks, 4 by default), 544x960, 97 frames: (a) FP8 per-channel + fp8 matmul (w8a8) +
sageattn, (b) bf16 + the host's attention, (c) core UNETLoader `fp8_e4m3fn_fast` + the host's attention, and each of
(a)'s two changes alone: (d) FP8 + fp8 matmul with the host's attention, (e) bf16 + sageattn; and (g) bf16 with the
host's attention given PyTorch's cuDNN attention first (ComfyUI puts FlashAttention first; PyTorch's own order puts
cuDNN first on sm90/sm100, which ran 574 TOPS alone on an H200 where ComfyUI's FlashAttention-2 ran about 360 in the
model), (h) (d) with that order, and (i) Patch SageAttention's `auto` (exact attention through cuDNN on an
H100/H200 with sageattention 1.x). `--only abi` runs those (with the baseline, (b)). Where a configuration
is profiled, one more step runs under torch.profiler and its GPU time (CPU time on a CPU) is listed by the op that
spent it, the largest first.
The accuracy guard (Patch SageAttention's guard_threshold) is off in the timed configurations and on in (f): it
checks each attention site on 4 steps of a run, and a 2-step run is all checked steps (both fall in a new phase), so
with it on every configuration with sageattn would be timed as its slowest steps. (f) - (a) is the guard's cost on
one checked step; a 30-step run pays it on 4 of its steps.
"""
import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path[:0] = [REPO, HERE, os.path.join(REPO, "tests")]

import torch  # noqa: E402
from comfy_host import IMPORT_PACK, PRELUDE, find_host  # noqa: E402
from convert import write_synthetic  # noqa: E402
from helpers import write_tiny  # noqa: E402

CHILD = r"""
import json, torch, folder_paths, nodes, re
import comfy.ops
from skyreels_pack.nodes.loader import LoadFP8SkyReelsModel
from skyreels_pack.nodes.sage_patch import PatchSageAttention
from skyreels_pack.nodes.sample import SampleVideo
folder_paths.add_model_folder_path("diffusion_models", {folder!r}, is_default=True)
runs = {runs!r}
cfg = runs[0][1]            # every configuration here loads the same model
if cfg["loader"] == "ours":
    base = LoadFP8SkyReelsModel.execute(cfg["file"], cfg["weight_format"], cfg["compute"]).args[0]
else:
    base = nodes.UNETLoader().load_unet(cfg["file"], cfg["weight_dtype"])[0]
g = torch.Generator().manual_seed(0)
pos = [[torch.randn(1, 512, 4096, generator=g), {{}}]]
neg = [[torch.randn(1, 512, 4096, generator=g), {{}}]]
# ComfyUI's SDPA backend order on CUDA (FlashAttention first; PyTorch's own puts cuDNN first on sm90/sm100)
order = list(getattr(comfy.ops, "SDPA_BACKEND_PRIORITY", []))

def run(model, steps):
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return SampleVideo.execute(model, pos, neg, {width}, {height}, {frames}, 0, steps, 6.0, 8.0, "unipc", 24,
                               {{"mode": "standard"}}).args[1]

def measure(cfg):
    model = base
    if cfg["sage"]:
        model = PatchSageAttention.execute(model, cfg["sage"], 0, 0, 0, cfg.get("guard", 0.0)).args[0]
    cudnn = [b for b in order if b.name == "CUDNN_ATTENTION"]
    if cfg.get("sdpa") == "cudnn first" and cudnn:
        comfy.ops.SDPA_BACKEND_PRIORITY[:] = cudnn + [b for b in order if b not in cudnn]
    try:
        run(model, 1)                # warm-up: model load, kernels, caches
        report = run(model, {steps})
        profile = profiled(model) if cfg.get("profile") else []
    finally:
        if order:
            comfy.ops.SDPA_BACKEND_PRIORITY[:] = order
    if cfg.get("sdpa") and not cudnn:
        report += "\\nSDPA order unchanged: this ComfyUI sets none here (no CUDA)"
    per_call = float(re.search(r"([0-9.]+) s per call", report).group(1))
    memory = re.search(r"peak (VRAM|RSS) ([0-9]+) MiB", report)
    return dict(per_call=per_call, memory_mib=int(memory.group(2)), report=report, profile=profile)

def profiled(model):         # one more step under the profiler: where its time goes, by the op that spent it
    from torch.profiler import ProfilerActivity, profile as profiler
    gpu = torch.cuda.is_available()
    with profiler(activities=[ProfilerActivity.CPU] + [ProfilerActivity.CUDA] * gpu) as prof:
        run(model, 1)
    spent = (lambda e: e.self_device_time_total) if gpu else (lambda e: e.self_cpu_time_total)
    events, lines = prof.key_averages(), []
    for kind, n in [("CPU", 14)] + [("CUDA", 10)] * gpu:
        rows = [e for e in events if str(e.device_type).endswith(kind) and spent(e) > 0]
        total = sum(spent(e) for e in rows)
        what = "GPU kernels (Triton kernels launched from Python count in none)" if gpu else "CPU time"
        lines.append(f"{{total / 1e3:9.1f}} ms in all, {{kind}} "
                     + ("kernels" if kind == "CUDA" else f"ops, by their own {{what}}"))
        lines.extend(f"{{spent(e) / 1e3:9.1f}} ms {{100 * spent(e) / total:5.1f}}% {{e.count:7d}}x  {{e.key[:80]}}"
                     for e in sorted(rows, key=spent, reverse=True)[:n])
    return lines

for label, cfg in runs:
    print("@@RUN@@" + json.dumps([label, measure(cfg)]), flush=True)
"""

CPU_RUNS = [
    ("fp8 per-channel + our SageAttention (reference)",
     dict(loader="ours", file="tiny.safetensors", weight_format="fp8_e4m3fn (per-channel)", compute="upcast",
          sage="reference")),
    ("bf16 + host attention", dict(loader="ours", file="tiny.safetensors", weight_format="bf16", compute="upcast",
                                   sage=None, profile=True)),
    ("bf16 + host attention, cuDNN first", dict(loader="ours", file="tiny.safetensors", weight_format="bf16",
                                                compute="upcast", sage=None, sdpa="cudnn first")),
]
FP8 = dict(loader="ours", file="bf16_synthetic.safetensors", weight_format="fp8_e4m3fn (per-channel)", compute="fp8 matmul")
BF16 = dict(loader="ours", file="bf16_synthetic.safetensors", weight_format="bf16", compute="upcast")
GPU_RUNS = [   # (b) is the baseline; (d) and (e) part (a)'s two changes; (f) is (a) with the guard checking
    ("(a) fp8 per-channel, fp8 matmul + sageattn", dict(FP8, sage="sageattn", profile=True)),
    ("(b) bf16 + host attention (SDPA)", dict(BF16, sage=None, profile=True)),
    ("(c) core UNETLoader fp8_e4m3fn_fast",
     dict(loader="core", file="bf16_synthetic.safetensors", weight_dtype="fp8_e4m3fn_fast", sage=None)),
    ("(d) fp8 per-channel, fp8 matmul + SDPA", dict(FP8, sage=None)),
    ("(e) bf16 + sageattn", dict(BF16, sage="sageattn")),
    ("(f) (a) + the accuracy guard (0.995)", dict(FP8, sage="sageattn", guard=0.995)),
    ("(g) bf16 + host attention, cuDNN first", dict(BF16, sage=None, sdpa="cudnn first", profile=True)),
    ("(h) fp8 per-channel, fp8 matmul + SDPA, cuDNN first", dict(FP8, sage=None, sdpa="cudnn first")),
    ("(i) fp8 per-channel, fp8 matmul + Patch SageAttention auto", dict(FP8, sage="auto", profile=True)),
]


LOADER_KEYS = ("loader", "file", "weight_format", "compute", "weight_dtype")


def measure(host, folder, runs, size, steps):
    """{label: result} of `runs`: those that load the same model share one host process (and its load), each
    configuration with its own warm-up step."""
    groups = {}
    for label, cfg in runs:
        groups.setdefault(tuple(cfg.get(k) for k in LOADER_KEYS), []).append((label, cfg))
    results = {}
    for group in groups.values():
        code = PRELUDE.format(host=host, repo=REPO) + IMPORT_PACK.format(repo=REPO) + CHILD.format(
            folder=folder, runs=group, steps=steps, **size)
        if torch.cuda.is_available() and not size.get("cpu"):
            code = code.replace("comfy.cli_args.args.cpu = True", "")
        # Each result printed as it comes: under gpu_check.sh's time limit a cut run keeps the ones it made.
        with tempfile.TemporaryFile("w+") as err:
            proc = subprocess.Popen([sys.executable, "-c", code], cwd=host, stdout=subprocess.PIPE, stderr=err,
                                    text=True)
            for line in proc.stdout:
                if line.startswith("@@RUN@@"):
                    label, r = json.loads(line[len("@@RUN@@"):])
                    results[label] = r
                    print(f"  done: {label}: {r['per_call']:.3f} s/step, peak {r['memory_mib']} MiB", flush=True)
            if proc.wait():
                err.seek(0)
                raise SystemExit(err.read()[-4000:])
    return {label: results[label] for label, _ in runs}


def start(name, steps, extra=()):
    """The arguments every host benchmark takes, the host, whether it runs on the GPU (its device line printed)
    and a temporary folder: (args, host, gpu, folder). `extra`: (flag, help) of further switches."""
    p = argparse.ArgumentParser()
    p.add_argument("--host", help="ComfyUI folder (default: found as the tests find it)")
    p.add_argument("--steps", type=int, default=steps)
    p.add_argument("--cpu", action="store_true", help="the CPU run even where a GPU is present")
    for flag, text, *how in extra:   # a switch, or (flag, help, add_argument's keywords)
        p.add_argument(flag, help=text, **(how[0] if how else dict(action="store_true")))
    args = p.parse_args()
    host = args.host or find_host()
    if not host:
        raise SystemExit("no ComfyUI host found: set COMFYUI_PATH or pass --host")
    gpu = torch.cuda.is_available() and not args.cpu
    device = torch.cuda.get_device_name() if gpu else f"CPU ({platform.machine()}, {os.cpu_count()} cores)"
    print(f"device: {device}, torch {torch.__version__}; host {host}")
    return args, host, gpu, tempfile.mkdtemp(prefix=f"skyreels-{name}-")


def main():
    args, host, gpu, folder = start("sample", 3, [
        ("--only", "GPU configurations by letter, e.g. abi", {}),
        ("--model", "GPU: the widths of SkyReels-V2 1.3B (all 30 blocks) or 14B (--blocks of its 40)",
         dict(choices=["1.3B", "14B"], default="1.3B")),
        ("--blocks", "GPU, 14B: how many blocks (time and memory per block are what count)", dict(type=int, default=4))])
    try:
        if gpu:
            blocks = args.blocks if args.model == "14B" else None
            write_synthetic(os.path.join(folder, "bf16_synthetic.safetensors"), args.model, blocks)
            print(f"model: SkyReels-V2 {args.model} widths, {blocks or 30} blocks, random weights", flush=True)
            keep = set(args.only or "abcdefghi") | {"b"}   # (b): the baseline
            runs = [(label, cfg) for label, cfg in GPU_RUNS if label[1] in keep]
            size, unit = dict(width=960, height=544, frames=97), "VRAM"
        elif args.model == "14B":
            print("the 14B widths run on a GPU only (the CPU run is the tiny model's, without --model)")
            return
        else:
            write_tiny(os.path.join(folder, "tiny.safetensors"), "T2V", dim=512, ffn_dim=1024, num_layers=4)
            size, runs, unit = dict(width=128, height=128, frames=17, cpu=True), CPU_RUNS, "RSS"
        print(f"{size['width']}x{size['height']}, {size['frames']} frames, {args.steps} steps (cfg 6: cond + uncond "
              "per step)", flush=True)
        results = measure(host, folder, runs, size, args.steps)
        baseline = next((label for label, _ in runs if label.startswith("(b)")), runs[1][0])
        base = results[baseline]
        print(f"{'configuration':48s} {'s/step':>8s} {'vs ' + baseline[:12]:>16s} {'peak ' + unit:>12s}")
        for label, r in results.items():
            print(f"{label:48s} {r['per_call']:8.3f} {base['per_call'] / r['per_call']:15.2f}x "
                  f"{r['memory_mib']:8d} MiB")
        print("(ratio > 1: faster than the baseline)")
        for label, r in results.items():
            print(f"\n[{label}]\n{r['report']}" + "".join(f"\n  {line}" for line in r["profile"]))
    finally:
        shutil.rmtree(folder)


if __name__ == "__main__":
    main()
