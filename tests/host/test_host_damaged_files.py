"""The damaged files of tests/test_damaged_files.py that pass the reader's checks (a tensor the model does not use,
a legacy marker, FP8 layers in another layout, values edited), loaded by Load FP8 SkyReels Model into the host's
Wan model and run: each runs, or is refused by a ValueError that names the file; none fails inside the host."""
from comfy_host import REPO, run_in_host
from in_host import SETUP
from test_damaged_files import damaged

from quant import CheckpointError
from quant.checkpoint import Checkpoint

LOAD_AND_RUN = r"""
import random
from skyreels_pack.nodes.loader import load as load_file
FORMATS = ["auto", "fp8_e4m3fn (per-channel)", "fp8_e4m3fn (per-tensor)", "fp8_e5m2", "bf16", "fp16"]
ran, failed = 0, []
for case, path in {cases!r}:
    r = random.Random(case)
    try:
        m = load_file(path, r.choice(FORMATS), r.choice(["auto", "upcast", "fp8 matmul"]))[0]
        dm = m.model.diffusion_model
        image = dm.patch_embedding.in_channels == 36     # I2V: the image latents and the CLIP embedding too
        with torch.no_grad():
            dm(torch.cat([x, torch.zeros(1, 20, *x.shape[2:])], 1) if image else x, t, ctx,
               clip_fea=torch.randn(1, 257, 1280, generator=g) if image else None)
        ran += 1
    except ValueError as e:
        if path not in str(e):
            failed.append(f"case {{case}}: {{e}}")
    except Exception as e:
        failed.append(f"case {{case}}: {{type(e).__name__}}: {{e}}")
result = dict(ran=ran, failed=failed)
"""


def _readable(folder, count):
    """The first `count` damaged files whose keys and shapes the reader accepts (about one in ten)."""
    found = []
    for case in range(100 * count):
        path = damaged(case, str(folder))
        try:
            with Checkpoint(path) as ckpt:
                ckpt.require_keys(ckpt.model_info())
            found.append((case, path))
        except CheckpointError:
            pass
        if len(found) == count:
            break
    assert len(found) == count, f"{len(found)} of {100 * count} damaged files read: the reader refuses whole models?"
    return found


def test_damaged_files_the_reader_accepts_load_and_run_in_the_host(host, tmp_path):
    cases = _readable(tmp_path, 40)
    r = run_in_host(host, SETUP.format(repo=REPO, folder=str(tmp_path)) + LOAD_AND_RUN.format(cases=cases))
    assert r["failed"] == [], "\n".join(r["failed"][:5])
    assert r["ran"] >= 10, r     # 15 of the 40: the others are refused by the loader's checks of values and formats
