"""Patch SageAttention on the real host: core KSampler on a tiny model, counted attention calls, the guard."""
from comfy_host import REPO, run_in_host
from in_host import SETUP, write_models

RUN = r"""
import logging, nodes as core
from skyreels_pack.nodes.sage_patch import PatchSageAttention
pos = [[torch.randn(1, 16, 4096, generator=g), {}]]
neg = [[torch.randn(1, 16, 4096, generator=g), {}]]
latent = {"samples": torch.zeros(1, 16, 2, 8, 8)}

class Counter:
    def __init__(self):
        self.n = 0
    def __call__(self, func, *args, **kwargs):
        self.n += 1
        return func(*args, **kwargs)

def ksample(model):
    return core.common_ksampler(model, 0, 2, 2.0, "euler", "simple", pos, neg, latent)[0]["samples"]

patcher, _ = load("t2v_fp8_channel.safetensors")
counted = patcher.clone()
counter = Counter()
counted.model_options["transformer_options"]["optimized_attention_override"] = counter
exact = ksample(counted)

result = dict(wan_calls=counter.n, original_untouched="optimized_attention_override" not in
              patcher.model_options["transformer_options"])
records = []
handler = logging.Handler()
handler.emit = lambda r: records.append(r.getMessage())
logging.getLogger("skyreels_fp8").addHandler(handler)
for mode in ("reference", "auto", "disabled"):
    patched = PatchSageAttention.execute(patcher, mode, 0, 0, 0, 0.995).args[0]
    override = patched.model_options["transformer_options"]["optimized_attention_override"]
    out = ksample(patched)
    result[mode] = dict(counts=dict(override.counts), rel=rel(out, exact), exact_sites=len(override.exact_sites),
                        logs=[m for m in records if m.startswith("Patch SageAttention")])
    records.clear()
result["original_untouched_after"] = "optimized_attention_override" not in patcher.model_options["transformer_options"]

# Keep blocks / steps exact: block 0 and the first step never go through 8-bit.
kept = PatchSageAttention.execute(patcher, "reference", 1, 0, 1, 0.995).args[0]
ksample(kept)
result["kept"] = dict(kept.model_options["transformer_options"]["optimized_attention_override"].counts)

# The guard: one query token with a huge value wrecks its int8 block (cosine ~0.16); that site must go exact.
from comfy.ldm.modules.attention import attention_pytorch
override = PatchSageAttention.execute(patcher, "reference", 0, 0, 0, 0.995).args[0].model_options[
    "transformer_options"]["optimized_attention_override"]
q = torch.randn(1, 128, 2 * 64, generator=g) * 4
k, v = torch.randn(1, 128, 128, generator=g), torch.randn(1, 128, 128, generator=g)
q[:, 0, 0] = 3000
to = {"block_index": 7, "total_blocks": 30}
first = override(attention_pytorch, q, k, v, 2, transformer_options=to)
second = override(attention_pytorch, q, k, v, 2, transformer_options=to)
truth = attention_pytorch(q, k, v, 2)
result["guard"] = dict(first=rel(first, truth), second=rel(second, truth), counts=dict(override.counts),
                       logs=[m for m in records if "cosine" in m])
# Wan I2V's image cross-attention asks for full precision: honoured.
fresh = PatchSageAttention.execute(patcher, "reference", 0, 0, 0, 0.995).args[0].model_options[
    "transformer_options"]["optimized_attention_override"]
q[:, 0, 0] = 1.0
fresh(attention_pytorch, q, k, v, 2, transformer_options=to, low_precision_attention=False)
result["low_precision_false"] = dict(fresh.counts)
"""


def test_sage_patch_on_core_ksampler(host, tmp_path):
    write_models(tmp_path)
    r = run_in_host(host, SETUP.format(repo=REPO, folder=str(tmp_path)) + RUN)
    print("\n" + "\n".join(f"{k}: {v}" for k, v in r.items()))
    n = r["wan_calls"]
    assert n == 2 * 2 * 2  # 2 steps x 2 blocks x (self + text cross-attention), cond and uncond batched
    # reference mode: every Wan attention call went through our 8-bit attention, close to exact.
    assert r["reference"]["counts"] == {"sage": n, "exact": 0} and r["reference"]["exact_sites"] == 0
    assert r["reference"]["rel"] <= 0.02
    # auto on a CPU: no kernels, so exact attention (the host's own) and the same result.
    assert r["auto"]["counts"] == {"sage": 0, "exact": n} and r["auto"]["rel"] == 0.0
    assert r["auto"]["logs"] == ["Patch SageAttention: cpu device (the sageattention kernels need an NVIDIA GPU); "
                                 "attention stays exact (PyTorch/ComfyUI attention)"]
    assert r["reference"]["logs"] == [] and r["disabled"]["logs"] == []
    assert r["disabled"]["counts"] == {"sage": 0, "exact": n} and r["disabled"]["rel"] == 0.0
    # keep block 0 and step 0 exact: step 0 is all exact (4 calls), step 1 has block 0 exact (2) and block 1 sage.
    assert r["kept"] == {"sage": 2, "exact": 6}
    assert r["original_untouched"] and r["original_untouched_after"]
    g = r["guard"]
    assert g["first"] <= 1e-6 and g["second"] <= 1e-6 and g["counts"] == {"sage": 0, "exact": 2}
    assert len(g["logs"]) == 1 and "block 7" in g["logs"][0] and "exact attention there" in g["logs"][0]
    assert r["low_precision_false"] == {"sage": 0, "exact": 1}


MISSING = r"""
import logging, importlib.util, nodes as core
import skyreels_pack.attention.sage as sage_module
from skyreels_pack.nodes.sage_patch import PatchSageAttention
real_find_spec = importlib.util.find_spec
importlib.util.find_spec = lambda name, *a: None if name == "sageattention" else real_find_spec(name, *a)
records = []
handler = logging.Handler()
handler.emit = lambda r: records.append(r.getMessage())
logging.getLogger("skyreels_fp8").addHandler(handler)
pos = [[torch.randn(1, 16, 4096, generator=g), {}]]
latent = {"samples": torch.zeros(1, 16, 2, 8, 8)}
patcher, _ = load("t2v_fp8_tensor.safetensors")
patched = PatchSageAttention.execute(patcher, "sageattn", 0, 0, 0, 0.995).args[0]
a = core.common_ksampler(patched, 0, 2, 2.0, "euler", "simple", pos, pos, latent)[0]["samples"]
b = core.common_ksampler(patcher, 0, 2, 2.0, "euler", "simple", pos, pos, latent)[0]["samples"]
counts = patched.model_options["transformer_options"]["optimized_attention_override"].counts
result = dict(rel=rel(a, b), counts=dict(counts), logs=records)
"""


def test_without_sageattention_the_node_runs_exact_and_says_why(host, tmp_path):
    write_models(tmp_path)
    r = run_in_host(host, SETUP.format(repo=REPO, folder=str(tmp_path)) + MISSING)
    assert r["rel"] == 0.0 and r["counts"] == {"sage": 0, "exact": 8}
    assert r["logs"] == ["Patch SageAttention: No module named 'sageattention' (pip install sageattention); "
                         "attention stays exact (PyTorch/ComfyUI attention)"]
