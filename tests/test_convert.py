import hashlib
import importlib
import io
import json
import os
import re
import subprocess
import sys
import time

import pytest
import safetensors.torch
import torch
from safetensors import safe_open

import quant
from quant import Checkpoint, CheckpointError, Options, convert, tiny
from quant.policy import should_quantize
from helpers import REPO, write_tiny

convert_module = importlib.import_module("quant.convert")  # the package exports a function of that name
HOST = importlib.import_module("quant.writer")._HOST        # temp files carry the machine's name and the process id


def read(path):
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


@pytest.mark.parametrize("fp8,granularity,fmt", [
    ("e4m3fn", "tensor", "float8_e4m3fn"), ("e5m2", "tensor", "float8_e5m2"),
    ("e4m3fn", "channel", "skyreels_fp8_e4m3fn_per_channel")])
def test_output_is_the_hosts_mixed_precision_format(tmp_path, fp8, granularity, fmt):
    src = tmp_path / "src.safetensors"
    sd = write_tiny(src, "I2V")
    report = convert(str(src), str(tmp_path / "out.safetensors"), Options(fp8=fp8, granularity=granularity))
    out, meta = read(tmp_path / "out.safetensors")
    layers = json.loads(meta["_quantization_metadata"])["layers"]
    quantized = [k for k in sd if should_quantize(k, 2)]
    assert sorted(layers) == sorted(k[:-7] for k in quantized) and report.quantized == len(quantized) == 24
    for k in quantized:
        layer = k[:-7]
        assert out[k].dtype == quant.fp8.FP8_DTYPES[fp8] and out[k].shape == sd[k].shape
        assert out[f"{layer}.weight_scale"].dtype == torch.float32
        assert out[f"{layer}.weight_scale"].shape == (() if granularity == "tensor" else (sd[k].shape[0], 1))
        assert json.loads(bytes(out[f"{layer}.comfy_quant"].tolist())) == {"format": fmt} == layers[layer]
    for k in sd:
        if k not in quantized:
            assert torch.equal(out[k], sd[k]), k
    ours = json.loads(meta["skyreels_fp8"])
    assert ours["source"] == "src.safetensors" and ours["source_bytes"] == os.path.getsize(src)
    assert (ours["fp8"], ours["granularity"], ours["pack_version"]) == (fp8, granularity, quant.__version__)
    assert ours["model"] == "SkyReels-V2 I2V custom (dim 256), 2 blocks"
    assert set(ours["errors"]) == set(layers)
    assert max(ours["errors"].values()) <= (0.035 if fp8 == "e4m3fn" else 0.07)
    # Every tensor starts at an offset aligned for its dtype (SafetensorsWriter's promise to readers that view the
    # mapped bytes as tensors): the data after an 8-aligned header, larger element sizes first.
    with open(tmp_path / "out.safetensors", "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    sizes = {"F8_E4M3": 1, "F8_E5M2": 1, "U8": 1, "BF16": 2, "F16": 2, "F32": 4}
    assert n % 8 == 0 and not [k for k, h in header.items()
                               if k != "__metadata__" and h["data_offsets"][0] % sizes[h["dtype"]]]


def test_keep_blocks_and_fp32_source(tmp_path):
    src = tmp_path / "src.safetensors"
    sd = write_tiny(src, "T2V", dtype=torch.float32, num_layers=4)
    report = convert(str(src), str(tmp_path / "o.safetensors"), Options(keep_first_blocks=1, keep_last_blocks=1))
    out, meta = read(tmp_path / "o.safetensors")
    assert {k.split(".")[1] for k in json.loads(meta["_quantization_metadata"])["layers"]} == {"1", "2"}
    assert out["blocks.0.self_attn.q.weight"].dtype == torch.bfloat16  # kept blocks: fp32 stored as bf16
    assert torch.equal(out["blocks.3.ffn.0.weight"], sd["blocks.3.ffn.0.weight"].bfloat16())
    assert report.quantized == 20 and report.kept == len(sd) - 20


def test_verify_reads_back_the_same_errors(tmp_path):
    src = tmp_path / "src.safetensors"
    write_tiny(src, "DF")
    report = convert(str(src), str(tmp_path / "o.safetensors"), Options(granularity="channel"), verify=True)
    assert report.verified.keys() == report.errors.keys()
    for k, v in report.errors.items():
        assert report.verified[k] == pytest.approx(v, rel=1e-3)
    assert "worst layers" in report.table()


def test_unexpected_keys_are_kept_and_named(tmp_path):
    src = tmp_path / "src.safetensors"
    sd = tiny.state_dict(tiny.info("T2V"))
    sd["extra.lora_scale"] = torch.ones(3)
    safetensors.torch.save_file(sd, str(src))
    report = convert(str(src), str(tmp_path / "o.safetensors"))
    assert any("extra.lora_scale" in w for w in report.warnings)
    assert torch.equal(read(tmp_path / "o.safetensors")[0]["extra.lora_scale"], torch.ones(3))


def leftovers(folder, keep):
    return sorted(set(os.listdir(folder)) - set(keep))


def test_failure_mid_write_leaves_nothing(tmp_path, monkeypatch):
    src = tmp_path / "src.safetensors"
    write_tiny(src, "T2V")
    calls = []
    real = convert_module.quantize_weight_chunked

    def failing(*a, **k):
        calls.append(1)
        if len(calls) == 5:
            raise OSError("disk full (injected)")
        return real(*a, **k)

    monkeypatch.setattr(convert_module, "quantize_weight_chunked", failing)
    with pytest.raises(OSError, match="injected"):
        convert(str(src), str(tmp_path / "o.safetensors"))
    assert leftovers(tmp_path, ["src.safetensors"]) == []


def test_a_full_disk_is_a_message_and_leaves_nothing(tmp_path):
    # A real refusal by the OS: a file size limit of 64 KiB (RLIMIT_FSIZE, with SIGXFSZ ignored) makes the write
    # fail with EFBIG, as a full disk fails with ENOSPC. The message names the output, not the hidden temp file.
    resource = pytest.importorskip("resource")
    src, dst = tmp_path / "src.safetensors", tmp_path / "out" / "o.safetensors"
    write_tiny(src, "T2V")
    dst.parent.mkdir()

    def limit():
        import signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, 1 << 16))

    run = subprocess.run([sys.executable, os.path.join(REPO, "convert_to_fp8.py"), str(src), str(dst)],
                         capture_output=True, text=True, preexec_fn=limit)
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2 and len(lines) == 1, run.stderr
    assert re.fullmatch(re.escape(f"convert_to_fp8: {dst}: cannot be written (File too large): the disk is full, or "
                                  "the file too large for it (it needs ") + r"\d+\.\d MiB\)\. Nothing was written",
                        lines[0]), lines
    assert os.listdir(dst.parent) == []


def test_a_name_too_long_with_the_temp_files_additions_says_so(tmp_path, monkeypatch):
    # 200 characters pass name_problem; a 63-character machine name (Kubernetes pods have them) and the process id
    # in the temp file's name take it past the 255 a file system allows (it said: check that you may write there).
    # The words in parentheses are Linux's for ENAMETOOLONG.
    src, dst = tmp_path / "src.safetensors", tmp_path / ("a" * 188 + ".safetensors")
    write_tiny(src, "T2V")
    monkeypatch.setattr(importlib.import_module("quant.writer"), "_HOST", "h" * 63)
    with pytest.raises(CheckpointError) as e:
        convert(str(src), str(dst))
    assert str(e.value) == f"{dst}: cannot be written (File name too long): give it a shorter name. Nothing was written"
    assert leftovers(tmp_path, ["src.safetensors"]) == []


def test_interrupt_leaves_nothing(tmp_path):
    src = tmp_path / "src.safetensors"
    write_tiny(src, "T2V")
    seen = []

    def interrupt():
        seen.append(1)
        if len(seen) == 10:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        convert(str(src), str(tmp_path / "o.safetensors"), check_interrupt=interrupt)
    assert leftovers(tmp_path, ["src.safetensors"]) == []


WRITER = """
import os, signal, sys, time, torch
from quant.writer import SafetensorsWriter
w = SafetensorsWriter(sys.argv[1], {"a": (torch.float32, (4,))})
w.write("a", torch.zeros(4))
print(os.getpid(), flush=True)
if sys.argv[2] == "kill":
    os.kill(os.getpid(), signal.SIGKILL)    # as a closed console or the OOM killer ends it: no finally runs
time.sleep(120)
"""


@pytest.mark.skipif(os.name == "nt", reason="POSIX signals; on Windows a live writer's open file cannot be removed")
def test_a_killed_writers_temp_file_goes_at_the_next_write_in_its_folder(tmp_path, caplog):
    src, dst = tmp_path / "src.safetensors", tmp_path / "o.safetensors"
    write_tiny(src, "T2V")
    live = subprocess.Popen([sys.executable, "-c", WRITER, str(dst), "live"], cwd=REPO, stdout=subprocess.PIPE,
                            text=True)
    try:
        running = f".o.safetensors.{HOST}-{live.stdout.readline().strip()}.tmp"
        # killed writing another name (a user who then chose a new one): its file goes too
        killed = subprocess.run([sys.executable, "-c", WRITER, str(tmp_path / "first try.safetensors"), "kill"],
                                cwd=REPO, capture_output=True, text=True)
        stale = f".first try.safetensors.{HOST}-{killed.stdout.strip()}.tmp"
        assert killed.returncode == -9 and sorted(os.listdir(tmp_path)) == sorted([running, stale, "src.safetensors"])
        size = (tmp_path / stale).stat().st_size
        others = [f".other.safetensors.{HOST}-1.tmp",                  # a live process's (pid 1), of another output
                  f".o.safetensors.another-machine-{killed.stdout.strip()}.tmp",   # a shared folder: not judged here
                  ".old.safetensors.tmp"]                                    # no writer's name: not ours to judge
        for name in others:
            (tmp_path / name).write_bytes(b"x")
        with caplog.at_level("WARNING", logger="skyreels_fp8"):
            convert(str(src), str(dst))
        assert sorted(os.listdir(tmp_path)) == sorted([*others, running, "o.safetensors", "src.safetensors"])
        assert [r.getMessage() for r in caplog.records] == [
            f"{tmp_path}: removed {stale} ({size} bytes), the temp file of a write that was killed before it finished"]
    finally:
        live.kill()
        live.wait()


def test_on_windows_psutil_says_which_writers_are_gone(tmp_path, monkeypatch):
    # os.kill(pid, 0) would end the process there; psutil asks instead, and without it nothing is removed
    pytest.importorskip("psutil")    # ComfyUI's requirement
    from quant import writer
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    names = [f".a.safetensors.{HOST}-{gone.stdout.strip()}.tmp", f".b.safetensors.{HOST}-{os.getppid()}.tmp"]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    monkeypatch.setattr(os, "name", "nt")
    monkeypatch.setitem(sys.modules, "psutil", None)
    writer._remove_stale(str(tmp_path / "o.safetensors"))
    assert sorted(os.listdir(tmp_path)) == sorted(names)
    monkeypatch.delitem(sys.modules, "psutil")
    writer._remove_stale(str(tmp_path / "o.safetensors"))
    assert os.listdir(tmp_path) == [names[1]]


def test_a_destination_in_use_is_a_message_and_nothing_changes(tmp_path, monkeypatch):
    # Windows refuses to replace a file another program (or a model ComfyUI mapped) holds open: PermissionError.
    src, dst = tmp_path / "src.safetensors", tmp_path / "o.safetensors"
    write_tiny(src, "T2V")
    dst.write_bytes(b"the old file")
    real = os.replace

    def refused(winerror, text):
        def replace(a, b):
            if os.fspath(b) == str(dst):
                e = PermissionError(13, text, str(b))
                if winerror:
                    e.winerror = winerror
                raise e
            return real(a, b)
        return replace

    monkeypatch.setattr(os, "replace", refused(32, "The process cannot access the file because it is being used by "
                                                   "another process"))
    waits = []
    monkeypatch.setattr(time, "sleep", waits.append)
    with pytest.raises(CheckpointError) as e:
        convert(str(src), str(dst), overwrite=True)
    assert waits == [0.1, 0.2, 0.4, 0.8, 1.5]      # tried again for 3 s: a virus scanner holds a new file a moment
    assert str(e.value).startswith(f"{dst}: cannot be replaced (The process cannot access the file because it is "
                                   "being used by another process): it is in use")
    assert str(e.value).endswith("Nothing was changed: close it and run again, or choose another output name")
    assert dst.read_bytes() == b"the old file" and leftovers(tmp_path, ["src.safetensors", "o.safetensors"]) == []
    # held a moment (twice refused, then let go): the new file is in place
    held, tries = refused(32, "The process cannot access the file because it is being used by another process"), []

    def let_go(a, b):
        tries.append(b)
        return (held if len(tries) <= 2 else real)(a, b)
    monkeypatch.setattr(os, "replace", let_go)
    waits.clear()
    convert(str(src), str(dst), overwrite=True)
    assert waits == [0.1, 0.2] and dst.read_bytes() != b"the old file" and Checkpoint(str(dst)).names
    if os.name == "nt":     # the rest is what the same error means elsewhere
        return
    # On Linux the same error means permissions (a sticky folder, an immutable file), not a file in use.
    monkeypatch.setattr(os, "replace", refused(None, "Permission denied"))
    waits.clear()
    before = dst.read_bytes()
    with pytest.raises(CheckpointError, match="cannot be replaced \\(Permission denied\\): check that you may write "
                                              "the file and its folder. Nothing was changed"):
        convert(str(src), str(dst), overwrite=True)
    assert dst.read_bytes() == before and leftovers(tmp_path, ["src.safetensors", "o.safetensors"]) == []
    assert waits == []


def test_a_temp_file_removed_by_another_program_is_a_message(tmp_path, monkeypatch):
    src, dst = tmp_path / "src.safetensors", tmp_path / "o.safetensors"
    write_tiny(src, "T2V")

    def gone(a, b):
        raise FileNotFoundError(2, "No such file or directory", a)
    monkeypatch.setattr(os, "replace", gone)
    with pytest.raises(CheckpointError, match=re.escape(f"{dst}: its temp file ") + ".* was removed by another "
                                              "program before it was complete; run again"):
        convert(str(src), str(dst))


CHARACTER = 'it has a character Windows does not allow in file names (< > : " | ? * or a control character)'


@pytest.mark.parametrize("name,why", [
    ("CON.safetensors", "CON is a reserved device name on Windows"),
    ("com1.fp8.safetensors", "com1 is a reserved device name on Windows"),
    ("NUL .safetensors", "NUL is a reserved device name on Windows"),     # spaces before the dot: still NUL
    ("CONIN$.safetensors", "CONIN$ is a reserved device name on Windows"),
    ("COM\u00b9.safetensors", "COM\u00b9 is a reserved device name on Windows"),
    ("a:b.safetensors", CHARACTER),
    ("what?.safetensors", CHARACTER),
    ("x" * 201 + ".safetensors", "it is too long (at most 200 characters)"),
    ("模" * 79 + ".safetensors", "it is too long (249 bytes as this OS stores it; at most 235)"),   # 255 with the temp
])
def test_output_names_windows_cannot_make_are_refused(tmp_path, monkeypatch, name, why):
    # On Windows "CON.safetensors" is the console, and ':' starts an alternate data stream. (The CLI applies the
    # running OS's rules; the node applies Windows' everywhere: test_host_windows_sim.py.)
    monkeypatch.setattr(convert_module, "WINDOWS", True)
    src = tmp_path / "src.safetensors"
    write_tiny(src, "T2V")
    with pytest.raises(CheckpointError) as e:
        convert(str(src), str(tmp_path / name))
    assert str(e.value) == f"{tmp_path / name}: {why}; choose another output name"
    assert leftovers(tmp_path, ["src.safetensors"]) == []


def test_linux_names_stay_allowed_on_linux(tmp_path, monkeypatch):
    monkeypatch.setattr(convert_module, "WINDOWS", False)
    src = tmp_path / "src.safetensors"
    write_tiny(src, "T2V")
    convert(str(src), str(tmp_path / "model_12:30.safetensors"))
    assert (tmp_path / "model_12:30.safetensors").exists()


def test_overwrite_only_when_asked(tmp_path):
    src = tmp_path / "src.safetensors"
    write_tiny(src, "T2V")
    dst = tmp_path / "o.safetensors"
    dst.write_bytes(b"old")
    with pytest.raises(CheckpointError, match=re.escape("already exists; to replace it turn on overwrite (convert_to_fp8.py: --overwrite)")):
        convert(str(src), str(dst))
    assert dst.read_bytes() == b"old"
    convert(str(src), str(dst), overwrite=True)
    assert read(dst)[0]["blocks.0.ffn.0.weight"].dtype == torch.float8_e4m3fn


# ---- the command line: every bad input exits 2 with one line, leaves no file and the source untouched ----

def run_cli(*args, encoding=None):
    """`encoding`: the code page of a piped stdout on Windows (PYTHONIOENCODING simulates it)."""
    env = {**os.environ, "PYTHONIOENCODING": encoding} if encoding else None
    return subprocess.run([sys.executable, os.path.join(REPO, "convert_to_fp8.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=120, env=env, encoding=encoding)


def digest(path):
    if os.path.isdir(path):
        return sorted((f, digest(os.path.join(path, f))) for f in os.listdir(path))
    return hashlib.sha256(open(path, "rb").read()).hexdigest() if os.path.exists(path) else None


def _truncated(tmp_path):
    write_tiny(tmp_path / "full.safetensors", "T2V")
    data = (tmp_path / "full.safetensors").read_bytes()
    (tmp_path / "full.safetensors").unlink()
    (tmp_path / "src.safetensors").write_bytes(data[: len(data) // 2])
    return tmp_path / "src.safetensors", "truncated"


def _garbage(tmp_path):
    (tmp_path / "src.safetensors").write_bytes(b"<html>404 Not Found</html>" * 40)
    return tmp_path / "src.safetensors", "not a valid .safetensors file"


def _other_arch(tmp_path):
    safetensors.torch.save_file({"model.layers.0.mlp.up_proj.weight": torch.ones(4, 4)},
                                str(tmp_path / "src.safetensors"))
    return tmp_path / "src.safetensors", "not a SkyReels-V2/Wan diffusion model"


def _nan(tmp_path):
    sd = tiny.state_dict(tiny.info("T2V"))
    sd["blocks.1.ffn.2.weight"][3, 4] = float("nan")
    safetensors.torch.save_file(sd, str(tmp_path / "src.safetensors"))
    return tmp_path / "src.safetensors", "tensor blocks.1.ffn.2.weight has NaN/Inf"


def _inf_kept(tmp_path):
    sd = tiny.state_dict(tiny.info("T2V"))
    sd["head.modulation"][0, 0, 0] = float("inf")
    safetensors.torch.save_file(sd, str(tmp_path / "src.safetensors"))
    return tmp_path / "src.safetensors", "tensor head.modulation has NaN/Inf"


def _missing_file(tmp_path):
    return tmp_path / "src.safetensors", "file not found"


def _missing_keys(tmp_path):
    sd = tiny.state_dict(tiny.info("T2V"))
    del sd["blocks.1.cross_attn.o.weight"], sd["text_embedding.2.bias"]
    safetensors.torch.save_file(sd, str(tmp_path / "src.safetensors"))
    return tmp_path / "src.safetensors", "2 tensors missing (text_embedding.2.bias, blocks.1.cross_attn.o.weight)"


def _pickle(tmp_path):
    torch.save({"w": torch.ones(2), "x": Payload()}, tmp_path / "src.pth")
    return tmp_path / "src.pth", "refused"


def _already_fp8(tmp_path):
    write_tiny(tmp_path / "bf16.safetensors", "T2V")
    convert(str(tmp_path / "bf16.safetensors"), str(tmp_path / "src.safetensors"))
    (tmp_path / "bf16.safetensors").unlink()
    return tmp_path / "src.safetensors", "already FP8"


class Payload:
    def __reduce__(self):
        return (print, ("pwned",))


@pytest.mark.parametrize("make", [_truncated, _garbage, _other_arch, _nan, _inf_kept, _missing_file, _missing_keys,
                                  _pickle, _already_fp8])
def test_bad_input_exits_2_with_one_line(tmp_path, make):
    src, message = make(tmp_path)
    before = digest(src)
    proc = run_cli(src, tmp_path / "out.safetensors")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith(f"convert_to_fp8: {src}") and message in lines[0], lines
    assert "Traceback" not in proc.stderr and "pwned" not in proc.stdout
    assert leftovers(tmp_path, [src.name]) == []
    assert digest(src) == before


def test_dst_equal_to_src_is_refused(tmp_path):
    src = tmp_path / "src.safetensors"
    write_tiny(src, "T2V")
    before = digest(src)
    for dst in (src, tmp_path / "." / "src.safetensors"):
        proc = run_cli(src, dst, "--overwrite")
        assert proc.returncode == 2 and "would overwrite the source" in proc.stderr
    assert digest(src) == before and leftovers(tmp_path, ["src.safetensors"]) == []


def test_dst_inside_source_folder_is_refused(tmp_path):
    folder = tmp_path / "shards"
    folder.mkdir()
    write_tiny(folder / "model.safetensors", "T2V")
    proc = run_cli(folder, folder / "model.safetensors", "--overwrite")
    assert proc.returncode == 2 and "would overwrite a file in the source folder" in proc.stderr
    proc = run_cli(folder, folder / "new.safetensors")     # not an overwrite, and said so
    assert proc.returncode == 2 and proc.stderr.strip() == (f"convert_to_fp8: {folder / 'new.safetensors'}: the output "
                                                            f"would be inside the source folder {folder}; choose a name "
                                                            "outside it"), proc.stderr


def test_dst_in_a_one_file_release_folder_is_refused(tmp_path):
    # SkyReels-V2-DF-1.3B-540P/ as downloaded loads as that folder (the shipped DF workflows name it); a conversion
    # saved beside its model.safetensors made it two models, so it left the loader's list and failed to load.
    release = tmp_path / "SkyReels-V2-DF-1.3B-540P"
    release.mkdir()
    write_tiny(release / "model.safetensors", "DF")
    (release / "config.json").write_text("{}")
    dst = release / "model_fp8.safetensors"
    proc = run_cli(release / "model.safetensors", dst)
    assert proc.returncode == 2 and proc.stderr.strip() == (
        f"convert_to_fp8: {dst}: the output would be a second model in {release}, a downloaded model's folder "
        "(config.json beside its one .safetensors) that loads as a folder, as the shipped workflows name it; with two "
        "it loads as neither. Choose a name outside it"), proc.stderr
    assert sorted(os.listdir(release)) == ["config.json", "model.safetensors"]
    # a shard folder keeps loading by its index with another file beside its shards
    shards = tmp_path / "shards"
    tiny.write_release(shards, tiny.state_dict(tiny.info("T2V")))
    assert run_cli(release / "model.safetensors", shards / "fp8.safetensors").returncode == 0
    # replacing the release's own weights (asked for: --overwrite) keeps it one model
    write_tiny(tmp_path / "other.safetensors", "DF", seed=5)
    assert run_cli(tmp_path / "other.safetensors", release / "model.safetensors", "--overwrite").returncode == 0


def test_cli_seed_spelling_and_report(tmp_path):
    write_tiny(tmp_path / "src.safetensors", "DF")
    # Piped on a Western Windows, stdout is cp1252, which has no Chinese: the name is escaped, not a crash.
    proc = run_cli("--model_path", tmp_path / "src.safetensors", "--output_path", tmp_path / "o 天鹅.safetensors",
                   "--verify", "--granularity", "channel", encoding="cp1252")
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {tmp_path}/o \\u5929\\u9e45.safetensors" in proc.stdout
    for text in ("SkyReels-V2 DF custom (dim 256), 2 blocks -> fp8 e4m3fn per-channel", "bytes in", "bytes out",
                 "ratio", "20 quantized, 54 kept", "verified", "worst layers"):
        assert text in proc.stdout
    assert leftovers(tmp_path, ["src.safetensors", "o 天鹅.safetensors"]) == []


def test_cli_names_tensors_the_model_does_not_use_once(tmp_path):
    # e.g. FantasyTalking's projector merged into a Wan file: copied as they are; said once, in the report
    write_tiny(tmp_path / "bf16.safetensors", "T2V")
    sd = safetensors.torch.load_file(str(tmp_path / "bf16.safetensors"))
    sd["proj_model.proj.weight"] = torch.ones(8, 8, dtype=torch.bfloat16)
    safetensors.torch.save_file(sd, str(tmp_path / "src.safetensors"))
    proc = run_cli(tmp_path / "src.safetensors", tmp_path / "o.safetensors")
    assert proc.returncode == 0, proc.stderr
    warning = ("1 tensors a SkyReels-V2 T2V/DF custom (dim 256), 2 blocks does not use were copied as they are: "
               "proj_model.proj.weight")
    assert (proc.stdout + proc.stderr).count(warning) == 1 and f"  warning: {warning}" in proc.stdout, proc.stdout
    assert "proj_model.proj.weight" in safetensors.torch.load_file(str(tmp_path / "o.safetensors"))


def test_no_arguments_run_the_demo_and_one_path_is_refused(tmp_path):
    # README: `python convert_to_fp8.py` with no arguments converts the embedded tiny model, verified, in a temp folder
    temp = tmp_path / "temp"
    temp.mkdir()
    proc = subprocess.run([sys.executable, os.path.join(REPO, "convert_to_fp8.py")], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "TMPDIR": str(temp)})
    assert proc.returncode == 0, proc.stderr
    for text in ("(demo)", "SkyReels-V2 DF custom (dim 256), 2 blocks -> fp8 e4m3fn per-tensor", "verified",
                 "removed again"):
        assert text in proc.stdout
    assert os.listdir(temp) == []
    proc = run_cli(tmp_path / "src.safetensors")
    assert proc.returncode == 2 and "give SRC and DST" in proc.stderr, proc.stderr
    from convert_to_fp8 import parse_args      # an output with no source is refused too, not taken for the demo
    with pytest.raises(SystemExit, match="2"):
        parse_args(["--output_path", str(tmp_path / "out.safetensors")])


@pytest.mark.parametrize("dst, flags, message", [
    ("no_folder/out.safetensors", [], "{dst}: the output folder does not exist"),
    ("out.bin", [], "{dst}: the output name must end in .safetensors"),
    ("out.safetensors", ["--keep-first-blocks", "-1"], "keep-first/keep-last blocks must be 0 or more")])
def test_an_output_or_option_that_cannot_be_used_exits_2(tmp_path, dst, flags, message):
    write_tiny(tmp_path / "src.safetensors", "T2V")
    proc = run_cli(tmp_path / "src.safetensors", tmp_path / dst, *flags)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == "convert_to_fp8: " + message.format(dst=tmp_path / dst) + "\n", proc.stderr
    assert leftovers(tmp_path, ["src.safetensors"]) == []

def test_progress_bar_draws_on_a_terminal_only():
    sys.path.insert(0, REPO)
    from convert_to_fp8 import ProgressBar

    class Tty(io.StringIO):
        def isatty(self):
            return True

    tty, pipe = Tty(), io.StringIO()
    for stream in (tty, pipe):
        bar = ProgressBar(stream)
        bar(1, 4)
        bar(4, 4)
    assert tty.getvalue().endswith("[" + "#" * 30 + "] 4/4 tensors\n") and "1/4" in tty.getvalue()
    assert pipe.getvalue() == ""


def test_verify_failure_replaces_nothing(tmp_path, monkeypatch):
    src, dst = tmp_path / "src.safetensors", tmp_path / "o.safetensors"
    write_tiny(src, "T2V")
    dst.write_bytes(b"the user's previous file")

    def failing(ckpt, path, quantize, dst=None):
        raise convert_module.VerifyError(f"{dst}: verify failed: blocks.0.ffn.0.weight differs from the source")

    monkeypatch.setattr(convert_module, "verify_file", failing)
    with pytest.raises(convert_module.VerifyError, match="verify failed"):
        convert(str(src), str(dst), overwrite=True, verify=True)
    assert dst.read_bytes() == b"the user's previous file"
    assert leftovers(tmp_path, ["src.safetensors", "o.safetensors"]) == []


def test_cli_reports_a_verify_failure_with_exit_1(tmp_path, monkeypatch, capsys):
    sys.path.insert(0, REPO)
    import convert_to_fp8

    write_tiny(tmp_path / "src.safetensors", "T2V")
    monkeypatch.setattr(convert_module, "verify_file", lambda *a, **k: (_ for _ in ()).throw(
        convert_module.VerifyError("o.safetensors: verify failed: head.head.weight differs from the source")))
    assert convert_to_fp8.main([str(tmp_path / "src.safetensors"), str(tmp_path / "o.safetensors"), "--verify"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["convert_to_fp8: o.safetensors: verify failed: head.head.weight differs from the source "
                   "(nothing was written)"]
    assert not (tmp_path / "o.safetensors").exists()


def test_cli_fp8_and_keep_last_blocks_reach_the_file(tmp_path):
    sys.path.insert(0, REPO)
    import convert_to_fp8
    write_tiny(tmp_path / "src.safetensors", "T2V")
    dst = tmp_path / "o.safetensors"
    assert convert_to_fp8.main([str(tmp_path / "src.safetensors"), str(dst), "--fp8", "e5m2",
                                "--keep-last-blocks", "1"]) == 0
    tensors, meta = read(dst)
    assert {k.split(".")[1] for k in json.loads(meta["_quantization_metadata"])["layers"]} == {"0"}   # of 2 blocks
    assert tensors["blocks.0.self_attn.q.weight"].dtype == torch.float8_e5m2
    assert tensors["blocks.1.self_attn.q.weight"].dtype == torch.bfloat16


def test_cli_exit_codes_of_an_io_error_and_of_ctrl_c(tmp_path, monkeypatch, capsys):
    # An OSError the converter does not put in words (a network share gone mid-run) is bad input (2), not "verify
    # failed" (1); Ctrl-C is 130, as shells report SIGINT.
    import errno
    sys.path.insert(0, REPO)
    import convert_to_fp8
    argv = [str(tmp_path / "src.safetensors"), str(tmp_path / "o.safetensors")]

    def fail(*a, **k):
        raise OSError(errno.EIO, "Input/output error", argv[0])
    monkeypatch.setattr(convert_to_fp8, "convert", fail)
    assert convert_to_fp8.main(argv) == 2
    assert capsys.readouterr().err == f"convert_to_fp8: {argv[0]}: Input/output error\n"
    monkeypatch.setattr(convert_to_fp8, "convert", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    assert convert_to_fp8.main(argv) == 130
    assert capsys.readouterr().err == "convert_to_fp8: interrupted; nothing was written\n"


@pytest.mark.parametrize("src,dtype", [("src.safetensors", torch.uint16), ("src.pth", torch.uint16),
                                       ("src.pth", torch.complex64), ("src.pth", torch.float8_e4m3fnuz)])
def test_tensor_of_an_unstorable_dtype_is_named(tmp_path, src, dtype):
    sd = tiny.state_dict(tiny.info("T2V"))
    sd["extra.counter"] = torch.zeros(3, dtype=dtype)
    # a .pth held them as torch loads them, and the writer met a dtype it has no name for (KeyError: torch.uint16)
    (safetensors.torch.save_file if src.endswith(".safetensors") else torch.save)(sd, str(tmp_path / src))
    with pytest.raises(CheckpointError, match="tensor extra.counter has a data type this converter cannot store"):
        convert(str(tmp_path / src), str(tmp_path / "o.safetensors"))
    assert leftovers(tmp_path, [src]) == []


def test_keeping_every_block_is_refused(tmp_path):
    # Converting or loading with every block kept made an "FP8" file / model with no FP8 tensor in it, silently.
    from quant.formats import load_fp8_state_dict
    write_tiny(tmp_path / "src.safetensors", "T2V")       # 2 blocks
    told = ("keep_first_blocks 1 + keep_last_blocks 1 keep all 2 blocks in high precision, so nothing would be FP8: "
            "lower them (or keep the model as it is: Load FP8 SkyReels Model's weight_format bf16 loads it in high "
            "precision)")
    with pytest.raises(CheckpointError, match=re.escape(f"src.safetensors: {told}")):
        convert(str(tmp_path / "src.safetensors"), str(tmp_path / "o.safetensors"),
                Options(keep_first_blocks=1, keep_last_blocks=1))
    assert leftovers(tmp_path, ["src.safetensors"]) == []
    proc = run_cli(tmp_path / "src.safetensors", tmp_path / "o.safetensors", "--keep-first-blocks", 1,
                   "--keep-last-blocks", 1)     # the script names its flags, not the node's widgets
    assert proc.returncode == 2 and "src.safetensors: --keep-first-blocks 1 + --keep-last-blocks 1 keep all 2 " \
        "blocks" in proc.stderr, proc.stderr
    with Checkpoint(str(tmp_path / "src.safetensors")) as ckpt:
        with pytest.raises(CheckpointError, match=re.escape(told)):
            load_fp8_state_dict(ckpt, ckpt.model_info(), keep_first_blocks=1, keep_last_blocks=1)
        sd, _ = load_fp8_state_dict(ckpt, ckpt.model_info(), "bf16", keep_first_blocks=2)   # bf16 keeps all anyway
        assert all(t.dtype == torch.bfloat16 for t in sd.values())


def test_auto_loads_an_fp8_file_with_kept_blocks_as_it_is(tmp_path):
    # A file converted with keep blocks: auto quantized those blocks again when loading (core's loader keeps them).
    from quant.formats import load_fp8_state_dict
    write_tiny(tmp_path / "src.safetensors", "T2V")       # 2 blocks
    convert(str(tmp_path / "src.safetensors"), str(tmp_path / "kept.safetensors"), Options(keep_first_blocks=1))
    with Checkpoint(str(tmp_path / "kept.safetensors")) as ckpt:
        sd, summary = load_fp8_state_dict(ckpt, ckpt.model_info())
        fp8, _ = load_fp8_state_dict(ckpt, ckpt.model_info(), "fp8_e4m3fn (per-channel)")     # asked for: FP8
    assert sd["blocks.0.self_attn.q.weight"].dtype == torch.bfloat16 and "blocks.0.self_attn.q.comfy_quant" not in sd
    assert sd["blocks.1.self_attn.q.weight"].dtype == torch.float8_e4m3fn, summary
    assert summary.scheme == "fp8 e4m3fn per-tensor" and summary.quantized == 10, summary     # block 1 as the file has it
    assert fp8["blocks.0.self_attn.q.weight"].dtype == torch.float8_e4m3fn


def test_kept_blocks_of_an_fp8_file_load_dequantized(tmp_path):
    # keep_first_blocks on an FP8 file: those blocks' weights come in bf16 (the file's values times their scales, no
    # scale left beside them); the other blocks stay FP8.
    from quant.formats import load_fp8_state_dict
    from quant.fp8 import dequantize_weight
    write_tiny(tmp_path / "src.safetensors", "T2V")       # 2 blocks
    convert(str(tmp_path / "src.safetensors"), str(tmp_path / "fp8.safetensors"))
    with Checkpoint(str(tmp_path / "fp8.safetensors")) as ckpt:
        sd, summary = load_fp8_state_dict(ckpt, ckpt.model_info(), keep_first_blocks=1)
        q, s = ckpt.load("blocks.0.self_attn.q.weight"), ckpt.load("blocks.0.self_attn.q.weight_scale")
    assert not any(k.startswith("blocks.0.") and k.endswith(("weight_scale", "comfy_quant")) for k in sd)
    assert torch.equal(sd["blocks.0.self_attn.q.weight"], dequantize_weight(q, s, torch.bfloat16))
    assert sd["blocks.1.self_attn.q.weight"].dtype == torch.float8_e4m3fn and summary.quantized == 10, summary


def test_a_legacy_scaled_fp8_file_is_described_by_its_own_fp8_type(tmp_path):
    # The report named every older scaled_fp8 file e4m3fn; this one holds e5m2 weights.
    from quant.formats import load_fp8_state_dict
    from quant.policy import should_quantize
    sd = tiny.state_dict(tiny.info("T2V"), seed=1)
    for k in [k for k in sd if should_quantize(k, 2)]:
        scale = sd[k].float().abs().max() / 57344
        sd[k], sd[k[:-len("weight")] + "scale_weight"] = (sd[k].float() / scale).to(torch.float8_e5m2), scale[None]
    sd["scaled_fp8"] = torch.zeros(2, dtype=torch.float8_e5m2)
    safetensors.torch.save_file(sd, str(tmp_path / "legacy.safetensors"))
    with Checkpoint(str(tmp_path / "legacy.safetensors")) as ckpt:
        _, summary = load_fp8_state_dict(ckpt, ckpt.model_info())
    assert (summary.source, summary.scheme) == ("fp8 e5m2 per-tensor (legacy scaled_fp8)", "fp8 e5m2 per-tensor")


def test_a_folder_as_the_output_is_named(tmp_path):
    write_tiny(tmp_path / "src.safetensors", "T2V")
    (tmp_path / "out.safetensors").mkdir()
    for overwrite in (False, True):
        with pytest.raises(CheckpointError, match=re.escape("out.safetensors: is a folder; give the output file's "
                                                            "name (ending in .safetensors)")):
            convert(str(tmp_path / "src.safetensors"), str(tmp_path / "out.safetensors"), overwrite=overwrite)


def test_a_source_shard_reached_through_a_link_is_never_the_output(tmp_path):
    # The Hugging Face cache: snapshots/<rev>/*.safetensors are links into blobs/. --overwrite onto a blob used to
    # replace that shard of the source.
    (tmp_path / "blobs").mkdir()
    tiny.write_release(str(tmp_path / "snap"), tiny.state_dict(tiny.info("T2V")), shards=2)
    for shard in sorted((tmp_path / "snap").glob("*.safetensors")):
        shard.rename(tmp_path / "blobs" / shard.name)
        shard.symlink_to(f"../blobs/{shard.name}")
    blob = tmp_path / "blobs" / "model-00002-of-00002.safetensors"
    before = digest(blob)
    for flags in (["--overwrite"], []):     # without it, not "already exists; turn on overwrite"
        proc = run_cli(tmp_path / "snap", blob, *flags)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip() == (f"convert_to_fp8: {blob}: the output would overwrite the source "
                                       f"({tmp_path / 'snap' / blob.name} is the same file); choose another output "
                                       "name")
    assert digest(blob) == before


def test_a_plain_fp8_cast_is_already_fp8(tmp_path):
    # Many Wan FP8 downloads are plain casts (fp8 weights, no scales, no format tags): converting one again would
    # quantize fp8 values a second time; it is refused as already FP8 (not a torch "aminmax" traceback).
    sd = {k: v.to(torch.float8_e4m3fn) if k.startswith("blocks.") and k.endswith(".weight") and v.ndim == 2 else v
          for k, v in tiny.state_dict(tiny.info("T2V")).items()}
    safetensors.torch.save_file(sd, str(tmp_path / "fp8.safetensors"))
    with pytest.raises(CheckpointError, match=r"fp8.safetensors: already FP8 \(blocks\.0\..*\.weight\); load it "
                                              "directly"):
        convert(str(tmp_path / "fp8.safetensors"), str(tmp_path / "out.safetensors"))
    assert not (tmp_path / "out.safetensors").exists()


def test_report_ratio_is_bytes_out_over_bytes_in():
    # the script's and the node's report: 2.6 GB of bf16 converted to 1.4 GB reads "ratio 0.538", not 1.857
    table = convert_module.Report(model="m", options=Options(), bytes_in=2_600_000_000,
                                  bytes_out=1_400_000_000).table()
    assert "  ratio                    0.538" in table.splitlines()


def test_verify_finds_a_kept_tensor_that_differs_in_the_written_file(tmp_path, monkeypatch):
    # --verify reads the temp file back: a kept (bf16) tensor written wrong (a disk or copy fault, simulated here)
    # fails the conversion and nothing is put in place, as for a quantized one.
    writer = importlib.import_module("quant.writer").SafetensorsWriter
    src, dst = tmp_path / "src.safetensors", tmp_path / "o.safetensors"
    write_tiny(src, "T2V")
    real = writer.write
    monkeypatch.setattr(writer, "write",
                        lambda self, name, t: real(self, name, t + 1 if name == "head.head.bias" else t))
    with pytest.raises(convert_module.VerifyError, match="verify failed: head.head.bias differs from the source"):
        convert(str(src), str(dst), verify=True)
    assert not dst.exists()


def test_the_source_folder_is_named_in_the_metadata_when_given_with_a_trailing_separator(tmp_path):
    # shells complete a folder with a trailing "/": the output's skyreels_fp8 metadata still names the release
    from helpers import write_tiny_release
    write_tiny_release(tmp_path / "SkyReels-V2-T2V", "T2V")
    convert(str(tmp_path / "SkyReels-V2-T2V") + os.sep, str(tmp_path / "o.safetensors"))
    assert json.loads(read(tmp_path / "o.safetensors")[1]["skyreels_fp8"])["source"] == "SkyReels-V2-T2V"


def test_a_name_that_is_only_the_extension_is_refused(tmp_path):
    # ".safetensors" would be a hidden file with no name, which ComfyUI's model lists leave out (its extension is "")
    write_tiny(tmp_path / "src.safetensors", "T2V")
    for name in (".safetensors", ".SafeTensors"):
        with pytest.raises(CheckpointError, match="it is empty or a folder reference; choose another output name"):
            convert(str(tmp_path / "src.safetensors"), str(tmp_path / name))
