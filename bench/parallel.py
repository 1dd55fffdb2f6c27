#!/usr/bin/env python3
"""Sequence-parallel Sample Video: communication per step from the shapes, and the CPU overhead of 2 Ray actors
against one process (a script, not a test).

    python bench/parallel.py [--host PATH] [--no-run]

Table: bytes each rank sends per sampling step (cond + uncond in one batch, bf16 activations) with Ulysses: every
self-attention moves q, k, v and the output through an all-to-all ((P-1)/P of each rank's share leaves it), and
the last block's all-gather sends the rank's tokens to the P-1 others. Sequences are padded to whole latent frames
per rank. 1.3B's 12 heads do not split over 8 ranks (that needs ring attention, not built yet).

Run: the tiny DF model, 64x64, 17 frames, 3 steps, in a fresh host process: Sample Video alone, then with Parallel
Config (2 CPU actors, gloo). On a multi-GPU machine the same run compares 1 GPU with 2 (device "auto").
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

MODELS = {"1.3B": dict(dim=1536, heads=12, layers=30), "14B": dict(dim=5120, heads=40, layers=40)}
SIZES = {"540P, 97 frames": (25, 34 * 60), "720P, 121 frames": (31, 45 * 80)}   # latent frames, tokens per frame
BYTES = 2      # bf16
BATCH = 2      # cond + uncond


def step_bytes(model, frames, per_frame, ranks):
    m = MODELS[model]
    if m["heads"] % ranks:
        return None
    local = -(-frames // ranks) * per_frame                   # tokens per rank, whole frames
    head_dim = m["dim"] // m["heads"]
    share = BATCH * local * m["heads"] * head_dim * BYTES      # one of q, k, v or out, this rank's tokens
    attention = m["layers"] * 4 * share * (ranks - 1) / ranks
    gather = BATCH * local * m["dim"] * BYTES * (ranks - 1)
    return attention + gather


def table():
    print(f"{'model':5s} {'size':17s} {'tokens':>7s} " + " ".join(f"{f'{p} ranks':>12s}" for p in (2, 4, 8)))
    for model in MODELS:
        for size, (frames, per_frame) in SIZES.items():
            cells = []
            for p in (2, 4, 8):
                b = step_bytes(model, frames, per_frame, p)
                cells.append(f"{b / 2**30:9.2f} GiB" if b is not None else f"{'heads ∤ P':>12s}")
            print(f"{model:5s} {size:17s} {frames * per_frame:7d} " + " ".join(cells))
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
            mode="standard", base_num_frames=97, overlap_history=17, ar_step=0, causal_block_size=1,
            addnoise_condition=0)
out = {{}}
for name, parallel in (("1 process", None), ("2 Ray actors", ParallelConfig.execute(2, "auto", "").args[0])):
    t = time.perf_counter()
    samples, report = SampleVideo.execute(model, pos, neg, **args, parallel=parallel).args
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
    one, two = out["1 process"]["seconds"], out["2 Ray actors"]["seconds"]
    print(f"\nCPU ({os.cpu_count()} cores), tiny DF model, 64x64, 17 frames, 3 steps, wall time of the node:")
    print(f"  1 process {one:.1f} s, 2 Ray actors {two:.1f} s (with starting the actors and loading the model in "
          f"each): {two / one:.1f}x the time")
    for name in out:
        calls = next(l for l in out[name]["report"].splitlines() if " model calls, " in l).split(";")[0]
        print(f"  {name}: {calls}")
    print("  " + out["2 Ray actors"]["report"].splitlines()[-1])


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
