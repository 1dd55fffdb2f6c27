#!/usr/bin/env python3
"""Where Sample Video draws a seed's noise (a check, not a timing): `noise` cpu (ComfyUI) against the host's own
CPU noise (the first window's, as prepare_noise draws it), and gpu (SkyReels-V2) against what SkyReels-V2's
scripts draw, `torch.randn` from a seeded `torch.Generator` on the GPU, window after window, in the DF pipeline's
dtype (its transformer's, bf16). No CPU test can see the GPU draw; on a CPU this runs the same path with the CPU
as the model's device.

    python bench/noise.py [--host PATH] [--cpu]

Runs the tiny DF model (bf16) through the real nodes in a host process: diffusion forcing, 37 frames in three windows,
addnoise_condition 20, 2 steps, once per `noise` choice, and compares the noise each window hands the host's
sampler (`comfy.sample.sample_custom`, watched, then run) bit for bit. Then says how the device multiplies bf16
latents by a 0-dim float32 CPU ratio (as SkyReels-V2's scheduler and Sample Video's solver both do).
"""
import os
import shutil
import subprocess
import sys

from sample import REPO, start

sys.path.insert(0, os.path.join(REPO, "tests"))
from comfy_host import IMPORT_PACK, PRELUDE  # noqa: E402
from helpers import write_tiny  # noqa: E402

CHILD = r"""
import torch, comfy.model_management, comfy.sample, folder_paths
from skyreels_pack.nodes.loader import LoadFP8SkyReelsModel
from skyreels_pack.nodes.sample import SampleVideo
folder_paths.add_model_folder_path("diffusion_models", {folder!r}, is_default=True)
model = LoadFP8SkyReelsModel.execute("tiny.safetensors", "bf16", "upcast").args[0]
seen, real = [], comfy.sample.sample_custom

def watch(model, noise, *args, **kwargs):     # the noise Sample Video hands the host's sampler, which then runs
    seen.append(noise.clone())
    return real(model, noise, *args, **kwargs)

comfy.sample.sample_custom = watch
g = torch.Generator().manual_seed(0)
pos, neg = [[torch.randn(1, 512, 4096, generator=g), {{}}]], [[torch.randn(1, 512, 4096, generator=g), {{}}]]
SEED, device = 7, comfy.model_management.get_torch_device()
mode = {{"mode": "diffusion forcing", "base_num_frames": 21, "overlap_history": 9, "ar_step": 0,
        "causal_block_size": 1, "addnoise_condition": 20}}
for noise in ("cpu (ComfyUI)", "gpu (SkyReels-V2)"):
    seen.clear()
    report = SampleVideo.execute(model, pos, neg, 32, 32, 37, SEED, 2, 5.0, 8.0, "unipc", 24, mode,
                                 noise=noise).args[1]
    where = device if noise.startswith("gpu") else torch.device("cpu")
    stream = torch.Generator(where).manual_seed(SEED)       # SkyReels-V2: torch.Generator("cuda").manual_seed(seed)
    dtype = torch.bfloat16 if noise.startswith("gpu") else torch.float32    # SkyReels-V2's DF pipeline: bf16
    expected = [torch.randn(n.shape, generator=stream, device=where, dtype=dtype).cpu().float() for n in seen]
    if noise.startswith("cpu"):     # one stream: addnoise draws come between the windows', so the first alone
        seen[1:], expected[1:] = [], []
    same = all(torch.equal(a, b) for a, b in zip(seen, expected))
    line = next((l for l in report.splitlines() if l.startswith("noise:")), "(no noise line: drawn on the CPU)")
    print(f"{{noise:18s}} {{len(seen)}} window(s) checked, noise {{[list(n.shape) for n in seen]}} drawn on "
          f"{{where}} in {{dtype}}: "
          f"{{'bit for bit as expected' if same else 'DIFFERS from the expected draw'}}; report: {{line}}")
    if noise.startswith("gpu"):
        cpu_first = torch.randn(seen[0].shape, generator=torch.Generator().manual_seed(SEED), dtype=dtype).float()
        print(f"gpu first window vs the CPU draw of the same seed: "
              f"{{'equal' if torch.equal(seen[0], cpu_first) else 'different'}} (a GPU draws its own numbers)")
    if not same:
        raise SystemExit(1)
# The one product of DF's bf16 latents whose rounding depends on the device: SkyReels-V2's scheduler multiplies them by a
# ratio of sigmas held as a 0-dim float32 CPU tensor, and so does Sample Video's solver (the same op, whatever it does).
x = torch.randn(65536, generator=torch.Generator().manual_seed(1)).to(device=device, dtype=torch.bfloat16)
ratio = torch.tensor(0.9598462581634521) / torch.tensor(0.9998748898506165)
kept = torch.equal(ratio * x, float(ratio) * x)
print(f"bf16 latents times a 0-dim float32 CPU sigma ratio on {{device}}: "
      f"{{'the ratio kept in float32, as a Python float' if kept else 'the ratio rounded to bf16 first'}}")
"""


def main():
    args, host, gpu, folder = start("noise", 0)
    try:
        write_tiny(os.path.join(folder, "tiny.safetensors"), "DF")
        if gpu:
            props = __import__("torch").cuda.get_device_properties(0)
            print(f"{props.multi_processor_count} multiprocessors (a GPU's random numbers depend on the count)")
        code = PRELUDE.format(host=host, repo=REPO) + IMPORT_PACK.format(repo=REPO) + CHILD.format(folder=folder)
        if gpu:
            code = code.replace("comfy.cli_args.args.cpu = True", "")
        proc = subprocess.run([sys.executable, "-c", code], cwd=host, capture_output=True, text=True)
        print(proc.stdout.strip())
        if proc.returncode:
            raise SystemExit(proc.stderr[-4000:])
    finally:
        shutil.rmtree(folder)


if __name__ == "__main__":
    main()
