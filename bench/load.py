#!/usr/bin/env python3
"""Peak memory of loading the real SkyReels-V2 1.3B shapes, our loader vs core ComfyUI (a script, not a test).

    python bench/load.py [--host PATH]

Writes a synthetic bf16 checkpoint with the real 1.3B shapes and its FP8 conversion to a temp folder, then loads
each in a fresh host process (CPU) and prints the peak RSS of the load (the process's peak, reset just before the
load, minus its RSS then) and the bytes of the model's weights in memory:
  (i) our fp8 file with Load FP8 SkyReels Model, (ii) the bf16 file quantized while loading, (iii) core
  UNETLoader on the bf16 file, (iv) core UNETLoader weight_dtype=fp8_e4m3fn on the bf16 file.
Peaks vary from run to run by a few hundred MiB (allocator behaviour), so each load is repeated and the median
is used.
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

from comfy_host import IMPORT_PACK, PRELUDE, find_host  # noqa: E402
from convert import write_synthetic  # noqa: E402

from quant import Options, convert  # noqa: E402

CHILD = PRELUDE + IMPORT_PACK + r"""
import torch, folder_paths, nodes
from comfy_kitchen.tensor import QuantizedTensor

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024

from skyreels_pack.nodes.loader import LoadFP8SkyReelsModel
folder_paths.add_model_folder_path("diffusion_models", {folder!r}, is_default=True)
before = status("VmRSS")
open("/proc/self/clear_refs", "w").write("5")
kind, name = {kind!r}, {name!r}
if kind == "ours":
    patcher = LoadFP8SkyReelsModel.execute(name, "auto", "upcast").args[0]
else:
    patcher = nodes.UNETLoader().load_unet(name, kind)[0]
peak = status("VmHWM")
weights = 0
for p in patcher.model.diffusion_model.parameters():
    weights += p._qdata.nbytes + p._params.scale.nbytes if isinstance(p, QuantizedTensor) else p.nbytes
print(json.dumps(dict(before=before, peak=peak, weights=weights)))
"""

MiB = 1024 ** 2


def measure(host, folder, kind, name):
    code = CHILD.format(host=host, repo=REPO, folder=folder, kind=kind, name=name)
    proc = subprocess.run([sys.executable, "-c", code], cwd=host, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def median_run(host, folder, kind, name, repeats):
    runs = [measure(host, folder, kind, name) for _ in range(repeats)]
    peaks = sorted(r["peak"] - r["before"] for r in runs)
    return {"peak": peaks[len(peaks) // 2], "low": peaks[0], "high": peaks[-1], "weights": runs[0]["weights"]}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", help="ComfyUI folder (default: found as the tests find it)")
    p.add_argument("--repeats", type=int, default=3, help="loads of each kind; the median peak is reported")
    args = p.parse_args()
    host = args.host or find_host()
    if not host:
        raise SystemExit("no ComfyUI host found: set COMFYUI_PATH or pass --host")
    print(f"device: CPU ({platform.machine()}, {os.cpu_count()} cores); host {host}")
    folder = tempfile.mkdtemp(prefix="skyreels-load-")
    try:
        bf16 = os.path.join(folder, "bf16_1.3b.safetensors")
        fp8 = os.path.join(folder, "fp8_1.3b.safetensors")
        write_synthetic(bf16, "1.3B")
        convert(bf16, fp8, Options(granularity="channel"))
        runs = [("(i) our fp8 file, our loader", "ours", os.path.basename(fp8)),
                ("(ii) bf16 file, quantized while loading", "ours", os.path.basename(bf16)),
                ("(iii) core UNETLoader, bf16 file", "default", os.path.basename(bf16)),
                ("(iv) core UNETLoader fp8_e4m3fn, bf16 file", "fp8_e4m3fn", os.path.basename(bf16))]
        res = {label: median_run(host, folder, kind, name, args.repeats) for label, kind, name in runs}
        fp8_size = os.path.getsize(fp8)
        print(f"files: bf16 {os.path.getsize(bf16) / MiB:.0f} MiB, fp8 {fp8_size / MiB:.0f} MiB")
        print(f"{'load':45s} {'peak RSS (median, range of ' + str(args.repeats) + ')':>32s} {'weights':>10s}")
        for label, r in res.items():
            print(f"{label:45s} {r['peak'] / MiB:8.0f} MiB ({r['low'] / MiB:5.0f}-{r['high'] / MiB:5.0f}) "
                  f"{r['weights'] / MiB:12.0f} MiB")
        peak = {k: v["peak"] for k, v in res.items()}
        w = {k: v["weights"] for k, v in res.items()}
        keys = list(res)
        print(f"(i) peak / fp8 file size: {peak[keys[0]] / fp8_size:.2f}   (goal <= 1.2)")
        print(f"(ii) peak / (iv) peak: {peak[keys[1]] / peak[keys[3]]:.2f}   (goal <= 1.0)")
        print(f"(i) weights / bf16 weights (2 bytes each): {w[keys[0]] / (os.path.getsize(bf16)):.3f}   "
              f"(goal <= 0.51; (iii) on this CPU holds {w[keys[2]] / os.path.getsize(bf16):.2f}x: "
              "the host keeps weights in fp32 on CPU)")
    finally:
        shutil.rmtree(folder)


if __name__ == "__main__":
    main()
