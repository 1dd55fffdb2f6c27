"""LoRAs made at random (seeded): LoRA, LoHa, LoKr and full-difference keys, of wrong shapes, other dtypes, odd alphas
and NaN/Inf values, applied by the host's LoRA loading to this loader's FP8 model (per channel and per tensor) and
to the host's own bf16 model of the same file. Ours must do what the host's does: run, make NaN/Inf, or stop with the
same error; where both run, stay within FP8's distance of it. Hand-picked formats are in test_host_lora_formats.py."""
from comfy_host import REPO, run_in_host
from in_host import SETUP, write_models

LORAS = 80      # about 15 s on 2 cores; 1230 other seeds were run by hand when this was written (none differed)

RUN = r"""
import random, traceback, safetensors.torch
from skyreels_pack.quant.policy import should_quantize
sd = safetensors.torch.load_file(os.path.join({folder!r}, "t2v_bf16.safetensors"))
ours = [load("t2v_bf16.safetensors", f"fp8_e4m3fn (per-{{g}})")[0] for g in ("channel", "tensor")]
core = comfy.sd.load_diffusion_model(os.path.join({folder!r}, "t2v_bf16.safetensors"))
linears = [k for k in sd if should_quantize(k, 2)]
others = [k for k in sd if k.endswith(".weight") and k not in linears]   # patch_embedding, head, norms: kept bf16


def lora_of(r):
    lora = {{}}
    for key in r.sample(linears, r.randint(1, 6)) + (r.sample(others, 1) if r.random() < 0.2 else []):
        shape, base = sd[key].shape, "diffusion_model." + key[:-len(".weight")]
        out_f, in_f, rank, kind = shape[0], sd[key][0].numel(), r.choice([1, 4]), r.randrange(6)
        if kind < 3:
            up, down = torch.randn(out_f, rank) * 0.2, torch.randn(rank, in_f) * 0.2
            down = down.reshape(rank, *shape[1:])
            edit = r.randrange(6)
            if edit == 0:
                up = torch.randn(out_f + 1, rank)          # another layer's
            elif edit == 1:
                down = torch.randn(rank, in_f * 2)
            elif edit == 2 and down.dim() == 2:
                up, down = down.t(), up.t()                 # up and down swapped
            elif edit == 3:
                up[0, 0] = r.choice([float("nan"), float("inf")])
            lora[base + ".lora_up.weight"] = up.to(r.choice([torch.float32, torch.bfloat16])).contiguous()
            lora[base + ".lora_down.weight"] = down.to(r.choice([torch.float32, torch.float16])).contiguous()
            if r.random() < 0.4:
                lora[base + ".alpha"] = r.choice([torch.tensor(4.0), torch.tensor([2.0]), torch.tensor(0.0),
                                                  torch.tensor(float("nan")), torch.ones(2)])
        elif kind == 3:
            lora[base + ".diff"] = torch.randn(shape) * 0.01 if r.random() < 0.8 else torch.randn(out_f, 3)
            if r.random() < 0.3:
                lora[base + ".diff_b"] = torch.randn(out_f if r.random() < 0.8 else 5) * 0.01
        elif kind == 4 and len(shape) == 2:
            lora[base + ".lokr_w1"] = torch.randn(2, 2) * 0.1
            lora[base + ".lokr_w2"] = torch.randn(out_f // 2, in_f // 2 if r.random() < 0.8 else 3) * 0.1
        elif kind == 5 and len(shape) == 2:
            for w in ("w1", "w2"):
                lora[f"{{base}}.hada_{{w}}_a"] = torch.randn(out_f, rank) * 0.1
                lora[f"{{base}}.hada_{{w}}_b"] = torch.randn(rank, in_f if r.random() < 0.9 else 7) * 0.1
    return lora


def outcome(patcher, lora, strength, lowvram):
    p = patcher.clone()
    try:
        p = comfy.sd.load_lora_for_models(patcher, None, lora, strength, 0.0)[0]
        p.patch_model(torch.device("cpu"), lowvram_model_memory=1 if lowvram else 0)
        with torch.no_grad():
            out = p.model.diffusion_model(x, t, ctx, transformer_options=p.model_options["transformer_options"])
        return ("runs" if torch.isfinite(out).all() else "NaN/Inf"), out.float()
    except Exception as e:
        return f"{{type(e).__name__}}: {{e}}", None
    finally:
        p.unpatch_model(torch.device("cpu"))


import logging
logging.disable(logging.WARNING)     # the host logs each key it cannot apply
with torch.no_grad():
    plain = core.model.diffusion_model(x, t, ctx).float()     # the host's model without a LoRA
differ, worst, seen, strong = [], 0.0, set(), 0
for case in range({loras}):
    r = random.Random(case)
    torch.manual_seed(case)      # the LoRA's values: each case alone draws what it drew here
    lora, strength, lowvram = lora_of(r), r.choice([1.0, 0.5, -1.0, 0.0, 5.0]), r.random() < 0.4
    theirs, reference = outcome(core, lora, strength, lowvram)
    seen.add(theirs if theirs in ("runs", "NaN/Inf") else "an error")
    strong += theirs == "runs" and rel(reference, plain) > 0.16
    for model in ours:
        what, out = outcome(model, lora, strength, lowvram)
        if what != theirs:
            differ.append(f"case {{case}}: the host's model: {{theirs}}; ours: {{what}}")
        elif what == "runs":
            worst = max(worst, rel(out, reference))
result = dict(differ=differ, worst=worst, seen=sorted(seen), strong=strong)
"""


def test_random_loras_do_on_fp8_what_they_do_on_the_hosts_bf16_model(host, tmp_path):
    write_models(tmp_path)
    r = run_in_host(host, SETUP.format(repo=REPO, folder=str(tmp_path)) + RUN.format(folder=str(tmp_path),
                                                                                     loras=LORAS))
    assert r["differ"] == [], "\n".join(r["differ"][:5])
    assert r["seen"] == ["NaN/Inf", "an error", "runs"], r      # the LoRAs reach all three outcomes
    # FP8 weights' own distance from bf16 on this model: at most 5.2% over these LoRAs (bound 8%). A LoRA dropped on
    # the FP8 model would add its own effect, over twice the bound in `strong` of the runs.
    assert r["worst"] < 0.08 and r["strong"] >= 8, r
