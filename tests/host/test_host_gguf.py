"""This pack's nodes on a MODEL from the real ComfyUI-GGUF (its Unet Loader (GGUF), loaded by the host's own
custom-node loader): Patch SageAttention, TeaCache and Sample Video (standard, Diffusion Forcing async and long),
core KSampler and a core LoRA on top. Each run is compared with the same run on a core-loaded safetensors file of the
values the GGUF file holds (its Q8_0 weights dequantized), so the two models differ only in how their weights are
stored. The tiny DF model (width 256) stands for DF-1.3B.

ComfyUI-GGUF is found as tests/comfy_host.find_gguf_pack says; without it (or without the gguf package) these tests
are skipped, naming what is missing."""
import importlib.util

import pytest
import safetensors.torch

from comfy_host import REPO, find_gguf_pack, run_in_host
from helpers import write_tiny_gguf
from in_host import SETUP


from quant import tiny

CODE = r"""
import asyncio, logging, nodes as core
from skyreels_pack.nodes.adapters import fps, parallel_run
from skyreels_pack.nodes.sage_patch import PatchSageAttention
from skyreels_pack.nodes.sample import SampleVideo
from skyreels_pack.nodes.teacache import TeaCache
from skyreels_pack.sampling import teacache

lines = []
handler = logging.Handler()
handler.emit = lambda record: lines.append(record.getMessage())
logging.getLogger().addHandler(handler)
fps.DF_1_3B_DIM = 256            # the tiny DF model stands for DF-1.3B (fps) ...
teacache.SIZES[256] = "1.3B"     # ... and gets its TeaCache coefficients
folder_paths.add_model_folder_path("loras", {folder!r})
asyncio.run(core.load_custom_node({gguf!r}))          # as ComfyUI loads custom_nodes/ComfyUI-GGUF
gguf_model = core.NODE_CLASS_MAPPINGS["UnetLoaderGGUF"]().load_unet("tiny_df_q8.gguf")[0]
core_model = comfy.sd.load_diffusion_model(os.path.join({folder!r}, "tiny_df_q8_values.safetensors"))
pos = [[torch.randn(1, 8, 4096, generator=g), {{}}]]
neg = [[torch.randn(1, 8, 4096, generator=g), {{}}]]
ARGS = dict(width=32, height=32, frames=9, seed=1, steps=6, cfg=3.0, shift=8.0, sampler="unipc", fps=24,
            mode="standard", base_num_frames=97, overlap_history=5, ar_step=0, causal_block_size=1,
            addnoise_condition=0)

def patched(m):
    m = PatchSageAttention.execute(m, "reference").args[0]     # 8-bit attention that runs on a CPU
    return TeaCache.execute(m, 0.3, False).args[0]

def sample(m, **kw):
    samples, report, _ = SampleVideo.execute(patched(m), pos, neg, **nest_mode({{**ARGS, **kw}})).args[:3]
    return samples["samples"], report.splitlines()

RUNS = dict(standard={{}}, df_async=dict(mode="diffusion forcing", frames=17, ar_step=1),
            df_long=dict(mode="diffusion forcing", frames=17, base_num_frames=13))
result = {{"types": [type(gguf_model).__name__, type(gguf_model.model.diffusion_model.blocks[0].ffn[0]).__module__]}}
for name, kw in RUNS.items():
    (a, report_a), (b, report_b) = sample(gguf_model, **kw), sample(core_model, **kw)
    result[name] = dict(rel=rel(a, b), gguf=report_a, core=report_b)
latent = {{"samples": torch.zeros(1, 16, 3, 4, 4)}}
ks = [core.common_ksampler(patched(m), 1, 6, 3.0, "euler", "simple", pos, neg, latent)[0]["samples"]
      for m in (gguf_model, core_model)]
result["ksampler"] = rel(*ks)
lora = core.LoraLoaderModelOnly()
with_lora = [lora.load_lora_model_only(m, "tiny_lora.safetensors", 1.0)[0] for m in (gguf_model, core_model)]
(a, _), (b, _) = (sample(m) for m in with_lora)
result["lora"] = dict(rel=rel(a, b), effect=rel(a, sample(gguf_model)[0]))
try:
    parallel_run.recipe_of(gguf_model)
except ValueError as e:
    result["parallel"] = str(e)
result["log"] = lines
"""


def what_ran(report):
    """A Sample Video report without its weights line and its timing line."""
    return [line for line in report if not line.startswith("Linear weights") and "model calls" not in line]


def _needs_gguf(host):
    pack = find_gguf_pack(host)
    if pack is None:
        pytest.skip("ComfyUI-GGUF not found: set COMFYUI_GGUF_PATH, or lay it out at ~/ComfyUI-GGUF")
    if importlib.util.find_spec("gguf") is None:
        pytest.skip("the gguf package is not installed (pip install gguf)")
    return pack


def test_sample_video_on_a_comfyui_gguf_model(host, tmp_path):
    from conftest import write_lora
    pack = _needs_gguf(host)
    sd = tiny.state_dict(tiny.info("DF"), seed=2)
    values = write_tiny_gguf(tmp_path / "tiny_df_q8.gguf", sd)
    safetensors.torch.save_file(values, str(tmp_path / "tiny_df_q8_values.safetensors"))
    write_lora(str(tmp_path / "tiny_lora.safetensors"), sd)
    r = run_in_host(host, SETUP.format(repo=REPO, folder=str(tmp_path)) + CODE.format(folder=str(tmp_path),
                                                                                      gguf=pack))
    assert r["types"] == ["GGUFModelPatcher", f"{pack}.ops"], r["types"]   # the real pack's patcher and ops
    # The same weight values in both models, on a CPU (the host tests force --cpu): any difference would be this
    # pack treating a GGUF MODEL differently. (On a GPU, the kernels' run-to-run noise would be allowed for.)
    for name in ("standard", "df_async", "df_long"):
        run = r[name]
        assert run["rel"] == 0.0, (name, run)
        assert "Linear weights: 26 Q8_0 (GGUF); matmul: float32" in run["gguf"], run["gguf"]
        assert "Linear weights: 26 float32; matmul: float32" in run["core"], run["core"]
        # what ran (attention backend and counts, TeaCache skips, notes) is the same; only the weights line differs
        assert what_ran(run["gguf"]) == what_ran(run["core"]), run
        assert any(l.startswith("attention: reference") and "0 exact" in l for l in run["gguf"]), run["gguf"]
        # ComfyUI-GGUF drops DF-1.3B's fps embedding, and Sample Video says so (the claim in its note)
        assert any(l.startswith("fps: not applied") and "ComfyUI-GGUF" in l for l in run["gguf"]), run["gguf"]
    skipped = [l for name in ("df_async", "df_long") for l in r[name]["gguf"] if l.startswith("TeaCache: 2 of")]
    assert len(skipped) == 2, skipped                       # TeaCache skipped calls on the GGUF model too
    assert r["ksampler"] == 0.0
    assert r["lora"]["rel"] == 0.0 and r["lora"]["effect"] > 0.01, r["lora"]   # core LoRA applied by ComfyUI-GGUF
    assert r["parallel"].startswith("Sample Video: parallel: needs the MODEL straight from Load FP8 SkyReels Model")
