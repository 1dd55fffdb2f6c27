"""Patch SageAttention on the real host: core KSampler on a tiny model, counted attention calls, the guard."""
from comfy_host import REPO, host_release, run_in_host
from in_host import SETUP, write_models

LOGS = r"""
records = []
handler = logging.Handler(logging.WARNING)
handler.emit = lambda r: records.append(r.getMessage())
logging.getLogger("skyreels_fp8").addHandler(handler)
"""  # the pack's warnings and above, as `records`

INFO_LOGS = r"""
info = []
handler = logging.Handler(logging.INFO)
handler.emit = lambda r: info.append([r.levelname, r.getMessage()])
logging.getLogger("skyreels_fp8").addHandler(handler)
logging.getLogger("skyreels_fp8").setLevel(logging.INFO)
"""  # the pack's info messages and above, as [level, message] in `info`

RUN = r"""
import inspect, logging, nodes as core
from comfy.ldm.modules.attention import attention_pytorch
from skyreels_pack.attention.dispatch import choose
from skyreels_pack.nodes.adapters.sage_override import host_installed
from skyreels_pack.nodes.sage_patch import NODE_MODES, PatchSageAttention
pos = [[torch.randn(1, 16, 4096, generator=g), {}]]
neg = [[torch.randn(1, 16, 4096, generator=g), {}]]
latent = {"samples": torch.zeros(1, 16, 2, 8, 8)}

class Counter:
    # exact attention as the node means it: the host's PyTorch attention (on this CPU host its global choice is
    # sub-quadratic attention, which rounds differently)
    def __init__(self):
        self.n = 0
    def __call__(self, func, *args, **kwargs):
        self.n += 1
        return attention_pytorch(*args, **kwargs)

def ksample(model):
    return core.common_ksampler(model, 0, 2, 2.0, "euler", "simple", pos, neg, latent)[0]["samples"]

def override_of(model):
    return model.model_options["transformer_options"]["optimized_attention_override"]

patcher, _ = load("t2v_fp8_channel.safetensors")
counted = patcher.clone()
counter = Counter()
counted.model_options["transformer_options"]["optimized_attention_override"] = counter
exact = ksample(counted)

result = dict(wan_calls=counter.n, original_untouched="optimized_attention_override" not in
              patcher.model_options["transformer_options"])
""" + LOGS + r"""for mode in NODE_MODES:
    patched = PatchSageAttention.execute(patcher, mode, 0, 0, 0, 0.995).args[0]
    out = ksample(patched)
    override = override_of(patched)
    result[mode] = dict(counts=dict(override.counts), rel=rel(out, exact), exact_sites=len(override.exact_sites),
                        finite=bool(out.isfinite().all()), expected=choose(mode, "cpu", None, host_installed())[0],
                        ran=sorted(override.ran), logs=[m for m in records if m.startswith("Patch SageAttention")])
    records.clear()
result["original_untouched_after"] = "optimized_attention_override" not in patcher.model_options["transformer_options"]

# Keep blocks / steps exact: block 0 and the first step never go through 8-bit.
kept = PatchSageAttention.execute(patcher, "reference", 1, 0, 1, 0.995).args[0]
ksample(kept)
result["kept"] = dict(override_of(kept).counts)
last = PatchSageAttention.execute(patcher, "reference", 0, 1, 0, 0.995).args[0]
ksample(last)
result["last kept"] = dict(override_of(last).counts)
records.clear()
all_kept = PatchSageAttention.execute(patcher, "reference", 60, 0, 0, 0.995).args[0]   # the model has 2 blocks
ksample(all_kept)
result["all_kept"] = [dict(override_of(all_kept).counts), [m for m in records if "cover" in m]]
records.clear()
all_steps = PatchSageAttention.execute(patcher, "reference", 0, 0, 9, 0.995).args[0]    # 9 of ksample's steps
ksample(all_steps)
result["all_steps"] = [dict(override_of(all_steps).counts), [m for m in records if "cover" in m]]
records.clear()

# exact_first_steps counts from noise: sampling split in two KSampler (Advanced) passes (steps 0-2 and 2-4 of 4)
# keeps the steps one pass of 4 keeps; the second pass starts below sigma 1, its noisiest steps behind it.
def first_step_exact(run):
    patched = PatchSageAttention.execute(patcher, "reference", 0, 0, 1, 0.995).args[0]
    run(patched)
    return dict(override_of(patched).counts)
ksa = core.KSamplerAdvanced().sample
def two_passes(m):
    half = ksa(m, "enable", 0, 4, 2.0, "euler", "simple", pos, neg, latent, 0, 2, "enable")[0]
    ksa(m, "disable", 0, 4, 2.0, "euler", "simple", pos, neg, half, 2, 4, "disable")
result["split"] = [first_step_exact(two_passes), first_step_exact(
    lambda m: core.common_ksampler(m, 0, 4, 2.0, "euler", "simple", pos, neg, latent))]
# ddim_uniform's whole pass of 4 starts at sigma 0.96, not 1 (shift 8): a pass from noise all the same
result["ddim_uniform"] = first_step_exact(
    lambda m: core.common_ksampler(m, 0, 4, 2.0, "euler", "ddim_uniform", pos, neg, latent))

def fresh(mode="reference"):
    return override_of(PatchSageAttention.execute(patcher, mode, 0, 0, 0, 0.995).args[0])

# The guard: one query token with a huge value wrecks its int8 block (cosine ~0.16); that site must go exact.
override = fresh()
q = torch.randn(1, 128, 2 * 64, generator=g) * 4
k, v = torch.randn(1, 128, 128, generator=g), torch.randn(1, 128, 128, generator=g)
wrecked = q.clone()
wrecked[:, 0, 0] = 3000
to = {"block_index": 7, "total_blocks": 30}
first = override(attention_pytorch, wrecked, k, v, 2, transformer_options=to)
second = override(attention_pytorch, wrecked, k, v, 2, transformer_options=to)
truth = attention_pytorch(wrecked, k, v, 2)
result["guard"] = dict(first=rel(first, truth), second=rel(second, truth), counts=dict(override.counts),
                       logs=[m for m in records if "cosine" in m])
records.clear()

# A site that goes wrong late: fine for the first steps of 8, wrecked from step 6 on. The guard checks it again
# at steps 2, 4 and 6 (1/4, 1/2, 3/4), so step 6 is already exact.
override = fresh()
schedule = torch.linspace(1, 0, 9)
late = {}
for step in range(8):
    to = {"block_index": 3, "sigmas": schedule[step:step + 1].clone(), "sample_sigmas": schedule}
    out = override(attention_pytorch, wrecked if step >= 6 else q, k, v, 2, transformer_options=to)
    late[step] = dict(override.counts)
result["late"] = dict(counts=late, logs=[m for m in records if "cosine" in m])
records.clear()

# The guard's verdicts hold for one sampling pass: sites that went exact late in a KSampler run (every check after
# the first phase's four finds 8-bit off) run 8-bit again in the next run, as in a fresh process: a seed queued
# again gives the same latent whatever ran before it.
import skyreels_pack.nodes.adapters.sage_override as sage_override
real_cosine, checks, failing = sage_override.guard_cosine, [], [True]
def off_late(*args):
    checks.append(1)
    return 0.0 if failing[0] and len(checks) > 4 else real_cosine(*args)
sage_override.guard_cosine = off_late
guarded = PatchSageAttention.execute(patcher, "reference", 0, 0, 0, 0.995).args[0]
eight = lambda seed: core.common_ksampler(guarded, seed, 8, 2.0, "euler", "simple", pos, neg, latent)[0]["samples"]
eight(0)
first_run = dict(override_of(guarded).counts)
failing[0] = False
eight(0)
result["next_run"] = [first_run, {k: override_of(guarded).counts[k] - first_run[k] for k in first_run}]
sage_override.guard_cosine = real_cosine
records.clear()
# Parallel Config rebuilds Patch SageAttention, wrapper and all, in its workers; another pack's wrapper it refuses.
from comfy.patcher_extension import WrappersMP
from skyreels_pack.nodes.adapters.parallel_run import recipe_of
foreign = guarded.clone()
foreign.add_wrapper_with_key(WrappersMP.OUTER_SAMPLE, "another_pack", lambda executor, *a, **kw: executor(*a, **kw))
try:
    recipe_of(foreign)
except ValueError as e:
    result["parallel"] = [list(recipe_of(guarded)[1]), str(e)]
# Each setting reaches the workers as it is; other settings mean other workers (kept ones run the settings
# they loaded with)
from skyreels_pack.nodes.adapters.parallel_run import Plan
from skyreels_pack.nodes.parallel import ParallelConfig
settings = PatchSageAttention.execute(patcher, "reference", 1, 2, 3, 0.99).args[0]
config = ParallelConfig.execute(2, "cpu", "").args[0]
result["parallel settings"] = [list(recipe_of(settings)[1]), Plan(config, settings).key == Plan(config, guarded).key]

# Another node's override (KJNodes' Patch Sage Attention KJ sets a closure made in its node): Patch SageAttention
# after it replaces it and says so; a run with it reports whose attention ran, and Parallel Config names it.
# The other pack is imported as the host imports packs: under its folder's whole path, dots as "_x_", here from
# a custom_nodes folder of another name (extra_model_paths.yaml can add one).
import importlib.util, tempfile, folder_paths
from skyreels_pack.nodes.adapters import run_report
pack = os.path.join(tempfile.mkdtemp(prefix="v0.33."), "extra_nodes", "ComfyUI-OtherPack")
folder_paths.add_model_folder_path("custom_nodes", os.path.dirname(pack))
os.makedirs(os.path.join(pack, "nodes"))
open(os.path.join(pack, "__init__.py"), "w").write("from .nodes.patches import OtherPackNode\n")
open(os.path.join(pack, "nodes", "__init__.py"), "w").write("")
open(os.path.join(pack, "nodes", "patches.py"), "w").write(
    "class Override:\n"
    "    def run(self, func, *args, **kwargs):\n"
    "        return func(*args, **kwargs)\n"
    "class OtherPackNode:\n"
    "    def patch(self, model):\n"
    "        def attention_override_sage(func, *args, **kwargs):\n"
    "            return func(*args, **kwargs)\n"
    "        m = model.clone()\n"
    "        m.model_options['transformer_options']['optimized_attention_override'] = attention_override_sage\n"
    "        return m\n")
spec = importlib.util.spec_from_file_location(pack.replace(".", "_x_"), os.path.join(pack, "__init__.py"))
other = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = other
spec.loader.exec_module(other)
theirs = other.OtherPackNode().patch(patcher)
PatchSageAttention.execute(theirs, "reference", 0, 0, 0, 0.995)
result["foreign"] = dict(logs=[m for m in records if "replaces" in m], report=run_report.attention_summary(theirs, {}))
result["foreign_method"] = sage_override.describe(other.nodes.patches.Override().run)
try:
    recipe_of(theirs)
except ValueError as e:
    result["foreign"]["parallel"] = str(e)
records.clear()

# sage3's calls are FP4, not 8-bit (its kernels run only on Blackwell: here the counts are set as a run would).
patched = PatchSageAttention.execute(patcher, "sage3", 0, 0, 0, 0.995).args[0]
override_of(patched).counts["sage"] += 3
override_of(patched).ran.add("sage3")
result["sage3 report"] = run_report.attention_summary(patched, {})
result["sage3 since"] = run_report.attention_summary(patched, {"sage": 1, "exact": 0})   # a run's own calls
records.clear()

# sage3: the host's kernel called directly (its own sage3 function runs PyTorch attention where the kernel fails, and
# those calls were counted FP4): a stand-in for the kernel records its inputs, then fails as a wheel for another GPU
# does; queries the host's sage3 keeps exact (1024 or fewer) are counted exact.
import skyreels_pack.nodes.adapters.sage_override as so
from comfy.ldm.modules import attention as host_attention
kernel_calls, broken = [], []
def sageattn3_blackwell(q, k, v, is_causal):
    kernel_calls.append([list(q.shape), all(t.is_contiguous() for t in (q, k, v)), is_causal])
    if broken:
        raise RuntimeError("CUDA error: no kernel image is available for execution on the device")
    return torch.nn.functional.scaled_dot_product_attention(q, k, v)
host_attention.sageattn3_blackwell = sageattn3_blackwell
q3, k3, v3 = (torch.randn(1, 1100, 128, generator=g).bfloat16() for _ in range(3))
override = fresh("sage3")
override.backends[q3.device] = ("sage3", "as on a GPU")
outs = [override(attention_pytorch, q3, k3, v3, 2, transformer_options={"block_index": 0}),
        override(attention_pytorch, q3[:, :1000], k3, v3, 2, transformer_options={"block_index": 1})]
broken.append(1)
outs.append(override(attention_pytorch, q3, k3, v3, 2, transformer_options={"block_index": 2}))
outs.append(override(attention_pytorch, q3, k3, v3, 2, transformer_options={"block_index": 3}))
result["sage3 kernel"] = dict(kernel_calls=kernel_calls, counts=dict(override.counts), failed=so.FAILED.pop("sage3", None),
                       rel=[rel(o.float(), attention_pytorch(q3, k3, v3, 2).float()) for o in (outs[0], outs[2])],
                       logs=[m for m in records if "sage3" in m])
records.clear()

# A NaN or Inf 8-bit output: that call and the site from then on are exact, logged once.
override = fresh("comfy-kitchen int8")
override.backends[q.device] = ("comfy-kitchen int8", "as on a GPU")
from comfy.ldm.modules import attention as host_attention
spoil = []
def kitchen_that_breaks(q, k, v, heads, **kw):
    out = attention_pytorch(q, k, v, heads, **kw)
    return out * float("nan") if spoil else out
host_attention.REGISTERED_ATTENTION_FUNCTIONS["comfy_kitchen_int8"] = kitchen_that_breaks
to = {"block_index": 5}
nan_outputs = [override(attention_pytorch, q, k, v, 2, transformer_options=to)]
spoil.append(1)
nan_outputs += [override(attention_pytorch, q, k, v, 2, transformer_options=to) for _ in range(2)]
result["nan"] = dict(counts=dict(override.counts), finite=[bool(o.isfinite().all()) for o in nan_outputs],
                     logs=[m for m in records if "NaN" in m])
records.clear()

# The comfy-kitchen call: what our adapter passes to the function the host registers, checked against that
# function's own signature; then the host's real adapter run into comfy_kitchen.int8_attention's Python signature
# (its CUDA kernel cannot run here: SDPA stands in for it). ComfyUI registers that function since 0.32.
result["kitchen"] = None
if hasattr(host_attention, "attention_comfy_kitchen_int8"):
    import comfy_kitchen
    calls = []
    def recording(*args, **kwargs):
        calls.append((args, kwargs))
        return attention_pytorch(*args, **kwargs)
    host_attention.REGISTERED_ATTENTION_FUNCTIONS["comfy_kitchen_int8"] = recording
    override = fresh("comfy-kitchen int8")
    override.backends[q.device] = ("comfy-kitchen int8", "as on a GPU")
    registered = inspect.signature(host_attention.attention_comfy_kitchen_int8)
    for skip in (False, True):
        qq, kk, vv = (t.view(1, 128, 2, 64).transpose(1, 2).contiguous() if skip else t for t in (q, k, v))
        override(attention_pytorch, qq, kk, vv, 2, skip_reshape=skip, skip_output_reshape=skip,
                 transformer_options={"block_index": int(skip)})  # a site of its own: the guard checks each
    bound = [registered.bind(*a, **kw) and True for a, kw in calls]
    kernel_signature = inspect.signature(comfy_kitchen.int8_attention)
    kernel_calls = []
    def fake_int8_attention(*args, **kwargs):
        kernel_signature.bind(*args, **kwargs)
        kernel_calls.append(sorted(kwargs))
        return torch.nn.functional.scaled_dot_product_attention(args[0], args[1], args[2], attn_mask=kwargs["attn_mask"],
                                                                scale=kwargs["scale"])
    comfy_kitchen.int8_attention = fake_int8_attention
    host_attention.REGISTERED_ATTENTION_FUNCTIONS["comfy_kitchen_int8"] = host_attention.attention_comfy_kitchen_int8
    override = fresh("comfy-kitchen int8")
    override.backends[q.device] = ("comfy-kitchen int8", "as on a GPU")
    via_host = override(attention_pytorch, q, k, v, 2, transformer_options={"block_index": 1})
    result["kitchen"] = dict(calls=[[len(a), sorted(kw)] for a, kw in calls], bound=bound, kernel_calls=kernel_calls,
                             rel=rel(via_host, attention_pytorch(q, k, v, 2)), counts=dict(override.counts))

# Exact is the host's PyTorch attention even where the host's global choice is 8-bit (--use-sage-attention).
def global_8_bit(*a, **kw):
    raise AssertionError("the host's global attention was called")
result["exact_is_pytorch"] = rel(fresh("disabled")(global_8_bit, q, k, v, 2, transformer_options={}),
                                 attention_pytorch(q, k, v, 2))
# Wan I2V's image cross-attention asks for full precision: honoured.
override = fresh()
override(attention_pytorch, q, k, v, 2, transformer_options=to, low_precision_attention=False)
result["low_precision_false"] = dict(override.counts)
# Calls Wan never makes, which the host handles itself: a mask (8-bit kernels take none) and an explicit scale stay
# exact. The guard cannot see either: it compares with exact attention run without them.
override = fresh()
mask = torch.zeros(1, 128, 128)
mask[:, :, 96:] = float("-inf")
out = override(attention_pytorch, q, k, v, 2, mask=mask, transformer_options={"block_index": 4})
result["masked"] = [dict(override.counts), rel(out, attention_pytorch(q, k, v, 2, mask=mask))]
override = fresh()
out = override(attention_pytorch, q, k, v, 2, transformer_options={"block_index": 4}, scale=0.5)
result["scaled"] = [dict(override.counts), rel(out, attention_pytorch(q, k, v, 2, scale=0.5))]
# The host's [B, heads, L, D] layout (skip_reshape: Flux, Wan S2V's audio attention) through this pack's own kernel
qh, kh, vh = (t.view(1, 128, 2, 64).transpose(1, 2) for t in (q, k, v))
flat = fresh()(attention_pytorch, q, k, v, 2, transformer_options={"block_index": 4})   # the host's own layout
result["hnd"] = []
for skip_out in (True, False):
    override = fresh()
    out = override(attention_pytorch, qh, kh, vh, 2, skip_reshape=True, skip_output_reshape=skip_out,
                   transformer_options={"block_index": 4})
    out = out.transpose(1, 2).reshape(1, 128, 128) if skip_out else out
    result["hnd"].append([dict(override.counts), rel(out, flat)])     # the same 8-bit attention, either layout
# Memory running out inside the host's comfy-kitchen kernel goes up as it is (ComfyUI frees models, the next run may
# fit); it must not turn comfy-kitchen off for the rest of the session.
override = fresh("comfy-kitchen int8")
override.backends[q.device] = ("comfy-kitchen int8", "as on a GPU")
def kitchen_oom(*a, **kw):
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
host_attention.REGISTERED_ATTENTION_FUNCTIONS["comfy_kitchen_int8"] = kitchen_oom
try:
    override(attention_pytorch, q, k, v, 2, transformer_options={"block_index": 6})
    result["oom"] = "not raised"
except torch.OutOfMemoryError:
    result["oom"] = "raised"
result["oom"] = [result["oom"], sage_override.FAILED.pop("comfy-kitchen int8", None)]
# The report's lines: every FP8 product fell back (an RTX 30xx with compute "fp8 matmul"), and macOS's peak RSS
# (ru_maxrss in bytes there, KiB elsewhere).
result["all_fell"] = run_report.matmul_summary(True, True, {"w8a8": 0, "fallback": 40, "upcast": 40},
                                               torch.bfloat16, ["torch._scaled_mm failed: no kernel"])
result["some_fell"] = run_report.matmul_summary(True, True, {"w8a8": 30, "fallback": 10, "upcast": 10},
                                                torch.bfloat16, ["torch._scaled_mm failed: no kernel"])
import builtins, collections, types, psutil
real = builtins.open, psutil.Process.memory_info, sys.platform, sys.modules.get("resource")
def no_proc(path, *a, **kw):
    if str(path).startswith("/proc/self/"):     # VmHWM, clear_refs
        raise OSError("no /proc")
    return real[0](path, *a, **kw)
builtins.open = no_proc
psutil.Process.memory_info = lambda self: collections.namedtuple("pmem", "rss vms")(100 * 2**20, 0)
sys.platform = "darwin"
# macOS's resource module, put in place (Windows has none to patch): ru_maxrss 3 GiB, in bytes as macOS counts it
sys.modules["resource"] = types.SimpleNamespace(RUSAGE_SELF=0, getrusage=lambda who: types.SimpleNamespace(
    ru_maxrss=3 * 2**30))
try:
    result["mac_peak"] = run_report.Meter(torch.device("cpu")).finish().memory
finally:
    builtins.open, psutil.Process.memory_info, sys.platform = real[:3]
    if real[3] is None:
        del sys.modules["resource"]
    else:
        sys.modules["resource"] = real[3]
"""


def test_sage_patch_on_core_ksampler(host, tmp_path):
    write_models(tmp_path)
    r = run_in_host(host, SETUP.format(repo=REPO, folder=str(tmp_path)) + RUN)
    print("\n" + "\n".join(f"{k}: {v}" for k, v in r.items()))
    n = r["wan_calls"]
    assert n == 2 * 2 * 2  # 2 steps x 2 blocks x (self + text cross-attention), cond and uncond batched
    # Every mode completes the core KSampler run. What runs comes from the dispatch decision for this machine: on
    # this CPU only "reference" is 8-bit, every other mode falls back to exact attention, logged once (on a GPU
    # with the backend installed, "expected" names it and all n calls are 8-bit).
    for mode in ("auto", "sageattention", "comfy-kitchen int8", "sage3", "reference", "disabled", "sageattn"):
        m = r[mode]
        assert m["finite"], mode
        if m["expected"] == "exact":
            assert m["counts"] == {"sage": 0, "exact": n} and m["rel"] == 0.0 and m["ran"] == [], (mode, m)
            assert len(m["logs"]) == (0 if mode == "disabled" else 1), (mode, m["logs"])
        else:
            assert m["counts"] == {"sage": n, "exact": 0} and m["exact_sites"] == 0, (mode, m)
            assert m["rel"] <= 0.02 and m["logs"] == [], (mode, m)
    assert r["reference"]["expected"] == "reference"
    assert r["reference"]["ran"] == ["this pack's PyTorch SageAttention"]
    assert r["auto"]["logs"] == ["Patch SageAttention: cpu device (8-bit attention kernels need an NVIDIA GPU); "
                                 "attention stays exact (ComfyUI's PyTorch attention)"]
    assert r["sageattn"] == {**r["sageattention"]}  # the old name: the same decision, the same result
    # keep block 0 and step 0 exact: step 0 is all exact (4 calls), step 1 has block 0 exact (2) and block 1 sage.
    assert r["kept"] == {"sage": 2, "exact": 6}
    assert r["last kept"] == {"sage": 4, "exact": 4}     # exact_last_blocks 1: block 1 of 2 exact in both steps
    # Calls the host makes for other models: a mask or a scale stays exact (the guard compares without either, so it
    # could not see them dropped); the host's [B, heads, L, D] layout (skip_reshape) is read as such.
    assert r["masked"][0] == {"sage": 0, "exact": 1} and r["masked"][1] <= 1e-6, r["masked"]
    assert r["scaled"][0] == {"sage": 0, "exact": 1} and r["scaled"][1] <= 1e-6, r["scaled"]
    assert all(c == {"sage": 1, "exact": 0} and e <= 1e-6 for c, e in r["hnd"]), r["hnd"]
    # memory running out in comfy-kitchen's kernel goes up, and leaves comfy-kitchen on for the next call
    assert r["oom"] == ["raised", None], r["oom"]
    # the report: every FP8 product fell back (its reason named), and macOS's ru_maxrss in bytes
    assert r["all_fell"] == "matmul: fp8 unavailable here, upcast (40 products: torch._scaled_mm failed: no kernel)"
    assert r["some_fell"] == "matmul: fp8 w8a8 (30 products, 10 upcast: torch._scaled_mm failed: no kernel)", r
    assert r["mac_peak"] == "peak RSS 3072 MiB (process, since ComfyUI started; 100 MiB before the run)", r["mac_peak"]
    # 4 steps of 4 calls, the first exact, in two passes as in one (the second pass's first step was exact too)
    assert r["split"] == [{"sage": 12, "exact": 4}] * 2 and r["ddim_uniform"] == r["split"][1], r
    assert r["original_untouched"] and r["original_untouched_after"]
    g = r["guard"]
    assert g["first"] <= 1e-6 and g["second"] <= 1e-6 and g["counts"] == {"sage": 0, "exact": 2}
    assert len(g["logs"]) == 1 and "block 7" in g["logs"][0] and "exact attention there" in g["logs"][0]
    late = r["late"]
    assert late["counts"]["5"] == {"sage": 6, "exact": 0}                    # steps 0-5: 8-bit
    assert late["counts"]["7"] == {"sage": 6, "exact": 2}                    # re-checked at 3/4: exact from step 6
    assert len(late["logs"]) == 1 and "block 3" in late["logs"][0]
    # 8 steps x 4 sites: the first run exact from step 2 on; the next all 8-bit (it used to start with them exact)
    assert r["next_run"] == [{"sage": 8, "exact": 24}, {"sage": 32, "exact": 0}], r["next_run"]
    assert r["parallel"] == [["reference", 0, 0, 0, 0.995], "Sample Video: parallel: this MODEL carries changes a "
                             "worker cannot rebuild (another_pack); connect Load FP8 SkyReels Model (and Patch "
                             "SageAttention, TeaCache, LoRA loaders) directly"], r["parallel"]
    assert r["parallel settings"] == [["reference", 1, 2, 3, 0.99], False], r["parallel settings"]
    assert r["all_kept"] == [{"sage": 0, "exact": n}, [
        "Patch SageAttention: exact_first_blocks + exact_last_blocks (60) cover all 2 blocks of this model: every "
        "attention call stays exact"]], r["all_kept"]
    assert r["all_steps"] == [{"sage": 0, "exact": n}, [      # it ran all exact with no word
        "Patch SageAttention: exact_first_steps (9) cover all 2 steps of a sampling pass (in diffusion forcing: of a "
        "window, counted in model calls): its attention stays exact"]], r["all_steps"]
    who = "attention_override_sage (OtherPackNode, ComfyUI-OtherPack)"     # not the folder's path
    assert r["foreign_method"] == "Override.run (ComfyUI-OtherPack)", r["foreign_method"]
    assert r["foreign"] == dict(
        logs=[f"Patch SageAttention: replaces the attention override already on this MODEL, {who}; ComfyUI runs one "
              "per model"],
        report=f"attention: another node's override, {who} (not Patch SageAttention; not counted)",
        parallel=f"Sample Video: parallel: an attention override other than Patch SageAttention is set on this MODEL, "
                 f"{who}; remove that node"), r["foreign"]
    assert r["sage3 report"] == "attention: sage3 - 3 calls FP4 (sage3), 0 exact", r["sage3 report"]
    assert r["sage3 since"] == "attention: sage3 - 2 calls FP4 (sage3), 0 exact", r["sage3 since"]
    s3 = r["sage3 kernel"]
    # HND inputs made contiguous, not causal; the second call (1000 queries) never reaches the kernel; the third
    # fails, and from then on sage3 stays exact (the fourth), logged once
    assert s3["kernel_calls"] == [[[1, 2, 1100, 64], True, False]] * 2, s3["kernel_calls"]
    assert s3["counts"] == {"sage": 1, "exact": 3}, s3
    assert s3["failed"] == "sage3 failed (RuntimeError: CUDA error: no kernel image is available for execution on the " \
                           "device)", s3["failed"]
    assert max(s3["rel"]) <= 1e-2, s3["rel"]        # bf16 SDPA against the host's exact attention of bf16 inputs
    assert len(s3["logs"]) == 1 and s3["logs"][0].endswith("; attention stays exact (ComfyUI's PyTorch attention)")
    nan = r["nan"]
    assert nan["counts"] == {"sage": 1, "exact": 2} and nan["finite"] == [True, True, True]
    assert len(nan["logs"]) == 1 and "gave NaN or Inf" in nan["logs"][0] and "block 5" in nan["logs"][0]
    k = r["kitchen"]
    if k is None:      # ComfyUI before 0.32 registers no comfy_kitchen_int8 (the mode's fallback is checked above)
        assert host_release(host) < (0, 32), "the host registers comfy_kitchen_int8, and its checks did not run"
    else:
        check_kitchen(k)
    assert r["exact_is_pytorch"] == 0.0
    assert r["low_precision_false"] == {"sage": 0, "exact": 1}


def check_kitchen(k):
    # the call itself, once for each of the host's two layouts (the guard reads its rows from the call's output)
    assert k["bound"] == [True] * 2 and len(k["calls"]) == 2
    assert k["kernel_calls"] == [["attn_mask", "scale"]] and k["rel"] <= 1e-6
    assert k["counts"] == {"sage": 1, "exact": 0}


MISSING = r"""
import logging, importlib.metadata, importlib.util, nodes as core
from skyreels_pack.nodes.sage_patch import PatchSageAttention
real_find_spec, real_version = importlib.util.find_spec, importlib.metadata.version
def version(name):
    if name == "sageattention":
        raise importlib.metadata.PackageNotFoundError(name)
    return real_version(name)
importlib.util.find_spec = lambda name, *a: None if name == "sageattention" else real_find_spec(name, *a)
importlib.metadata.version = version
""" + LOGS + r"""pos = [[torch.randn(1, 16, 4096, generator=g), {}]]
latent = {"samples": torch.zeros(1, 16, 2, 8, 8)}
patcher, _ = load("t2v_fp8_tensor.safetensors")
patched = PatchSageAttention.execute(patcher, "sageattn", 0, 0, 0, 0.995).args[0]
a = core.common_ksampler(patched, 0, 2, 2.0, "euler", "simple", pos, pos, latent)[0]["samples"]
exact = PatchSageAttention.execute(patcher, "disabled", 0, 0, 0, 0.995).args[0]
b = core.common_ksampler(exact, 0, 2, 2.0, "euler", "simple", pos, pos, latent)[0]["samples"]
counts = patched.model_options["transformer_options"]["optimized_attention_override"].counts
result = dict(rel=rel(a, b), counts=dict(counts), logs=records)
"""


def test_without_sageattention_the_node_runs_exact_and_says_why(host, tmp_path):
    write_models(tmp_path)
    r = run_in_host(host, SETUP.format(repo=REPO, folder=str(tmp_path)) + MISSING)
    assert r["rel"] == 0.0 and r["counts"] == {"sage": 0, "exact": 8}
    assert r["logs"] == ["Patch SageAttention: No module named 'sageattention' (pip install sageattention); "
                         "attention stays exact (ComfyUI's PyTorch attention)"]


KERNELS_FAIL = r"""
import logging, nodes as core
from skyreels_pack.attention import sage
from skyreels_pack.nodes.adapters import sage_override
from skyreels_pack.nodes.sage_patch import PatchSageAttention
calls = []
def failing_kernel(*a, **k):     # as a Triton compile that fails on the user's machine (ptxas, no compiler)
    calls.append(1)
    raise RuntimeError("ptxas exited with status 3221225794")
sage._kernel = failing_kernel
# As on a GPU the kernels can run on: only a failure makes them unavailable.
sage.kernel_unavailable = sage_override.kernel_unavailable = lambda device: sage._broken
real_choose = sage_override.choose
sage_override.choose = lambda mode, *a: (("sageattention", "sageattention 1.0.6 (Triton kernels)")
                                         if mode != "disabled" else real_choose(mode, *a))
""" + LOGS + r"""pos = [[torch.randn(1, 16, 4096, generator=g), {}]]
latent = {"samples": torch.zeros(1, 16, 4, 8, 8)}    # 64 tokens: no ragged-key rule
patcher, _ = load("t2v_fp8_tensor.safetensors")
patched = PatchSageAttention.execute(patcher, "sageattn", 0, 0, 0, 0.995).args[0]
a = core.common_ksampler(patched, 0, 2, 2.0, "euler", "simple", pos, pos, latent)[0]["samples"]
exact = PatchSageAttention.execute(patcher, "disabled", 0, 0, 0, 0.995).args[0]
b = core.common_ksampler(exact, 0, 2, 2.0, "euler", "simple", pos, pos, latent)[0]["samples"]
override = patched.model_options["transformer_options"]["optimized_attention_override"]
result = dict(rel=rel(a, b), counts=dict(override.counts), ran=sorted(override.ran), kernel_calls=len(calls),
              logs=records)
"""


def test_kernels_that_fail_at_run_time_leave_attention_exact(host, tmp_path):
    # The first call used to be answered by this pack's PyTorch SageAttention and counted as sageattention's.
    write_models(tmp_path)
    r = run_in_host(host, SETUP.format(repo=REPO, folder=str(tmp_path)) + KERNELS_FAIL)
    assert r["rel"] == 0.0 and r["counts"] == {"sage": 0, "exact": 8} and r["ran"] == [], r
    assert r["kernel_calls"] == 1, r
    assert r["logs"] == ["Patch SageAttention: the sageattention kernels failed (RuntimeError: ptxas exited with "
                         "status 3221225794); attention stays exact (ComfyUI's PyTorch attention)"], r


def test_calls_that_kernels_would_pad_wrongly_are_counted_exact(host, tmp_path):
    # 32 tokens: sageattention 1.x would miscount the padding of the last 64-key block, so these calls run exact
    # attention; they used to be counted (and reported) as sageattention's.
    write_models(tmp_path)
    code = KERNELS_FAIL.replace("torch.zeros(1, 16, 4, 8, 8)", "torch.zeros(1, 16, 2, 8, 8)")
    r = run_in_host(host, SETUP.format(repo=REPO, folder=str(tmp_path)) + code)
    assert r["rel"] == 0.0 and r["counts"] == {"sage": 0, "exact": 8} and r["ran"] == [], r
    assert r["kernel_calls"] == 0, r
    assert r["logs"] == [f"Patch SageAttention: {n} keys is not a multiple of 64: sageattention here would miscount "
                         "the padding, so these calls use exact attention" for n in (32, 16)], r   # video, text


def test_kernels_that_fail_with_the_guard_off_leave_attention_exact(host, tmp_path):
    write_models(tmp_path)
    code = KERNELS_FAIL.replace('"sageattn", 0, 0, 0, 0.995', '"sageattn", 0, 0, 0, 0.0')
    r = run_in_host(host, SETUP.format(repo=REPO, folder=str(tmp_path)) + code)
    assert r["rel"] == 0.0 and r["counts"] == {"sage": 0, "exact": 8} and r["ran"] == [] and r["kernel_calls"] == 1, r


def test_a_call_refused_by_shape_does_not_hide_a_later_kernel_failure(host, tmp_path):
    # Both reach Patch SageAttention as KernelsUnavailable; each is logged once, with its own reason.
    write_models(tmp_path)
    refuse_first = ("n = [0]\nreal = sage._shape_unsupported\n"
                    "def first_refused(*a):\n    n[0] += 1\n"
                    "    return 'fp32 inputs (sageattention 2.x takes fp16/bf16)' if n[0] == 1 else real(*a)\n"
                    "sage._shape_unsupported = first_refused\n")
    code = KERNELS_FAIL.replace("sage._kernel = failing_kernel\n", "sage._kernel = failing_kernel\n" + refuse_first)
    r = run_in_host(host, SETUP.format(repo=REPO, folder=str(tmp_path)) + code)
    assert r["kernel_calls"] == 1 and r["counts"] == {"sage": 0, "exact": 8}, r
    assert [m.split(";")[0] for m in r["logs"] if "is not a multiple of 64" not in m] == [   # text: 16 keys
        "Patch SageAttention: fp32 inputs (sageattention 2.x takes fp16/bf16)",
        "Patch SageAttention: the sageattention kernels failed (RuntimeError: ptxas exited with status 3221225794)"], r


CUDNN_FIRST = r"""
import logging, nodes as core
import comfy.ops
from torch.nn.attention import SDPBackend
from skyreels_pack.nodes.adapters import sage_override
from skyreels_pack.nodes.adapters.run_report import attention_summary
from skyreels_pack.nodes.sage_patch import PatchSageAttention
# The host's CUDA backend order (comfy/ops.py sets it only where CUDA is available), and this CPU's device answered
# as an H100's: PyTorch runs cuDNN's attention first there
HOST_ORDER = [SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
comfy.ops.SDPA_BACKEND_PRIORITY = list(HOST_ORDER)
asked = []
def hopper(device):
    asked.append(device.type)
    return True
seen, real_sdpa = [], torch.nn.functional.scaled_dot_product_attention
def sdpa(*a, **k):       # the order the host's list holds while its attention runs
    seen.append([b.name for b in comfy.ops.SDPA_BACKEND_PRIORITY])
    return real_sdpa(*a, **k)
torch.nn.functional.scaled_dot_product_attention = sdpa
""" + INFO_LOGS + r"""pos = [[torch.randn(1, 16, 4096, generator=g), {}]]
latent = {"samples": torch.zeros(1, 16, 2, 8, 8)}
patcher, _ = load("t2v_fp8_tensor.safetensors")
plain = PatchSageAttention.execute(patcher, "disabled", 0, 0, 0, 0.995).args[0]
b = core.common_ksampler(plain, 0, 2, 2.0, "euler", "simple", pos, pos, latent)[0]["samples"]
result = dict(plain_orders=sorted(set(map(tuple, seen))))
seen.clear()
sage_override.pytorch_prefers_cudnn = hopper
patched = PatchSageAttention.execute(patcher, "auto", 0, 0, 0, 0.995).args[0]
a = core.common_ksampler(patched, 0, 2, 2.0, "euler", "simple", pos, pos, latent)[0]["samples"]
override = patched.model_options["transformer_options"]["optimized_attention_override"]
result.update(rel=rel(a, b), counts=dict(override.counts), orders=sorted(set(map(tuple, seen))), calls=len(seen),
              after=[x.name for x in comfy.ops.SDPA_BACKEND_PRIORITY], asked=sorted(set(asked)),
              logs=[m for m in info if "Patch SageAttention" in m[1]],
              summary=attention_summary(patched, {}), no_exact=attention_summary(patched, dict(override.counts)))
import threading, time
def slow(*a, **k):         # two threads' calls overlap (core's multi-GPU CFG split runs one per GPU)
    time.sleep(0.3)
    return real_sdpa(*a, **k)
torch.nn.functional.scaled_dot_product_attention = slow
x = torch.zeros(1, 4, 64)
threads = [threading.Thread(target=override.pytorch, args=(x, x, x, 1)) for _ in range(2)]
threads[0].start(); time.sleep(0.1); threads[1].start()
time.sleep(0.1)
result["while_threads"] = [x.name for x in comfy.ops.SDPA_BACKEND_PRIORITY]
[t.join() for t in threads]
result["after_threads"] = [x.name for x in comfy.ops.SDPA_BACKEND_PRIORITY]
def failing(*a, **k):
    raise RuntimeError("out of memory")
torch.nn.functional.scaled_dot_product_attention = failing
try:
    override.pytorch(torch.zeros(1, 4, 64), torch.zeros(1, 4, 64), torch.zeros(1, 4, 64), 1)
except RuntimeError as e:
    result["raised"] = str(e)
result["after_failure"] = [x.name for x in comfy.ops.SDPA_BACKEND_PRIORITY]
"""


def test_exact_attention_runs_cudnn_first_where_pytorch_puts_it_first(host, tmp_path):
    # Where PyTorch runs cuDNN's attention first (an H100/H200/B200 with a recent cuDNN), the host's exact attention
    # gets it before FlashAttention-2 (1.43x a 1.3B step on an H200) for the call only; the host's own order is back
    # after it, also after a failure and after two threads' calls that overlap (the first out used to restore it
    # under the second, which then left cuDNN first for good). What runs is the host's PyTorch attention: bit for
    # bit the plain exact run's on this CPU, where no backend applies.
    write_models(tmp_path)
    r = run_in_host(host, SETUP.format(repo=REPO, folder=str(tmp_path)) + CUDNN_FIRST)
    host_order = ["FLASH_ATTENTION", "CUDNN_ATTENTION", "EFFICIENT_ATTENTION", "MATH"]
    assert r["plain_orders"] == [host_order], r       # without the simulated Hopper, the host's order untouched
    assert r["orders"] == [["CUDNN_ATTENTION", "FLASH_ATTENTION", "EFFICIENT_ATTENTION", "MATH"]], r
    assert r["calls"] == 8 and r["counts"] == {"sage": 0, "exact": 8} and r["rel"] == 0.0, r
    assert r["after"] == r["after_failure"] == r["after_threads"] == host_order and r["raised"] == "out of memory", r
    assert r["while_threads"][0] == "CUDNN_ATTENTION", r
    assert r["asked"] == ["cpu"], r
    assert r["summary"] == "attention: auto - 0 calls 8-bit, 8 exact (cuDNN first)", r
    assert r["no_exact"] == "attention: auto - 0 calls 8-bit, 0 exact", r     # cuDNN named only where exact calls ran
    # auto's choice there is news, not a warning
    assert r["logs"] == [["INFO", "Patch SageAttention: cpu device (8-bit attention kernels need an NVIDIA GPU); "
                                  "attention stays exact (ComfyUI's PyTorch attention, cuDNN first)"]], r


BACKEND_FAILS = r"""
import logging, nodes as core
from comfy.ldm.modules import attention as host_attention
from comfy.ldm.modules.attention import attention_pytorch
from skyreels_pack.attention import dispatch, sage
from skyreels_pack.nodes.adapters import sage_override
from skyreels_pack.nodes.sage_patch import PatchSageAttention
# An RTX 40xx as auto sees it, with a sageattention 2.x wheel built for another torch (its compiled module fails at
# the first call) and comfy-kitchen's int8 attention registered by the host; then that one fails too (a driver too
# old for its CUDA build).
sage_override.installed_packages = lambda: ("2.2.0+cu128torch2.8.0.post3", True)
real_choose = dispatch.choose
sage_override.choose = lambda mode, device_type, capability, pkgs, cudnn=False: real_choose(
    mode, "cuda", (8, 9), pkgs, cudnn)
sage_calls, kitchen_calls, broken_kitchen = [], [], []
def wheel_for_another_torch(*a, **k):
    sage_calls.append(1)
    raise ImportError("DLL load failed while importing _fused: The specified procedure could not be found.")
sage._kernel = wheel_for_another_torch
sage.kernel_unavailable = sage_override.kernel_unavailable = lambda device: sage._broken
def kitchen(q, k, v, heads, **kw):
    kitchen_calls.append(1)
    if broken_kitchen:
        raise RuntimeError("CUDA error: the provided PTX was compiled with an unsupported toolchain.")
    return attention_pytorch(q, k, v, heads, **kw)
host_attention.REGISTERED_ATTENTION_FUNCTIONS["comfy_kitchen_int8"] = kitchen
""" + INFO_LOGS + r"""pos = [[torch.randn(1, 16, 4096, generator=g), {}]]
latent = {"samples": torch.zeros(1, 16, 4, 8, 8)}    # 64 tokens: no ragged-key rule
patcher, _ = load("t2v_fp8_tensor.safetensors")
exact = PatchSageAttention.execute(patcher, "disabled", 0, 0, 0, 0.995).args[0]
b = core.common_ksampler(exact, 0, 2, 2.0, "euler", "simple", pos, pos, latent)[0]["samples"]
result, models = {}, []
for name in ("sage fails", "kitchen fails too"):
    info.clear()
    patched = PatchSageAttention.execute(patcher, "auto", 0, 0, 0, 0.995).args[0]
    models.append(patched)
    a = core.common_ksampler(patched, 0, 2, 2.0, "euler", "simple", pos, pos, latent)[0]["samples"]
    override = patched.model_options["transformer_options"]["optimized_attention_override"]
    result[name] = dict(rel=rel(a, b), counts=dict(override.counts), ran=sorted(override.ran), sage=len(sage_calls),
                        kitchen=len(kitchen_calls), logs=[m for m in info if "Patch SageAttention" in m[1]])
    broken_kitchen.append(1)
    kitchen_calls.clear()
# the first Patch SageAttention chose comfy-kitchen before it failed: it picks again too, without calling it
info.clear()
override = models[0].model_options["transformer_options"]["optimized_attention_override"]
before = dict(override.counts)
core.common_ksampler(models[0], 0, 2, 2.0, "euler", "simple", pos, pos, latent)
result["earlier model"] = dict(counts={k: override.counts[k] - before[k] for k in before}, kitchen=len(kitchen_calls),
                               logs=[m for m in info if "Patch SageAttention" in m[1]])
# an explicitly chosen backend that failed stays exact without calling it again
patched = PatchSageAttention.execute(patcher, "comfy-kitchen int8", 0, 0, 0, 0.995).args[0]
core.common_ksampler(patched, 0, 2, 2.0, "euler", "simple", pos, pos, latent)
override = patched.model_options["transformer_options"]["optimized_attention_override"]
result["explicit"] = dict(counts=dict(override.counts), kitchen=len(kitchen_calls))
# sageattention runs a step, then fails within the guard's first phase (its sites checked already): auto's next
# backend is checked at each site from its first call there, so one that is off there goes exact at once
sage_override.FAILED.clear()
sage._broken = None
sage_calls.clear()
def sage_then_fails(q, k, v, tensor_layout="HND", **kw):
    sage_calls.append(1)
    if len(sage_calls) > 2:    # one step: 2 blocks' self-attention (16-key cross-attention is exact there)
        raise ImportError("DLL load failed while importing _fused: The specified procedure could not be found.")
    hnd = (lambda t: t.transpose(1, 2)) if tensor_layout == "NHD" else (lambda t: t)
    return hnd(torch.nn.functional.scaled_dot_product_attention(hnd(q), hnd(k), hnd(v)))
sage._kernel = sage_then_fails
host_attention.REGISTERED_ATTENTION_FUNCTIONS["comfy_kitchen_int8"] = (
    lambda q, k, v, heads, **kw: -attention_pytorch(q, k, v, heads, **kw))     # off at every site
patched = PatchSageAttention.execute(patcher, "auto", 0, 0, 0, 0.995).args[0]
truth = core.common_ksampler(exact, 0, 8, 2.0, "euler", "simple", pos, pos, latent)[0]["samples"]
a = core.common_ksampler(patched, 0, 8, 2.0, "euler", "simple", pos, pos, latent)[0]["samples"]
override = patched.model_options["transformer_options"]["optimized_attention_override"]
result["takes over mid-phase"] = dict(rel=rel(a, truth), counts=dict(override.counts), sage=len(sage_calls))
"""


def test_auto_picks_again_when_a_backends_kernels_fail_at_run_time(host, tmp_path):
    # auto used to stay exact for good when sageattention failed, never trying comfy-kitchen's int8 next in line;
    # and a failing host attention function (comfy-kitchen, sage3) failed the graph.
    write_models(tmp_path)
    r = run_in_host(host, SETUP.format(repo=REPO, folder=str(tmp_path)) + BACKEND_FAILS)
    print(r)
    sage_failed = ("the sageattention kernels failed (ImportError: DLL load failed while importing _fused: The "
                   "specified procedure could not be found.)")
    kitchen_failed = ("comfy-kitchen int8 failed (RuntimeError: CUDA error: the provided PTX was compiled with an "
                      "unsupported toolchain.)")
    first = r["sage fails"]
    # 8 calls: the first tried sageattention (exact after its failure), the other 7 comfy-kitchen's int8
    assert first["sage"] == 1 and first["kitchen"] == 7 and first["counts"] == {"sage": 7, "exact": 1}, first
    assert first["ran"] == ["comfy-kitchen int8"] and first["rel"] <= 1e-5, first
    assert first["logs"] == [
        ["INFO", "Patch SageAttention: auto: sageattention 2.2.0+cu128torch2.8.0.post3 (CUDA kernels)"],
        ["WARNING", f"Patch SageAttention: {sage_failed}; auto picks again without it"],
        ["INFO", "Patch SageAttention: auto: ComfyUI's comfy_kitchen_int8 attention (CUDA kernel)"]], first
    second = r["kitchen fails too"]     # a new Patch SageAttention: sageattention is not tried again
    assert second["sage"] == 1 and second["kitchen"] == 1 and second["counts"] == {"sage": 0, "exact": 8}, second
    assert second["ran"] == [] and second["rel"] == 0.0, second
    assert second["logs"] == [
        ["INFO", "Patch SageAttention: auto: ComfyUI's comfy_kitchen_int8 attention (CUDA kernel)"],
        ["WARNING", f"Patch SageAttention: {kitchen_failed}; auto picks again without it"],
        ["WARNING", f"Patch SageAttention: {sage_failed}; {kitchen_failed}; attention stays exact (ComfyUI's "
                    "PyTorch attention)"]], second
    assert r["earlier model"] == dict(counts={"sage": 0, "exact": 8}, kitchen=0, logs=[
        ["WARNING", f"Patch SageAttention: {sage_failed}; {kitchen_failed}; attention stays exact (ComfyUI's "
                    "PyTorch attention)"]]), r["earlier model"]
    assert r["explicit"] == dict(counts={"sage": 0, "exact": 8}, kitchen=0), r["explicit"]
    # 8 steps x 4 calls: step 0's self-attention 8-bit, then all exact (comfy-kitchen is off everywhere)
    mid = r["takes over mid-phase"]
    assert mid["counts"] == {"sage": 2, "exact": 30} and mid["rel"] <= 1e-3, mid
