"""The pack on a simulated Windows Python (tests/windows_sim.py): after the host is imported, resource / fcntl /
termios / pwd / grp / ray cannot be imported, os.pread / preadv / pwrite / fork are gone, os.symlink raises,
/proc is not there for the pack, and open files cannot be replaced. Paths have spaces, non-ASCII characters and
Windows-style backslashes."""
import os
import subprocess
import sys

import av
import safetensors.torch
import torch
import windows_sim
from comfy_host import REPO, run_in_host
from helpers import write_tiny

from helpers import write_tiny_release

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CODE = r"""
import asyncio, hashlib, logging, os, nodes, folder_paths, comfy.sd, comfy.utils, execution, torch
sys.path.insert(0, {tests!r})
import windows_sim
windows_sim.apply(watch=[{repo!r}], extra_modules=("ray",))   # the host is imported; from here on: "Windows"

lines = []
handler = logging.Handler()
handler.emit = lambda record: lines.append(record.getMessage())
logging.getLogger("skyreels_fp8").addHandler(handler)

ok = asyncio.run(nodes.load_custom_node({repo!r}))
N = nodes.NODE_CLASS_MAPPINGS
Convert, Load, Patch, Sample, Parallel = (N[k] for k in ("SkyReelsConvertToFP8", "SkyReelsFP8ModelLoader",
    "SkyReelsPatchSageAttention", "SkyReelsSampleVideo", "SkyReelsParallelConfig"))
folder = {folder!r}
folder_paths.add_model_folder_path("diffusion_models", folder, is_default=True)
out = os.path.join(folder, "t2v fp8 ü.safetensors")

def error(fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except Exception as e:
        return f"{{type(e).__name__}}: {{e}}"

def digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()

result = dict(ok=ok, nodes=sorted(k for k in N if k.startswith("SkyReels")))
convert = lambda **kw: Convert.execute(**{{**dict(model_name="t2v bf16 ü.safetensors", output_name="t2v fp8 ü",
    granularity="per-tensor (loads in core)", fp8_type="e4m3fn"), **kw}}).args[0]
result["convert"] = convert()
import convert_to_fp8
result["cli"] = convert_to_fp8.main([os.path.join(folder, "t2v bf16 ü.safetensors"),
                                     os.path.join(folder, "cli fp8.safetensors"), "--granularity", "channel"])

# Windows file semantics: a file another program holds (or the host maps) is not replaced, nor lost.
before = digest(out)
with windows_sim.hold(out):
    result["held"] = error(convert, overwrite=True, granularity="per-channel (more accurate)")
result["held_unchanged"] = digest(out) == before
# Our loader reading the file while Convert to FP8 replaces it (the progress hook runs mid-conversion).
Checkpoint = sys.modules[Load.__module__].Checkpoint     # what Load FP8 SkyReels Model reads files with
kept = []
def open_in_loader(value, total, preview, node_id=None):
    if value >= total // 2 and not kept:
        kept.append(Checkpoint(out))
comfy.utils.set_progress_bar_global_hook(open_in_loader)
result["loader_holds"] = error(convert, overwrite=True, granularity="per-channel (more accurate)")
kept[0].close()
result["loader_holds_unchanged"] = digest(out) == before
# Loading the file while it is converted: the loader reads the old file whole; then the new one is in place.
loaded = []
def load_midway(value, total, preview, node_id=None):
    if value >= total // 2 and not loaded:
        loaded.append("loading")            # the loader's own progress comes back here
        loaded[0] = Load.execute("t2v fp8 ü.safetensors", "auto", "auto").args[1]
comfy.utils.set_progress_bar_global_hook(load_midway)
convert(overwrite=True, granularity="per-channel (more accurate)")
comfy.utils.set_progress_bar_global_hook(None)
result["load_midway"] = loaded[0]
result["replaced"] = digest(out) != before
result["leftovers"] = sorted(f for f in os.listdir(folder) if f.endswith(".tmp"))
result["bad_names"] = {{name: error(convert, output_name=name)
                       for name in ("CON", "lpt1.safetensors", "C:\\models\\x", "\\\\server\\share\\x", "..\\x",
                                    "a|b", "x. ")}}

model, report = Load.execute("t2v fp8 ü.safetensors", "auto", "auto").args
result["load"] = report
result["shards"] = Load.execute("SkyReels V2 DF ü/", "auto", "auto").args[1]
result["backslash"] = Load.execute("sub dir\\t2v bf16 ü.safetensors", "bf16", "auto").args[1]
df = Load.execute("SkyReels V2 DF ü/", "auto", "auto").args[0]

patched = Patch.execute(df, "auto").args[0]
g = torch.Generator().manual_seed(0)
pos = [[torch.randn(1, 8, 4096, generator=g), {{}}]]
neg = [[torch.randn(1, 8, 4096, generator=g), {{}}]]
ARGS = dict(width=32, height=32, frames=5, seed=1, steps=1, cfg=3.0, shift=8.0, sampler="unipc", fps=24)
runs = {{mode: Sample.execute(patched, pos, neg, mode={{"mode": mode}}, **ARGS).args  # DF widgets: their defaults
        for mode in ("standard", "diffusion forcing")}}
result["samples_finite"] = all(bool(torch.isfinite(s["samples"]).all()) for s, *_ in runs.values())
result["reports"] = [r for _, r, *_ in runs.values()]
# On Windows psutil reports the peak working set (since the process started): the report gives it.
import collections, psutil
run_report = sys.modules[Sample.__module__.rsplit(".", 1)[0] + ".adapters.run_report"]
pmem = collections.namedtuple("pmem", "rss vms peak_wset")
psutil.Process.memory_info = lambda self: pmem(100 * 2**20, 0, 300 * 2**20)
result["windows_peak"] = run_report.Meter(torch.device("cpu")).finish().memory
config = Parallel.execute(2, "auto", "").args[0]
result["parallel"] = error(Sample.execute, patched, pos, neg, mode={{"mode": "standard"}}, parallel=config, **ARGS)
result["log"] = lines
"""


def test_pack_works_on_a_simulated_windows_python(host, tmp_path):
    folder = tmp_path / "mödels with spaces" / "diffusion_models"     # Convert to FP8 writes to a diffusion_models
    folder.mkdir(parents=True)
    write_tiny(folder / "t2v bf16 ü.safetensors", "T2V", seed=1)
    (folder / "sub dir").mkdir()
    write_tiny(folder / "sub dir" / "t2v bf16 ü.safetensors", "T2V", seed=1)
    write_tiny_release(str(folder / "SkyReels V2 DF ü"), "DF", seed=2)
    r = run_in_host(host, CODE.format(repo=REPO, tests=TESTS, folder=str(folder)))

    assert r["ok"] and r["nodes"] == ["SkyReelsConvertToFP8", "SkyReelsFP8ModelLoader", "SkyReelsParallelConfig",
                                      "SkyReelsPatchSageAttention", "SkyReelsSampleVideo", "SkyReelsTeaCache"]
    # a diffusion_models folder other than the host's own: the report gives the file's whole path
    assert f"wrote {os.path.realpath(folder / 't2v fp8 ü.safetensors')} (the first" in r["convert"] and r["cli"] == 0
    # A held file: a clear message naming it, the old file intact, no temp file left.
    for case in ("held", "loader_holds"):
        assert r[case].startswith(f"ValueError: {folder / 't2v fp8 ü.safetensors'}: cannot be replaced"), r[case]
        assert "Nothing was changed: close it and run again, or choose another output name" in r[case]
        assert r[case + "_unchanged"]
    assert "per-tensor" in r["load_midway"] and r["replaced"] and r["leftovers"] == []
    bad = r["bad_names"]
    assert bad["CON"].endswith("'CON': CON is a reserved device name on Windows; give a plain file name such as "
                               "my_model_fp8.safetensors (it is written to models/diffusion_models)"), bad
    assert "lpt1 is a reserved device name" in bad["lpt1.safetensors"]
    assert "it names a drive" in bad["C:\\models\\x"]
    assert "it is an absolute path" in bad["\\\\server\\share\\x"]
    assert "it is empty or a folder reference" in bad["..\\x"]
    assert "a character Windows does not allow" in bad["a|b"] and "ends in a dot or a space" in bad["x. "]
    assert "per-channel" in r["load"] and "DF" in r["shards"] and "T2V" in r["backslash"]
    assert r["samples_finite"]
    for report in r["reports"]:   # no /proc, no resource, no psutil peak on Linux: says so instead of failing
        assert "peak RSS n/a (this OS does not report it;" in report, report
        assert "attention: auto - 0 calls 8-bit" in report     # CPU: the kernels fall back (below)
        assert report.isascii()    # the host logs it: piped, Japanese and Korean code pages have no em dash
    assert r["windows_peak"] == "peak RSS 300 MiB (process, since ComfyUI started; 100 MiB before the run)"
    fallbacks = [l for l in r["log"] if "attention stays exact" in l]
    assert len(fallbacks) == 1, r["log"]                       # once, for both runs
    assert r["parallel"] == ("ValueError: Sample Video: parallel: Ray is not installed: `pip install ray` in "
                             "ComfyUI's Python (single-device runs need nothing)")


def test_headless_job_on_a_simulated_windows_python(host, tmp_path):
    """generate_video_fp8.py, and the ComfyUI it starts, both "on Windows": no symlink to install the pack; stdout
    piped, so in the code page (cp1252), which has no Chinese: the video's name is escaped when printed."""
    site = os.path.join(TESTS, "windows_site")
    env = {**os.environ, "COMFYUI_PATH": host, "PYTHONPATH": os.pathsep.join([site, TESTS]),
           "PYTHONIOENCODING": windows_sim.ANSI_CODE_PAGE}
    script = (f"import sys, runpy, windows_sim; windows_sim.apply(watch=[{REPO!r}])\n"
              f"sys.argv = ['generate_video_fp8.py', '--output', 'out dir/démo ü 天鹅.mp4', '--seed', '3']\n"
              f"runpy.run_path({os.path.join(REPO, 'generate_video_fp8.py')!r}, run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          encoding=windows_sim.ANSI_CODE_PAGE, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with av.open(str(tmp_path / "out dir" / "démo ü 天鹅.mp4")) as c:
        assert sum(1 for _ in c.decode(video=0)) == 57
    assert "wrote out dir/démo ü \\u5929\\u9e45.mp4" in proc.stdout
    assert "peak RSS n/a" in proc.stdout          # the report came from the simulated host process


def test_headless_model_paths_reach_the_host_on_a_simulated_windows_python(host, tmp_path):
    """The extra_model_paths.yaml generate_video_fp8.py writes for --model_id / --text_encoder / --vae, written "on
    Windows" (text files in cp1252) for a folder named as users name them, then read by the host's own loader."""
    folder = tmp_path / "AI #2 Zoë's 模型 & more"
    folder.mkdir()
    write_tiny(folder / "t2v ü.safetensors", "T2V")
    for name in ("umt5 ü.safetensors", "vae ü.safetensors"):     # only their names matter; link_models checks
        safetensors.torch.save_file({"x": torch.zeros(1)}, str(folder / name))  # that their headers are whole
    r = run_in_host(host, YAML_CODE.format(tests=TESTS, folder=str(folder), base=str(tmp_path)))
    assert r == {kind: str(folder / name) for kind, name in (("diffusion_models", "t2v ü.safetensors"),
                 ("text_encoders", "umt5 ü.safetensors"), ("vae", "vae ü.safetensors"))}, r


YAML_CODE = r"""
import os, folder_paths
sys.path.insert(0, {tests!r})
import windows_sim
windows_sim.apply()
from generate_video_fp8 import link_models, parse_args
from utils.extra_config import load_extra_path_config
folder = {folder!r}
args = parse_args(["--text_encoder", os.path.join(folder, "umt5 ü.safetensors"),
                   "--vae", os.path.join(folder, "vae ü.safetensors")])
names = link_models({base!r}, args, None, os.path.join(folder, "t2v ü.safetensors"))
load_extra_path_config(os.path.join({base!r}, "extra_model_paths.yaml"))
result = {{kind: folder_paths.get_full_path(kind, name) for kind, name in names.items()}}
"""
