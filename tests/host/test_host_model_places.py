"""Where users keep files: several diffusion_models folders (models/unet before models/diffusion_models, extra paths
marked is_default), and the pack's own folder named as a second download names it."""
import os

from comfy_host import IMPORT_PACK, REPO, run_in_host
from helpers import write_tiny, write_tiny_release

from generate_video_fp8 import install_copy

CODE = r"""
import asyncio, os, logging, nodes, folder_paths
said = []
handler = logging.Handler()
handler.emit = lambda record: said.append(record.getMessage())
logging.getLogger().addHandler(handler)
ok = asyncio.run(nodes.load_custom_node({pack!r}))
N = nodes.NODE_CLASS_MAPPINGS
Convert, Load = N["SkyReelsConvertToFP8"], N["SkyReelsFP8ModelLoader"]
first, out, extra = {first!r}, {out!r}, {extra!r}
folder_paths.folder_names_and_paths["diffusion_models"] = ([first, out], folder_paths.supported_pt_extensions)

def error(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs).args
    except Exception as e:
        return f"{{type(e).__name__}}: {{e}}"

result = dict(ok=ok, said=[m for m in said if 'SkyReels' in m])
convert = lambda name: error(Convert.execute, "t2v.safetensors", name, "per-tensor (loads in core)", "e4m3fn")
result["shadowed"] = convert("mine_fp8")
result["not_shadowed"] = convert("other_fp8")[0].splitlines()[-1]
result["release"] = Load.execute("DF/", "auto", "upcast").args[1]
folder_paths.add_model_folder_path("diffusion_models", extra, is_default=True)    # extra_model_paths.yaml's
result["extra"] = convert("on_extra")[0].splitlines()[-1]
result["files"] = sorted(os.listdir(extra))
result["long"] = convert("n" * 195)
# a release folder whose index cannot be read stays listed (loading it says why): the list is the node's widget
import sys
model_files = sys.modules[Load.__module__.rsplit(".", 1)[0] + ".adapters.model_files"]
try:
    result["listed"] = [n for n in model_files.model_list() if n.startswith(("broken", "DF"))]
except Exception as e:
    result["listed"] = f"{{type(e).__name__}}: {{e}}"
"""


def test_outputs_and_release_folders_with_several_diffusion_models_folders(host, tmp_path):
    first, out, extra = (tmp_path / "models" / "unet", tmp_path / "models" / "diffusion_models",
                         tmp_path / "D drive" / "diffusion_models")
    for f in (first, out, extra):
        f.mkdir(parents=True)
    write_tiny(out / "t2v.safetensors", "T2V", seed=1)
    write_tiny(first / "mine_fp8.safetensors", "I2V", seed=2)      # an older file of the output's name, listed first
    write_tiny_release(str(out / "DF"), "DF", seed=3)               # the release the list shows as "DF/" ...
    (first / "DF").mkdir()                                          # ... and a plain folder of that name listed first
    write_tiny(first / "DF" / "converted.safetensors", "T2V", seed=4)
    (out / "broken").mkdir()                                        # a download cut short: its index unreadable
    (out / "broken" / "model-00001-of-00002.safetensors").write_bytes(b"")
    (out / "broken" / "model.safetensors.index.json").write_text("{")
    pack = tmp_path / "custom_nodes" / "ComfyUI-SkyReels-FP8-main (1)"   # a second download, unzipped on Windows
    install_copy(str(pack))
    r = run_in_host(host, CODE.format(pack=str(pack), first=str(first), out=str(out), extra=str(extra)))
    # the nodes load; what the host cannot serve from such a folder is said, with the cure
    assert r["ok"] and r["said"] == ["SkyReels-V2 FP8: ComfyUI cannot serve this pack's workflow templates, help page "
                                     "and frontend file from a folder named 'ComfyUI-SkyReels-FP8-main (1)' (a space, "
                                     "non-ASCII letters, %, # or [ ]): rename the folder to ComfyUI-SkyReels-FP8 and "
                                     "restart ComfyUI"], r["said"]
    assert r["shadowed"] == (f"ValueError: output_name 'mine_fp8': {first / 'mine_fp8.safetensors'} has this name in "
                             "a folder ComfyUI lists first, so the loaders would load that file, not this one; choose "
                             "another name")
    assert not os.path.exists(out / "mine_fp8.safetensors")
    # the file's own path: it is not in models/diffusion_models
    assert r["not_shadowed"] == (f"wrote {os.path.realpath(out / 'other_fp8.safetensors')} (the first "
                                 "diffusion_models folder ComfyUI lists that can be written)")
    assert r["release"].startswith("SkyReels-V2 DF ")
    assert r["extra"] == (f"wrote {os.path.realpath(extra / 'on_extra.safetensors')} (the first diffusion_models "
                          "folder ComfyUI lists that can be written)") and r["files"] == ["on_extra.safetensors"]
    # 195 characters given, 207 written: the message says where the other 12 come from
    assert "it is too long (at most 200 characters) with the .safetensors added;" in r["long"], r["long"]
    assert r["listed"] == ["DF/", "broken/", "DF/converted.safetensors", "broken/model-00001-of-00002.safetensors"], r


def test_folder_names_the_web_server_cannot_serve_are_named(tmp_path, caplog):
    """The entry point's check alone (no host): each character aiohttp's routes quote in a path is named."""
    import importlib.util
    import shutil
    names = {"ComfyUI-SkyReels-FP8": False, "ComfyUI-SkyReels-FP8 (1)": True, "ComfyUI-SkyReels-FP8[1]": True,
             "ComfyUI-SkyReels-FP8#1": True, "ComfyUI-SkyReels-FP8-ü": True, "ComfyUI-SkyReels-FP8%1": True}
    for i, (name, warned) in enumerate(names.items()):
        (tmp_path / name).mkdir()
        shutil.copyfile(os.path.join(REPO, "__init__.py"), tmp_path / name / "__init__.py")
        caplog.clear()
        spec = importlib.util.spec_from_file_location(f"skyreels_entry_{i}", str(tmp_path / name / "__init__.py"))
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
        assert any("cannot serve" in r.getMessage() for r in caplog.records) == warned, (name, caplog.records)


def test_the_script_finds_files_in_the_folders_of_the_hosts_extra_model_paths(host, tmp_path):
    # Portable installs share models with other apps through extra_model_paths.yaml, which the ComfyUI that
    # generate_video_fp8.py starts reads too: the script's own checks look there as well. The host is linked
    # entry by entry, with a yaml of its own.
    from generate_video_fp8 import host_folders
    linked = tmp_path / "ComfyUI"
    linked.mkdir()
    for name in os.listdir(host):
        if name not in ("extra_model_paths.yaml", "models"):
            os.symlink(os.path.join(host, name), linked / name)
    shared = tmp_path / "shared models"
    (linked / "extra_model_paths.yaml").write_text(f"shared:\n  base_path: {shared}\n  text_encoders: te\n  vae: vae\n")
    folders = host_folders(str(linked))
    assert str(shared / "te") in folders["text_encoders"] and str(shared / "vae") in folders["vae"], folders
    assert not any(str(shared) in f for f in folders["diffusion_models"]), folders


OTHER_DRIVE = r"""
import ntpath, os, types
from skyreels_pack.nodes.adapters import model_files
# Windows' path rules (ntpath), with models\diffusion_models\wan a junction to another drive
links = {"C:\\ComfyUI\\models\\diffusion_models\\wan": "D:\\wan"}

def realpath(p):
    p = ntpath.normpath(p)
    return next((b + p[len(a):] for a, b in links.items() if p.lower().startswith(a.lower())), p)

path = types.SimpleNamespace(**{n: getattr(ntpath, n) for n in dir(ntpath) if not n.startswith("__")})
path.realpath = realpath
model_files.os = types.SimpleNamespace(path=path, sep="\\", fsencode=os.fsencode)
model_files._output_folder = lambda: "C:\\ComfyUI\\models\\diffusion_models"
result = {}
for name in ("sub\\ok.safetensors", "wan\\mine_fp8.safetensors"):
    try:
        result[name] = model_files.output_path(name)
    except ValueError as e:
        result[name] = str(e)
"""


def test_an_output_name_through_a_junction_to_another_drive_is_named(host):
    # Windows' commonpath raises for two drives: Convert to FP8 said only "Paths don't have the same drive".
    r = run_in_host(host, IMPORT_PACK.format(repo=REPO) + OTHER_DRIVE)
    assert r["sub\\ok.safetensors"] == "C:\\ComfyUI\\models\\diffusion_models\\sub\\ok.safetensors", r
    assert r["wan\\mine_fp8.safetensors"] == ("output_name 'wan\\\\mine_fp8.safetensors' leads outside "
                                              "models/diffusion_models (through a link)"), r
