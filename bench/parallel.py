#!/usr/bin/env python3
"""Parallel Sample Video: communication per step from the shapes, and the CPU overhead of 2 Ray actors against one
process (a script, not a test).

    python bench/parallel.py [--host PATH] [--no-run]

Table: bytes each rank sends per sampling step (cond + uncond, bf16 activations) for the layouts Parallel Config
picks (`attention.usp.layout`), with and without cfg parallel:
- Ulysses (U ranks): every self-attention moves q, k, v and the output through an all-to-all; (U-1)/U of each
  rank's share leaves it;
- ring (R ranks): every self-attention all-gathers k and v over the ring group: R-1 shares out of each rank;
- the last block's all-gather sends the rank's tokens to the S-1 other sequence ranks (S = U x R);
- cfg 2: each half of the ranks runs one pass (batch 1 instead of 2) and the halves swap their outputs (fp32
  latents, small).
Sequences are padded to whole latent frames per sequence rank.

Run: the tiny DF model, 64x64, 17 frames, 3 steps, in a fresh host process: Sample Video alone, then with Parallel
Config (2 CPU actors, gloo), Ulysses and then cfg parallel, each twice: starting the workers, then with the workers
kept from that run. On a multi-GPU machine the same run compares 1 GPU with 2 (device "auto").
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path[:0] = [REPO, os.path.join(REPO, "tests")]

from comfy_host import IMPORT_PACK, PRELUDE, find_host  # noqa: E402

from attention.usp import layout  # noqa: E402

MODELS = {"1.3B": dict(dim=1536, heads=12, layers=30), "14B": dict(dim=5120, heads=40, layers=40)}
SIZES = {"540P, 97 frames": (25, 34 * 60), "720P, 121 frames": (31, 45 * 80)}   # latent frames, tokens per frame
BYTES = 2      # bf16
LATENT = 16 * 4 * 4  # bytes of model output per token: 16 latent channels x a 2x2 patch x fp32


def step_bytes(model, frames, per_frame, ranks, cfg):
    """(bytes one rank sends per step, "cfg C x ulysses U x ring R")."""
    m = MODELS[model]
    c, ring = layout(ranks, m["heads"], cfg)
    sequence = ranks // c
    ulysses = sequence // ring
    batch = 2 // c                                              # passes each rank runs per step
    local = -(-frames // sequence) * per_frame                  # tokens per rank, whole frames
    head_dim = m["dim"] // m["heads"]
    share = batch * local * m["heads"] * head_dim * BYTES      # one of q, k, v or out, this rank's tokens
    attention = m["layers"] * (4 * share * (ulysses - 1) / ulysses + 2 * share * (ring - 1))
    gather = batch * local * m["dim"] * BYTES * (sequence - 1)
    swap = (c - 1) * frames * per_frame * LATENT               # this group's output to the other group
    return attention + gather + swap, f"cfg {c} x ulysses {ulysses} x ring {ring}"


def table():
    print(f"{'model':5s} {'size':17s} {'tokens':>7s} {'ranks':>5s}  {'no cfg parallel':>37s}  {'cfg parallel':>37s}")
    for model in MODELS:
        for size, (frames, per_frame) in SIZES.items():
            for p in (2, 4, 8):
                cells = []
                for cfg in (False, True):
                    b, name = step_bytes(model, frames, per_frame, p, cfg)
                    size_text = f"{b / 2**30:8.2f} GiB" if b >= 2**30 else f"{b / 2**20:8.1f} MiB"
                    cells.append(f"{size_text} ({name})")
                print(f"{model:5s} {size:17s} {frames * per_frame:7d} {p:5d}  " + "  ".join(f"{c:>37s}" for c in cells))
    print("(bytes each rank sends per step; divide by the link's bandwidth for a lower bound on the time)")


CHILD = r"""
import time, torch, folder_paths
from helpers import write_tiny
from skyreels_pack.nodes.loader import LoadFP8SkyReelsModel
from skyreels_pack.nodes.parallel import ParallelConfig
from skyreels_pack.nodes.sample import SampleVideo
write_tiny(os.path.join({folder!r}, "df.safetensors"), "DF", seed=2)
folder_paths.add_model_folder_path("diffusion_models", {folder!r}, is_default=True)
model = LoadFP8SkyReelsModel.execute("df.safetensors", "auto", "upcast").args[0]
g = torch.Generator().manual_seed(0)
pos, neg = [[torch.randn(1, 8, 4096, generator=g), {{}}]], [[torch.randn(1, 8, 4096, generator=g), {{}}]]
args = dict(width=64, height=64, frames=17, seed=1, steps=3, cfg=5.0, shift=8.0, sampler="unipc", fps=24,
            mode={{"mode": "standard"}})
out = {{}}
ulysses = ParallelConfig.execute(2, "auto", "", cfg_parallel=False).args[0]
cfg = ParallelConfig.execute(2, "auto", "", cfg_parallel=True).args[0]
for name, parallel in (("1 process", None), ("2 Ray actors, ulysses 2, starting", ulysses),
                       ("2 Ray actors, ulysses 2, workers kept", ulysses), ("2 Ray actors, cfg parallel, starting", cfg),
                       ("2 Ray actors, cfg parallel, workers kept", cfg)):
    t = time.perf_counter()
    samples, report = SampleVideo.execute(model, pos, neg, **args, parallel=parallel).args[:2]
    out[name] = dict(seconds=time.perf_counter() - t, report=report)
print("@@" + json.dumps(out))
"""


def run(host):
    folder = tempfile.mkdtemp(prefix="skyreels-parallel-")
    code = (PRELUDE.format(host=host, repo=REPO) + f"sys.path.insert(0, {os.path.join(REPO, 'tests')!r})\n" +
            IMPORT_PACK.format(repo=REPO) + CHILD.format(folder=folder))
    proc = subprocess.run([sys.executable, "-c", code], cwd=host, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(proc.stderr[-4000:])
    out = json.loads([line for line in proc.stdout.splitlines() if line.startswith("@@")][-1][2:])
    one = out["1 process"]["seconds"]
    print(f"\nCPU ({os.cpu_count()} cores), tiny DF model, 64x64, 17 frames, 3 steps, wall time of the node:")
    for name in out:
        calls = next(l for l in out[name]["report"].splitlines() if " model calls, " in l).split(";")[0]
        print(f"  {name}: {out[name]['seconds']:.1f} s ({out[name]['seconds'] / one:.1f}x); {calls}")
        if name != "1 process":
            print("    " + out[name]["report"].splitlines()[-1])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", help="ComfyUI folder (default: found as the tests find it)")
    p.add_argument("--no-run", action="store_true", help="only the table")
    args = p.parse_args()
    table()
    if not args.no_run:
        host = args.host or find_host()
        if not host:
            raise SystemExit("no ComfyUI host found: set COMFYUI_PATH or pass --host")
        run(host)


if __name__ == "__main__":
    main()
