"""TeaCache (SkyReels-V2) in the real host: against SkyReels-V2's own TeaCache (a table its code wrote, see
tests/data/skyreels_df_pixels.py), in Sample Video in standard and Diffusion Forcing modes (one window, async, a long
video), core KSampler, what a threshold of 0 does, and core EasyCache / LazyCache beside it. The tiny model (width
256) stands for the 1.3B one, whose coefficients it is given."""

from comfy_host import REPO, run_in_host
from in_host import SETUP, write_models

CODE = r"""
import logging, nodes as core
from comfy_extras.nodes_easycache import EasyCacheNode, LazyCacheNode
from skyreels_pack.nodes.sample import SampleVideo
from skyreels_pack.nodes.teacache import TeaCache
from skyreels_pack.sampling import teacache
from skyreels_pack.sampling.forcing import timestep_matrix

model = load("df_bf16.safetensors", "bf16")[0]
g = torch.Generator().manual_seed(0)
pos = [[torch.randn(1, 8, 4096, generator=g), {{}}]]
neg = [[torch.randn(1, 8, 4096, generator=g), {{}}]]
ARGS = dict(width=32, height=32, frames=9, seed=1, steps=6, cfg=3.0, shift=8.0, sampler="unipc", fps=24,
            mode="standard", base_num_frames=97, overlap_history=5, ar_step=0, causal_block_size=1,
            addnoise_condition=0)
lines = []
class Keep(logging.Handler):
    def emit(self, record):
        lines.append(record.getMessage())
logging.getLogger().addHandler(Keep())
logging.getLogger().setLevel(logging.INFO)

def sample(m, **kw):
    samples, report, _ = SampleVideo.execute(m, pos, neg, **nest_mode({{**ARGS, **kw}})).args[:3]
    return samples["samples"], [l for l in report.splitlines() if l.startswith("TeaCache")]

result = {{}}
try:
    TeaCache.execute(model, 0.2, False)
except ValueError as e:
    result["width"] = str(e)
teacache.SIZES[256] = "1.3B"
result["zero is the model"] = TeaCache.execute(model, 0.0, False).args[0] is model
plain, _ = sample(model)
never, never_line = sample(TeaCache.execute(model, 1e-12, False).args[0])
always, always_line = sample(TeaCache.execute(model, 1e9, False).args[0])
result["standard"] = dict(never=never_line, never_equal=bool(torch.equal(never, plain)), always=always_line,
                          always_differs=(always - plain).abs().max().item(), finite=bool(always.isfinite().all()))
_, retention = sample(TeaCache.execute(model, 1e9, True).args[0], steps=8)
result["retention"] = retention
# Diffusion Forcing: async (ar_step 1) in one window, and a long video of two windows
rows = timestep_matrix(5, 6, 1).rows
_, df = sample(TeaCache.execute(model, 1e9, False).args[0], frames=17, mode="diffusion forcing", ar_step=1)
_, long = sample(TeaCache.execute(model, 1e9, False).args[0], frames=17, base_num_frames=13, mode="diffusion forcing")
result["df"] = dict(rows=rows, line=df, long=long)
# core KSampler (euler: one call per step, cond and uncond batched)
cached = TeaCache.execute(model, 1e9, False).args[0]
latent = {{"samples": torch.zeros(1, 16, 3, 4, 4)}}
areas, coefficients = [], teacache.coefficients    # I2V's coefficients go by the video's pixel area (540P / 720P)
teacache.coefficients = lambda i2v, dim, area, retention: areas.append(area) or coefficients(i2v, dim, area, retention)
core.common_ksampler(cached, 1, 6, 3.0, "euler", "simple", pos, neg, latent)
teacache.coefficients = coefficients
result["areas"] = sorted(set(areas))
cache = cached.model_options["transformer_options"]["skyreels_teacache"]
result["ksampler"] = [cache.calls, cache.skipped, len(cache.streams)]
# two positive prompts in one batch: each its own stream (their order changes nothing)
a, b = [torch.randn(1, 8, 4096, generator=g), {{}}], [torch.randn(1, 8, 4096, generator=g), {{}}]
ab, ba = (core.common_ksampler(cached, 1, 6, 3.0, "euler", "simple", p, neg, latent)[0]["samples"]
          for p in ([a, b], [b, a]))
result["two prompts"] = (ab - ba).abs().max().item()
# a sampler that evaluates twice per step
result["heun"] = bool(core.common_ksampler(cached, 1, 4, 3.0, "heun", "simple", pos, neg, latent)[0]["samples"]
                      .isfinite().all())
try:
    TeaCache.execute(cached, 0.2, False)          # TeaCache twice
except ValueError as e:
    result["twice"] = str(e)
replaced = model.clone()                          # another pack's block replacement
replaced.set_model_patch_replace(lambda args, extra: extra["original_block"](args), "dit", "double_block", 0)
try:
    TeaCache.execute(replaced, 0.2, False)
except ValueError as e:
    result["replaced"] = str(e)
# parallel runs: the workers install TeaCache again from its settings; a block replacement set after it is refused
from skyreels_pack.nodes.adapters.parallel_run import recipe_of
result["parallel"] = list(recipe_of(TeaCache.execute(model, 0.3, True).args[0])[3])
after = cached.clone()
after.set_model_patch_replace(lambda args, extra: extra["original_block"](args), "dit", "double_block", 1)
try:
    recipe_of(after)
except ValueError as e:
    result["parallel, replaced after"] = str(e)
# SkyReels-V2's own TeaCache, call after call (cond, uncond at each step), with and without skipping
import safetensors.torch, comfy.model_management
sys.path.insert(0, os.path.join({repo!r}, "tests", "data"))
import skyreels_df_pixels as ref
table = safetensors.torch.load_file(ref.OUT)
pe, ne = ref.embeddings(7, 1), ref.embeddings(3, 2)
for name, (thresh, retention) in ref.TEACACHE_RUNS.items():
    m = TeaCache.execute(model, thresh, retention).args[0] if thresh else model
    comfy.model_management.load_models_gpu([m])
    base, outs = dict(m.model_options["transformer_options"]), []
    base["wrappers"] = m.wrappers            # as the host's samplers hand them to the model
    for i, (x, t) in enumerate(ref.teacache_inputs()):
        for k, context in enumerate((pe, ne)):
            to = {{**base, "cond_or_uncond": [k], "skyreels_call": i, "skyreels_calls": ref.TEACACHE_STEPS}}
            outs.append(m.model.diffusion_model(x, torch.tensor([float(t)]), context, transformer_options=to))
    expected = table[f"teacache_{{name}}/outputs"]
    result[f"reference {{name}}"] = max(rel(o, e) for o, e in zip(outs, expected))
# core's caches keep working with Sample Video
for node, kw in ((EasyCacheNode, dict(reuse_threshold=2.0, start_percent=0.15, end_percent=0.95, verbose=False)),
                 (LazyCacheNode, dict(reuse_threshold=2.0, start_percent=0.15, end_percent=0.95, verbose=False))):
    m = node.execute(model, **kw).args[0]
    lines.clear()
    for mode in ("standard", "diffusion forcing"):
        out, _ = sample(m, mode=mode, steps=10 if mode == "diffusion forcing" else 6)
        assert out.isfinite().all()
    result[node.__name__] = [l for l in lines if "skipped" in l]
    # ... and not with TeaCache: before TeaCache the node says so, after it the run does (KSampler and Sample Video)
    both = []
    for make in (lambda: TeaCache.execute(m, 0.2, False), lambda: sample(node.execute(
            TeaCache.execute(model, 0.2, False).args[0], **kw).args[0]), lambda: core.common_ksampler(node.execute(
            TeaCache.execute(model, 0.2, False).args[0], **kw).args[0], 1, 2, 3.0, "euler", "simple", pos, neg, latent)):
        try:
            make()
        except ValueError as e:
            both.append(str(e))
    result[node.__name__ + " and TeaCache"] = both
    try:
        recipe_of(m)       # named once, not once per wrapper and option it sets
    except ValueError as e:
        result[node.__name__ + " in parallel"] = str(e)
"""


def test_teacache_in_sample_video_and_ksampler(host, tmp_path):
    write_models(tmp_path)
    r = run_in_host(host, SETUP.format(repo=REPO, folder=str(tmp_path)) + CODE.format(repo=REPO))
    print(r)
    assert r["width"] == ("TeaCache: model: SkyReels-V2 publishes coefficients for widths 1536 (1.3B) and 5120 "
                          "(14B); this model is 256 wide")
    assert r["zero is the model"]
    s = r["standard"]
    # a threshold no change reaches: nothing skipped, the same latent bit for bit
    assert s["never"] == ["TeaCache: 0 of 12 model calls skipped (threshold 1e-12; cond and uncond counted apart)"]
    assert s["never_equal"]
    # one no change falls short of: all but the first and last step of each stream (6 steps x cond, uncond)
    assert s["always"] == ["TeaCache: 8 of 12 model calls skipped (threshold 1e+09; cond and uncond counted apart)"]
    assert s["always_differs"] > 1e-3 and s["finite"]
    assert r["retention"] == ["TeaCache: 6 of 16 model calls skipped (threshold 1e+09, retention steps; cond and "
                              "uncond counted apart)"]
    d = r["df"]
    assert d["line"] == [f"TeaCache: {2 * (d['rows'] - 2)} of {2 * d['rows']} model calls skipped (threshold 1e+09; "
                         "cond and uncond counted apart)"]
    # two windows of 6 steps, each starting over: 2 x 2 x (6 - 2)
    assert d["long"] == ["TeaCache: 16 of 24 model calls skipped (threshold 1e+09; cond and uncond counted apart)"]
    assert r["ksampler"] == [12, 8, 0]          # ... and nothing kept once sampling ends
    assert r["areas"] == [32 * 32], r["areas"]   # the 4x4 latent's pixels (8x8 each), not its latent area
    assert r["two prompts"] <= 1e-5, r
    assert r["heun"]
    assert r["twice"] == "TeaCache: model: already has TeaCache (SkyReels-V2); use one TeaCache node", r["twice"]
    assert r["replaced"].startswith("TeaCache: model: its transformer blocks are already replaced by another patch")
    assert r["parallel"] == [0.3, True]
    assert r["parallel, replaced after"].startswith("Sample Video: parallel: this MODEL carries changes a worker "
                                                    "cannot rebuild (patches_replace: a block replacement"), r
    # every call as SkyReels-V2's TeaCache makes it, skipped or not (float noise ~1e-6; a call skipped on one side
    # only would differ by ~0.3, measured on this table)
    for name in ("plain", "skip", "skip_retention"):
        assert r[f"reference {name}"] <= 1e-5, r
    assert any("EasyCache - skipped" in line for line in r["EasyCacheNode"]), r["EasyCacheNode"]
    assert any("LazyCache - skipped" in line for line in r["LazyCacheNode"]), r["LazyCacheNode"]
    for node in ("EasyCacheNode", "LazyCacheNode"):     # both ran, unnoticed, their skips adding up
        assert r[node + " and TeaCache"] == 3 * ["TeaCache: model: has core's EasyCache or LazyCache, which skips "
                                                 "model calls too: their skips would add up; use one of the two"], r
        assert r[node + " in parallel"] == ("Sample Video: parallel: this MODEL carries changes a worker cannot "
                                            "rebuild (easycache: EasyCache or LazyCache); connect Load FP8 SkyReels "
                                            "Model (and Patch SageAttention, TeaCache, LoRA loaders) directly"), r


WINDOWS = r"""
from comfy.patcher_extension import WrappersMP
from comfy_extras.nodes_context_windows import WanContextWindowsManualNode
import nodes as core
from skyreels_pack.nodes.teacache import TeaCache
from skyreels_pack.sampling import teacache

teacache.SIZES[256] = "1.3B"
model = load("df_bf16.safetensors", "bf16")[0]
g = torch.Generator().manual_seed(0)
pos = [[torch.randn(1, 8, 4096, generator=g), {{}}]]
neg = [[torch.randn(1, 8, 4096, generator=g), {{}}]]
now = [None]      # the frames of the model call under way

def note_frames(executor, *args, **kwargs):
    now[0] = tuple((args[5] if len(args) > 5 else kwargs["transformer_options"])["context_window"].index_list)
    return executor(*args, **kwargs)

made_on, used = {{}}, []       # id(residual) -> (residual, frames it was made on); (made on, added to) of each use
keep, residual = teacache.TeaCache.keep, teacache.TeaCache.residual
def keep_(self, stream, r):
    made_on[id(r)] = (r, now[0])
    return keep(self, stream, r)
def residual_(self, stream):
    r = residual(self, stream)
    used.append((made_on[id(r)][1], now[0]))
    return r
teacache.TeaCache.keep, teacache.TeaCache.residual = keep_, residual_
result = {{}}
for schedule in ("standard_static", "standard_uniform"):
    m = WanContextWindowsManualNode.execute(TeaCache.execute(model, 1e9, False).args[0], 13, 4, schedule, 1, False,
                                            "pyramid", False).args[0].clone()
    m.add_wrapper_with_key(WrappersMP.DIFFUSION_MODEL, "test", note_frames)
    used.clear()
    out = core.common_ksampler(m, 0, 8, 3.0, "euler", "simple", pos, neg,
                               {{"samples": torch.zeros(1, 16, 8, 4, 4)}})[0]["samples"]
    cache = m.model_options["transformer_options"]["skyreels_teacache"]
    result[schedule] = dict(calls=cache.calls, skipped=cache.skipped, uses=len(used),
                            other_frames=sum(a != b for a, b in used), finite=bool(out.isfinite().all()))
"""


def test_teacache_adds_a_residual_only_to_the_frames_it_was_made_on_under_context_windows(host, tmp_path):
    # Core Wan Context Windows runs the model window by window; its uniform schedule moves the windows at every step.
    write_models(tmp_path)
    r = run_in_host(host, SETUP.format(repo=REPO, folder=str(tmp_path)) + WINDOWS.format())
    print(r)
    for schedule, s in r.items():
        assert s["finite"] and s["uses"] == s["skipped"] > 0, (schedule, s)
        assert s["other_frames"] == 0, (schedule, s)       # 6 of 10 uses, on the uniform schedule, before
    # static windows: each window and prompt is a stream, all but its first and last step skipped
    static = r["standard_static"]
    assert static["skipped"] == static["calls"] - 2 * static["calls"] // 8, static
