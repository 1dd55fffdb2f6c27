"""Checks that need the model object itself: partial (lowvram) loading, the DF fps term, and the attention's
shared-input quantization. Each runs in a fresh host process that imports the pack the way ComfyUI does (as a
package named after its folder)."""
import safetensors.torch
from comfy_host import REPO, run_in_host
from in_host import SETUP, write_models

PARTIAL = r"""
cpu = torch.device("cpu")
result = {{}}
for name in ("t2v_fp8_channel.safetensors", "t2v_fp8_tensor.safetensors"):
    patcher, _ = load(name)
    lora = comfy.utils.load_torch_file({lora!r})
    for with_lora in (False, True):
        p = comfy.sd.load_lora_for_models(patcher, None, lora, 1.0, 0.0)[0] if with_lora else patcher.clone()
        p.patch_model(cpu)                       # full load: LoRA merged and re-quantized
        with torch.no_grad():
            full = p.model.diffusion_model(x, t, ctx, transformer_options=p.model_options["transformer_options"])
        p.unpatch_model(cpu)
        p.patch_model(cpu, lowvram_model_memory=1)  # lowvram: weights cast per layer, LoRA applied on the fly
        cast_layers = sum(1 for m in p.model.modules() if getattr(m, "comfy_cast_weights", False))
        lora_on_the_fly = sum(1 for m in p.model.modules() if len(getattr(m, "weight_function", [])) > 0)
        partial = getattr(p.model, "model_lowvram", False)
        with torch.no_grad():
            low = p.model.diffusion_model(x, t, ctx, transformer_options=p.model_options["transformer_options"])
        p.unpatch_model(cpu)
        result[f"{{name}} lora={{with_lora}}"] = dict(rel=rel(low, full), partial=partial, cast_layers=cast_layers,
                                                     lora_on_the_fly=lora_on_the_fly)
"""

FPS = r"""
import torch.nn as nn
sd = comfy.utils.load_torch_file(os.path.join({folder!r}, "df_bf16.safetensors"))
# SkyReels-V2's fps conditioning written out with torch modules: e0 += fps_projection(fps_embedding(id)).
emb = nn.Embedding(2, 256)
proj = nn.Sequential(nn.Linear(256, 256), nn.SiLU(), nn.Linear(256, 6 * 256))
emb.load_state_dict({{"weight": sd["fps_embedding.weight"].float()}})
proj.load_state_dict({{k[len("fps_projection."):]: v.float() for k, v in sd.items() if k.startswith("fps_projection.")}})
ref_patcher = comfy.sd.load_diffusion_model(os.path.join({folder!r}, "df_bf16.safetensors"))  # drops fps keys
ref_model = ref_patcher.model.diffusion_model

def reference(fps_id):
    extra = proj(emb(torch.tensor([fps_id]))).detach()
    hook = ref_model.time_projection.register_forward_hook(lambda m, i, out: out + extra.to(out))
    try:
        with torch.no_grad():
            return ref_model(x, t, ctx)
    finally:
        hook.remove()

patcher, report = load("df_bf16.safetensors", "bf16")
def ours(fps=None):
    opts = dict(patcher.model_options["transformer_options"])
    opts["wrappers"] = patcher.wrappers  # what the host's sampler puts there (sampler_helpers)
    if fps is not None:
        opts["skyreels_fps"] = fps
    with torch.no_grad():
        return patcher.model.diffusion_model(x, t, ctx, transformer_options=opts)
with torch.no_grad():
    plain = ref_model(x, t, ctx)
# In bf16 (the host's compute dtype on most GPUs; inputs in bf16 make the CPU compute in it): the block's e0 is the
# float32 sum of the host's projection and SkyReels-V2's float32 term, rounded once.
seen = {{}}
dm = patcher.model.diffusion_model
raw = dm.time_projection.register_forward_hook(lambda m, i, out: seen.setdefault("raw", out))   # runs before ours
def first_block(module, args, kwargs):
    seen.setdefault("e0", kwargs["e"])
block = dm.blocks[0].register_forward_pre_hook(first_block, with_kwargs=True)
try:
    ours_bf16 = [a.to(torch.bfloat16) for a in (x, t, ctx)]
    opts = dict(patcher.model_options["transformer_options"], wrappers=patcher.wrappers)
    with torch.no_grad():
        patcher.model.diffusion_model(*ours_bf16, transformer_options=opts)
        want = (seen["raw"] + proj(emb(torch.tensor([1])))[0]).to(torch.bfloat16).unflatten(2, (6, 256))
finally:
    raw.remove()
    block.remove()
once = dict(dtype=str(seen["e0"].dtype), differ=int((seen["e0"] != want).sum()), of=seen["e0"].numel())
result = dict(fps24=rel(ours(), reference(1)), fps16=rel(ours(16), reference(0)), plain_vs_fps=rel(plain, reference(1)),
              once=once,
              hooks_left=len(patcher.model.diffusion_model.time_projection._forward_hooks), report=report)
"""

SHARED = r"""
from skyreels_pack.quant import act_quant
patcher, report = load("t2v_fp8_channel.safetensors", compute="fp8 matmul")
model = patcher.model.diffusion_model
quantized = []
real = act_quant.quantize
act_quant.quantize = lambda x, *a, **k: quantized.append(tuple(x.shape)) or real(x, *a, **k)

def forward():
    quantized.clear()
    with torch.inference_mode():   # as the host runs nodes: tensors without version counters
        return model(x, t, ctx, transformer_options=patcher.model_options["transformer_options"])
held_at_o = []     # the q/k/v input's quantization, still held when the attention's output Linear runs
hook = model.blocks[0].self_attn.o.register_forward_pre_hook(
    lambda *args: held_at_o.append(act_quant._state.entry is not None))
shared = forward()
hook.remove()
counts = dict(shared=len(quantized), held=act_quant._state.entry is not None, depth=act_quant._state.depth,
              held_at_o=held_at_o)
# Cancel inside a self-attention: ComfyUI's interrupt is a BaseException, which torch's always_call hooks miss.
import comfy.model_management as mm
def cancel(module, args):
    raise mm.InterruptProcessingException()
hook = model.blocks[0].self_attn.k.register_forward_pre_hook(cancel)
try:
    forward()
except mm.InterruptProcessingException:
    pass
hook.remove()
left_open = act_quant._state.depth
depths = []      # seen by an FFN Linear of the next model call: outside every attention
hook = model.blocks[0].ffn[0].register_forward_pre_hook(lambda *args: depths.append(act_quant._state.depth))
forward()
hook.remove()
act_quant._key = lambda x, per_tensor: None   # no reuse at all
alone = forward()
result = dict(counts, alone=len(quantized), equal=bool(torch.equal(shared, alone)), report=report,
              blocks=len(model.blocks), left_open=left_open, depths=depths)
# Where the FP8 product cannot run (here: a reason made up for the test), the log says so once: core's KSampler has
# no report to say it.
import logging
from skyreels_pack.quant import fp8
warned = []
handler = logging.Handler(logging.WARNING)
handler.emit = lambda r: warned.append(r.getMessage())
logging.getLogger("skyreels_fp8").addHandler(handler)
real_plan = fp8._w8a8_plan
fp8._w8a8_plan = lambda x, w, s: (None, "a reason made up for the test")
try:
    forward()
    forward()
finally:
    fp8._w8a8_plan = real_plan
result["fallback_logs"] = [m for m in warned if "fp8 matmul" in m]
# Sample Video's report counts the run's own products: a run after those fallbacks names none of them.
from skyreels_pack.nodes.adapters import run_report
meter = run_report.Meter(torch.device("cpu"))
forward()
meter.finish()
result["next_run"] = [meter.products, meter.fallback_reasons]
"""


def test_h_attention_quantizes_its_shared_input_once(host, tmp_path):
    write_models(tmp_path)
    r = run_in_host(host, SETUP.format(repo=REPO, folder=str(tmp_path)) + SHARED)
    # Per block 10 FP8 Linears: self-attention q, k, v on one input (1 quantization) and o; cross-attention q,
    # k and v on the text (1) and o; the two FFN Linears. Reusing changes no bit of the output.
    assert r["alone"] == 10 * r["blocks"] and r["shared"] == 7 * r["blocks"], r
    assert r["equal"] and not r["held"] and r["depth"] == 0, r
    assert r["held_at_o"] == [False], r      # dropped after v: not held through the attention (its VRAM)
    # a Cancel mid-attention leaves its scope open (1), and the next model call closes it before any other Linear
    # (it stayed open for the session: every inference tensor would have counted as shared)
    assert r["left_open"] == 1 and r["depths"] == [0], r
    assert "compute: fp8 matmul (cpu device: no FP8 tensor cores);" in r["report"], r
    # where an FP8 product cannot run, the log says so once (core KSampler shows no report)
    assert r["fallback_logs"] == ["fp8 matmul unavailable (a reason made up for the test); using upcast"], r
    # the next run's report: its own products only, and no reason of the runs before
    assert r["next_run"] == [{"w8a8": 10 * r["blocks"], "fallback": 0, "upcast": 0}, []], r["next_run"]


MULTIGPU = r"""
import threading
from skyreels_pack.nodes.adapters import video_attention
torch.set_num_threads(1)     # each op's result then does not depend on what the other thread runs
path = os.path.join({folder!r}, "df_bf16.safetensors")
gpus = [comfy.sd.load_diffusion_model(path) for _ in range(2)]    # core's MultiGPU CFG Split: a model per GPU
causal = video_attention.install(gpus[0])           # one VideoAttention for both, as the host's threads share it
xx = torch.randn(1, 16, 4, 16, 16, generator=g)
tt = torch.tensor([[999.0, 999, 600, 600]])         # Diffusion Forcing: a timestep per latent frame

def forward(patcher, frames_per_block=2):
    opts = dict(causal.model_options["transformer_options"], wrappers=causal.wrappers)
    opts[video_attention.CAUSAL_KEY] = frames_per_block
    with torch.no_grad():
        return patcher.model.diffusion_model(xx, tt, ctx, transformer_options=opts)

alone, not_causal = forward(gpus[0]), forward(gpus[0], None)
inside, other_done, out = threading.Event(), threading.Event(), {{}}

def hold(module, args):     # thread A, inside block 0's self-attention: waits there for B's whole forward pass
    if threading.current_thread().name == "A" and not inside.is_set():
        inside.set()
        other_done.wait(120)

hook = gpus[0].model.diffusion_model.blocks[0].self_attn.q.register_forward_pre_hook(hold)
a = threading.Thread(target=lambda: out.update(A=forward(gpus[0])), name="A")
a.start()
inside.wait(120)
out["B"] = forward(gpus[1])
other_done.set()
a.join()
hook.remove()
result = dict(a=rel(out["A"], alone), b=rel(out["B"], alone), mask_matters=rel(not_causal, alone))
"""


def test_causal_attention_holds_when_two_gpus_run_forward_passes_at_once(host, tmp_path):
    # Core's MultiGPU CFG Split runs each GPU's forward pass in a thread of its own, all through one VideoAttention.
    # Here one thread waits inside a self-attention while the other runs a whole forward pass: with the pass state
    # shared, the first thread's self-attention went without the causal mask (2.1e-2 from the pass run alone).
    # Both passes do the same arithmetic as one run alone, one thread per op: equal to 1e-6 (measured: 0.0).
    write_models(tmp_path)
    r = run_in_host(host, SETUP.format(repo=REPO, folder=str(tmp_path)) + MULTIGPU.format(folder=str(tmp_path)))
    assert r["mask_matters"] > 1e-3, r      # the causal mask changes this output: the check below can fail
    assert r["a"] <= 1e-6 and r["b"] <= 1e-6, r


def test_g_partial_lowvram_load_gives_the_same_output(host, tmp_path):
    from conftest import write_lora
    write_models(tmp_path)
    sd = safetensors.torch.load_file(str(tmp_path / "t2v_bf16.safetensors"))
    write_lora(tmp_path / "lora.safetensors", sd)
    r = run_in_host(host, SETUP.format(repo=REPO, folder=str(tmp_path)) +
                    PARTIAL.format(lora=str(tmp_path / "lora.safetensors")))
    print("\n" + "\n".join(f"{k}: {v}" for k, v in r.items()))
    for key, v in r.items():
        assert v["partial"] and v["cast_layers"] > 0, (key, v)  # the partial path really ran
        assert (v["lora_on_the_fly"] > 0) == key.endswith("True"), (key, v)
        # Without a LoRA nothing is re-quantized: identical. With one, full load re-quantizes W + dW to fp8 while
        # lowvram adds dW to the dequantized W in float: they differ by one fp8 rounding of the merged weights.
        assert v["rel"] <= (1e-6 if key.endswith("False") else 0.03), (key, v)


def test_df_fps_term_matches_skyreels_definition(host, tmp_path):
    write_models(tmp_path)
    r = run_in_host(host, SETUP.format(repo=REPO, folder=str(tmp_path)) + FPS.format(folder=str(tmp_path)))
    assert r["fps24"] <= 1e-5 and r["fps16"] <= 1e-5, r      # same as the written-out definition
    assert r["plain_vs_fps"] > 1e-3, r                       # and the term is not negligible
    assert r["hooks_left"] == 0, r                           # the hook lives only during a call
    assert r["once"]["dtype"] == "torch.bfloat16" and r["once"]["differ"] == 0, r["once"]   # one rounding, exact
    assert "fps embedding: on" in r["report"]


# A standard Sample Video run (a LoRA folder registered): sample(model) -> (latent, report).
SAMPLE_WITH_LORAS = r"""
import nodes as core
from skyreels_pack.nodes.sample import SampleVideo
folder_paths.add_model_folder_path("loras", {folder!r})
pos = [[torch.randn(1, 8, 4096, generator=g), {{}}]]
neg = [[torch.randn(1, 8, 4096, generator=g), {{}}]]
ARGS = dict(width=32, height=32, frames=9, seed=1, steps=4, cfg=3.0, shift=8.0, sampler="unipc", fps=24,
            mode={{"mode": "standard"}})

def sample(m):
    samples, report, _ = SampleVideo.execute(m, pos, neg, **ARGS).args[:3]
    return samples["samples"], report
"""

BYPASS = SAMPLE_WITH_LORAS + r"""
from comfy_extras.nodes_lora_debug import LoraLoaderBypassModelOnly
bf16 = load("t2v_bf16.safetensors", "bf16")[0]
ref = sample(core.LoraLoaderModelOnly().load_lora_model_only(bf16, "lora.safetensors", 1.0)[0])[0]
result = {{"lora effect": rel(sample(bf16)[0], ref)}}
for compute in ("upcast", "fp8 matmul"):
    fp8 = load("t2v_fp8_channel.safetensors", "auto", compute)[0]
    out, report = sample(LoraLoaderBypassModelOnly().load_lora_model_only(fp8, "lora.safetensors", 1.0)[0])
    result[compute] = dict(rel=rel(out, ref), no_lora=rel(sample(fp8)[0], ref), report=report.splitlines()[2])
"""


def test_core_bypass_lora_on_fp8_weights(host, tmp_path):
    """Core Load LoRA (Bypass): the LoRA runs beside the FP8 Linears (upcast and fp8 matmul) without re-quantizing
    them, against a bf16 model with the same LoRA merged."""
    from conftest import write_lora
    write_models(tmp_path)
    write_lora(tmp_path / "lora.safetensors", safetensors.torch.load_file(str(tmp_path / "t2v_bf16.safetensors")))
    r = run_in_host(host, SETUP.format(repo=REPO, folder=str(tmp_path)) + BYPASS.format(folder=str(tmp_path)))
    assert r["lora effect"] > 0.1, r                       # the LoRA moves this video by 17%
    for compute, matmul in (("upcast", "fp8 weights upcast"), ("fp8 matmul", "fp8 w8a8 (80 products)")):
        v = r[compute]
        # Only the FP8 weights' error is left (measured: 3.5% upcast, 5.0% w8a8); without the LoRA it is ~17%.
        assert v["rel"] < 0.08 and v["no_lora"] > 0.1, (compute, v)
        assert "20 float8_e4m3fn (per-channel)" in v["report"] and f"matmul: {matmul}" in v["report"], (compute, v)


SAVE = SAMPLE_WITH_LORAS + r"""
import glob
from safetensors import safe_open
from comfy_extras.nodes_model_merging import ModelSave
folder_paths.set_output_directory({out!r})
folder_paths.add_model_folder_path("diffusion_models", os.path.join({out!r}, "diffusion_models"))

def weights_run(m):   # the latent and the report's weights line
    samples, report = sample(m)
    return samples, report.splitlines()[2]

result = {{}}
for granularity in ("channel", "tensor"):
    merged = core.LoraLoaderModelOnly().load_lora_model_only(load(f"t2v_fp8_{{granularity}}.safetensors")[0],
                                                             "lora.safetensors", 1.0)[0]
    before, weights = weights_run(merged)
    ModelSave().save(merged, f"diffusion_models/merged_{{granularity}}")
    path = glob.glob(os.path.join({out!r}, "diffusion_models", f"merged_{{granularity}}_*.safetensors"))[0]
    ours, ours_weights = weights_run(load(os.path.basename(path))[0])
    result[granularity] = dict(weights=weights, ours=rel(ours, before), ours_weights=ours_weights)
    try:
        result[granularity]["core"] = rel(sample(comfy.sd.load_diffusion_model(path))[0], before)
    except Exception as e:
        result[granularity]["core"] = f"{{type(e).__name__}}: {{e}}"

# DF-1.3B's fps layers: a LoRA on them applies, and Save Model writes them (SkyReels-V2's names, the LoRA merged)
df = load("df_bf16.safetensors")[0]
w = torch.randn(6 * 256, 4, generator=g), torch.randn(4, 256, generator=g)
fps_lora = {{"diffusion_model.fps_projection.2.lora_up.weight": w[0] * 0.1,
             "diffusion_model.fps_projection.2.lora_down.weight": w[1] * 0.1}}
df_lora = comfy.sd.load_lora_for_models(df, None, fps_lora, 1.0, 0.0)[0]
before = sample(df_lora)[0]
ModelSave().save(df_lora, "diffusion_models/df_saved")
path = glob.glob(os.path.join({out!r}, "diffusion_models", "df_saved_*.safetensors"))[0]
with safe_open(path, "pt") as f:
    fps_keys = sorted(k for k in f.keys() if ".fps_" in k)
again, report = load(os.path.basename(path))
result["df"] = dict(lora=rel(before, sample(df)[0]), saved=rel(sample(again)[0], before), fps_keys=fps_keys,
                    report=report)
"""


def test_core_model_save_of_a_merged_fp8_model_loads_again(host, tmp_path):
    """Core Save Model of an FP8 MODEL with a LoRA merged (what Parallel Config tells users to do with model merges):
    the file loads in Load FP8 SkyReels Model with the same weights; per-tensor files in core Load Diffusion Model
    too, while core stops at the per-channel format it does not know rather than use the wrong scale."""
    from conftest import write_lora
    write_models(tmp_path)
    write_lora(tmp_path / "lora.safetensors", safetensors.torch.load_file(str(tmp_path / "t2v_bf16.safetensors")))
    code = SAVE.format(folder=str(tmp_path), out=str(tmp_path / "output"))
    r = run_in_host(host, SETUP.format(repo=REPO, folder=str(tmp_path)) + code)
    for granularity in ("channel", "tensor"):
        v = r[granularity]
        assert v["ours"] == 0.0 and v["ours_weights"] == v["weights"], (granularity, v)   # the same fp8 weights
        assert f"20 float8_e4m3fn (per-{granularity})" in v["weights"], v
    assert r["tensor"]["core"] == 0.0, r["tensor"]
    assert r["channel"]["core"] == "KeyError: 'skyreels_fp8_e4m3fn_per_channel'", r["channel"]
    df = r["df"]
    assert df["lora"] > 1e-3, df      # the fps LoRA moves the video (measured 0.0071); its keys were not loaded before
    assert df["saved"] == 0.0 and "fps embedding: on" in df["report"], df
    assert df["fps_keys"] == [f"model.diffusion_model.{k}" for k in (
        "fps_embedding.weight", "fps_projection.0.bias", "fps_projection.0.weight", "fps_projection.2.bias",
        "fps_projection.2.weight")], df


REQUANTIZE = r"""
from skyreels_pack.nodes.adapters import fp8_ops
w = torch.randn(96, 80, generator=g, dtype=torch.bfloat16)
result = {{}}
for per_channel in (False, True):
    fp8_ops.REQUANTIZE_VALUES = 1 << 30                 # one block: the whole layer
    whole, whole_params = fp8_ops.FP8Layout.quantize(w, "recalculate", per_channel=per_channel)
    fp8_ops.REQUANTIZE_VALUES = 7 * 80                  # blocks of 7 rows, the last one short
    q, params = fp8_ops.FP8Layout.quantize(w, "recalculate", per_channel=per_channel)
    result[str(per_channel)] = dict(same=torch.equal(q.view(torch.uint8), whole.view(torch.uint8)) and
                                    torch.equal(params.scale, whole_params.scale), scale=list(params.scale.shape),
                                    error=rel(fp8_ops.FP8Layout.dequantize(q, params).float(), w.float()))

# The host's own call after a LoRA merge: Linear.set_weight re-quantizes the merge's fp32 temporary with a seed
# (stochastic rounding) and inplace_ops. Peak CPU bytes while it runs, per byte of that temporary, against the host's
# per-tensor layout doing the same; and in place gives the bytes the copying path gives.
import comfy.ops
from comfy_kitchen.tensor import QuantizedTensor
from torch.profiler import profile, ProfilerActivity

def peak(fn):
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    live = top = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        live += event.self_cpu_memory_usage
        top = max(top, live)
    return top

big = torch.randn(512, 512, generator=g)
peaks = {{}}
for name, layout, kw in (("ours tensor", fp8_ops.LAYOUT, dict(per_channel=False)),
                         ("ours channel", fp8_ops.LAYOUT, dict(per_channel=True)),
                         ("host tensor", "TensorCoreFP8E4M3Layout", {{}})):
    linear = comfy.ops.mixed_precision_ops({{}}, torch.float32, full_precision_mm=True).Linear(512, 512, bias=False)
    linear.weight = torch.nn.Parameter(QuantizedTensor.from_float(big.bfloat16(), layout, **kw), requires_grad=False)
    linear.layout_type = layout
    merged = big + 0.01
    peaks[name] = peak(lambda: linear.set_weight(merged, seed=1234)) / merged.nbytes
in_place = fp8_ops.FP8Layout.quantize(big.clone(), "recalculate", stochastic_rounding=5, inplace_ops=True)[0]
copied = fp8_ops.FP8Layout.quantize(big, "recalculate", stochastic_rounding=5)[0]
result["stochastic"] = dict(peaks=peaks, same=torch.equal(in_place.view(torch.uint8), copied.view(torch.uint8)))
# An e5m2 layer (Convert to FP8's fp8_type e5m2) stays e5m2 when a LoRA merge re-quantizes it
linear = comfy.ops.mixed_precision_ops({{}}, torch.float32, full_precision_mm=True).Linear(512, 512, bias=False)
linear.weight = torch.nn.Parameter(QuantizedTensor.from_float(big.bfloat16(), fp8_ops.LAYOUT, per_channel=False,
                                                              fp8_dtype=torch.float8_e5m2), requires_grad=False)
linear.layout_type = fp8_ops.LAYOUT
linear.set_weight(big + 0.01, seed=1234)
result["e5m2 merged"] = [str(linear.weight._qdata.dtype), list(linear.weight._params.scale.shape)]
"""


def test_lora_requantization_in_row_blocks_equals_the_whole_layer(host, tmp_path):
    """A LoRA merge re-quantizes each layer with the host's seeded stochastic rounding, in place on the host's fp32
    temporary; without a seed in row blocks, which give the same bytes as at once, per tensor and per channel."""
    r = run_in_host(host, SETUP.format(repo=REPO, folder=str(tmp_path)) + REQUANTIZE.format())
    assert r["False"]["same"] and r["False"]["scale"] == [], r
    assert r["True"]["same"] and r["True"]["scale"] == [96, 1], r
    assert r["False"]["error"] < 0.035 and r["True"]["error"] < 0.035, r    # e4m3's 3.5% bound (tests/test_fp8.py)
    # The host's seeded re-quantization scales its own fp32 temporary in place: no more than the host's layout needs
    # (measured equal; a copy of the temporary, as before, adds 1.0), whatever comfy-kitchen's rounding itself takes
    # (about 4x on the CPU).
    peaks = r["stochastic"]["peaks"]
    assert r["stochastic"]["same"], r
    assert max(peaks["ours tensor"], peaks["ours channel"]) <= peaks["host tensor"] + 0.05, peaks
    assert r["e5m2 merged"] == ["torch.float8_e5m2", []], r["e5m2 merged"]     # its format and granularity kept


UNET_DTYPE_OPTION = r"""
import comfy.cli_args
cpu = torch.device("cpu")

def run(fmt):
    patcher, report = load("t2v_bf16.safetensors", fmt)
    patcher.patch_model(cpu)
    with torch.no_grad():
        out = patcher.model.diffusion_model(x, t, ctx, transformer_options=patcher.model_options["transformer_options"])
    kept = sorted({{str(p.dtype) for n, p in patcher.model.diffusion_model.named_parameters()
                   if not n.endswith(".weight") or "blocks." not in n or "norm" in n or "modulation" in n}})
    return out, kept, report

result = {{}}
for fmt in ("fp8_e4m3fn (per-channel)", "bf16"):
    base, base_kept, base_report = run(fmt)
    comfy.cli_args.args.fp8_e4m3fn_unet = True       # ComfyUI started with --fp8_e4m3fn-unet
    try:
        out, kept, report = run(fmt)
    finally:
        comfy.cli_args.args.fp8_e4m3fn_unet = False
    result[fmt] = dict(rel=rel(out, base), kept=kept, base_kept=base_kept, report=report, base_report=base_report)
from skyreels_pack.nodes.adapters import run_report
fp16 = load("t2v_bf16.safetensors", "fp16")
result["fp16"] = [run_report.weights_summary(fp16[0])[0], fp16[1]]
comfy.cli_args.args.force_fp16 = comfy.cli_args.args.fp16_unet = True    # --force-fp16, as cli_args sets it
try:
    result["--force-fp16"] = run("fp8_e4m3fn (per-channel)")[2]
finally:
    comfy.cli_args.args.force_fp16 = comfy.cli_args.args.fp16_unet = False
"""


def test_comfyui_weight_dtype_option_leaves_the_kept_tensors_alone(host, tmp_path):
    # --fp8_e4m3fn-unet (a common launch option on small GPUs) made the host store every tensor this loader keeps in
    # high precision (modulation, norms, biases, the head) as an fp8 cast with no scale, under a report saying
    # otherwise: 3.7% from bf16 where the FP8 model alone is 2.8%.
    write_models(tmp_path)
    r = run_in_host(host, SETUP.format(repo=REPO, folder=str(tmp_path)) + UNET_DTYPE_OPTION.format())
    print(r)
    fp8 = r["fp8_e4m3fn (per-channel)"]
    assert fp8["rel"] == 0.0 and fp8["kept"] == fp8["base_kept"] == ["torch.float32"], fp8
    assert "note" not in fp8["base_report"], fp8["base_report"]
    assert fp8["report"].endswith("; note: ComfyUI's --fp8_e4m3fn-unet is not applied: the FP8 layers are this "
                                  "loader's, the other tensors stay float32"), fp8["report"]
    # the option the user gave: --force-fp16 reaches the loader as --fp16-unet
    assert r["--force-fp16"].endswith("; note: ComfyUI's --force-fp16 is not applied: the FP8 layers are this "
                                      "loader's, the other tensors stay float32"), r["--force-fp16"]
    # weight_format bf16 names its dtype, which the option does not change either
    assert r["bf16"]["rel"] == 0.0 and r["bf16"]["kept"] == r["bf16"]["base_kept"], r["bf16"]
    # weight_format fp16: the weights are float16, as its report says
    assert r["fp16"][0] == "Linear weights: 26 float16" and "float16" in r["fp16"][1], r["fp16"]


def test_force_channels_last_is_named_before_the_file_is_read(host, tmp_path):
    # ComfyUI's --force-channels-last lays out every 4-D weight; a Wan model's patch embedding is 5-D, where the
    # host stopped with "required rank 4 tensor to use channels_last format" (its own loader does too: checked here)
    write_models(tmp_path)
    r = run_in_host(host, SETUP.format(repo=REPO, folder=str(tmp_path)) + r"""
comfy.cli_args.args.force_channels_last = True
result = []
for build in (lambda: load("t2v_bf16.safetensors"), lambda: comfy.sd.load_diffusion_model(
        os.path.join({folder!r}, "t2v_bf16.safetensors"))):
    try:
        build()
        result.append("loaded")
    except Exception as e:
        result.append(str(e))
""".format(folder=str(tmp_path)))
    assert r[0] == ("Load FP8 SkyReels Model: ComfyUI runs with --force-channels-last, which no Wan model can take "
                    "(its patch embedding is a 3-D convolution; core's Load Diffusion Model stops too: 'required rank "
                    "4 tensor to use channels_last format'); start ComfyUI without it"), r
    assert r[1] == "required rank 4 tensor to use channels_last format", r


PATCHES = r"""
from skyreels_pack.nodes.adapters import parallel_run, run_report
from comfy_extras.nodes_model_merging import ModelAdd, ModelMergeSimple
model, _ = load("t2v_bf16.safetensors")
other = comfy.sd.load_diffusion_model(folder_paths.get_full_path("diffusion_models", "t2v_bf16.safetensors"))
lora = {}
for i in range(2):
    for name in ("self_attn.q", "cross_attn.o"):
        w = model.model.diffusion_model.blocks[i].get_submodule(name).weight
        lora[f"diffusion_model.blocks.{i}.{name}.lora_up.weight"] = torch.randn(w.shape[0], 4, generator=g)
        lora[f"diffusion_model.blocks.{i}.{name}.lora_down.weight"] = torch.randn(4, w.shape[1], generator=g)
models = dict(plain=comfy.sd.load_lora_for_models(model, None, lora, 1.0, 0)[0],
              bypass=comfy.sd.load_bypass_lora_for_models(model, None, lora, 1.0, 0)[0],
              merged=ModelMergeSimple().merge(model, other, 0.5)[0], added=ModelAdd().merge(model, other)[0])
models["two"] = comfy.sd.load_lora_for_models(models["plain"], None, lora, 0.5, 0)[0]   # two LoRAs, the same weights
result = dict(lines={k: run_report.patches_lines(m) for k, m in models.items()}, parallel={})
for name in ("merged", "added"):
    try:
        parallel_run._weight_patches(models[name])
        result["parallel"][name] = "accepted"
    except ValueError as e:
        result["parallel"][name] = str(e)
"""


def test_report_tells_loras_bypass_loras_and_merges_apart(host, tmp_path):
    # Sample Video's report line; and ComfyUI's real merges (lists of whole weights) stay refused by Parallel Config
    # now that a LoRA file's diff / set tuples are taken.
    write_models(tmp_path)
    r = run_in_host(host, SETUP.format(repo=REPO, folder=str(tmp_path)) + PATCHES)
    assert r["lines"] == {"plain": ["weight patches (LoRAs): 4 weights"],
                          "bypass": ["LoRAs in bypass mode (Load LoRA (Bypass) (For debugging)): applied beside the "
                                     "weights"],
                          "merged": ["weight patches (model merge): 69 weights"],
                          "added": ["weight patches (model merge): 69 weights"],
                          "two": ["weight patches (LoRAs): 4 weights"]}, r["lines"]
    for name, message in r["parallel"].items():
        assert "a weight patch of type list (a model merge" in message, (name, message)


def test_fp8_files_load_without_the_hosts_missing_keys_warning(host, tmp_path):
    # Our FP8 layers take their weights under the host's names: the host's "unet missing: [...]" warning, which reads
    # as a broken model, must not come. Compute upcast, as the user chose it, gets no "why not fp8 matmul" note.
    write_models(tmp_path)
    r = run_in_host(host, SETUP.format(repo=REPO, folder=str(tmp_path)) + r"""
import logging
warned = []
handler = logging.Handler(logging.WARNING)
handler.emit = lambda record: warned.append(record.getMessage())
logging.getLogger().addHandler(handler)
reports = [load(name)[1] for name in ("t2v_fp8_channel.safetensors", "t2v_fp8_tensor.safetensors")]
result = dict(missing=[m[:200] for m in warned if "missing" in m], reports=reports)
""")
    assert r["missing"] == [], r
    assert all("; compute: upcast; " in report for report in r["reports"]), r["reports"]


def test_tensors_the_model_does_not_use_are_named_in_its_report(host, tmp_path):
    # A file with tensors beside the model's (FantasyTalking's projector merged into a Wan file, say) loads, and they
    # do nothing: the loader's report, which the user sees, says so, where before only the log did.
    from helpers import write_tiny
    write_tiny(tmp_path / "t2v.safetensors", "T2V", seed=1)
    sd = safetensors.torch.load_file(str(tmp_path / "t2v.safetensors"))
    sd["proj_model.proj.weight"] = sd["blocks.0.ffn.0.weight"].clone()
    safetensors.torch.save_file(sd, str(tmp_path / "t2v_extra.safetensors"))
    r = run_in_host(host, SETUP.format(repo=REPO, folder=str(tmp_path)) + 'result = load("t2v_extra.safetensors")[1]')
    assert r.endswith("; note: 1 tensors a SkyReels-V2 T2V/DF custom (dim 256), 2 blocks does not use are ignored: "
                      "proj_model.proj.weight"), r


LOADER_AND_NODES = r"""
import logging
records = []
handler = logging.Handler(logging.WARNING)
handler.emit = lambda r: records.append(r.getMessage())
logging.getLogger().addHandler(handler)
from skyreels_pack.nodes.adapters import model_files
from skyreels_pack.nodes.convert import _output_name
from skyreels_pack.nodes.parallel import ParallelConfig
from skyreels_pack.nodes.sage_patch import PatchSageAttention
m, report = LoadFP8SkyReelsModel.execute("t2v.safetensors", "auto", "upcast", 0, 1).args
fn, args = m.cached_patcher_init[:2]
load("t2v_extra.safetensors")
PatchSageAttention.execute(m, "reference", 1, 1, 0, 0.995)
result = dict(report=report, again=fn(*args)[1], recipe=m.attachments[model_files.RECIPE],
              unexpected=[r for r in records if "unexpected" in r], cover=[r for r in records if "cover" in r],
              address=ParallelConfig.execute(2, "cpu", " 10.0.0.5:6379\n").args[0]["address"],
              name=_output_name(os.path.join({folder!r}, "t2v.safetensors"), " my_fp8.safetensors ", "e4m3fn",
                                "tensor"))
"""


def test_widgets_reach_what_the_nodes_make(host, tmp_path):
    # keep_last_blocks reaches the model and the recipe ComfyUI's copies and the parallel workers load again from;
    # tensors the model does not use are not handed to the host (it would warn "unet unexpected" beside our note);
    # exact blocks that cover the whole model are told; a pasted ray_address and output_name lose their spaces.
    from helpers import write_tiny
    sd = write_tiny(tmp_path / "t2v.safetensors", "T2V", seed=1)
    sd["proj_model.proj.weight"] = sd["blocks.0.ffn.0.weight"].clone()
    safetensors.torch.save_file(sd, str(tmp_path / "t2v_extra.safetensors"))
    r = run_in_host(host, SETUP.format(repo=REPO, folder=str(tmp_path)) + LOADER_AND_NODES.format(folder=str(tmp_path)))
    assert ", 59 of 69 tensors kept " in r["report"], r     # the last block's 10 Linears kept, of the 20
    assert r["recipe"]["keep_last_blocks"] == 1 and r["again"] == r["report"], r
    assert r["unexpected"] == [], r
    assert r["cover"] == ["Patch SageAttention: exact_first_blocks + exact_last_blocks (2) cover all 2 blocks of this "
                          "model: every attention call stays exact"], r
    assert r["address"] == "10.0.0.5:6379" and r["name"] == "my_fp8.safetensors", r
