"""The GPU path without a GPU: a loaded FP8 model's forward through the host's own Wan code, on FakeTensorMode tensors
that say they are on "cuda", with Diffusion Forcing's per-frame sigmas as Sample Video hands them. Each op then runs
its meta function, which applies the CUDA kernel's rules for layouts and shapes (torch._scaled_mm: row-major
activations, column-major weights, fp32 scales of the right shapes; tests/test_fp8.py adds its dtype rules) and
refuses tensors of two devices (a CPU table meeting CUDA activations raises here as it would on a GPU). No value is
computed, so this asserts only what ran: on a GPU runner bench/gpu_check.sh runs the same path for real."""
from comfy_host import REPO, run_in_host
from in_host import SETUP, write_models

FAKE_CUDA = r"""
import comfy.model_management
from torch._subclasses.fake_tensor import FakeTensorMode
from skyreels_pack.nodes.adapters import per_frame
from skyreels_pack.nodes.adapters.sage_override import SageOverride
from skyreels_pack.sampling.schedule import model_timesteps
from skyreels_pack.attention import dispatch
from skyreels_pack.quant import act_quant, fp8, fp8_plan
# As on a GPU: the loader computes in bf16 (float32 on this CPU host), and the GPU has the compute capability named
# below. The Triton kernel cannot take fake tensors, so the activations are quantized eagerly.
comfy.model_management.unet_manual_cast = lambda *args, **kwargs: torch.bfloat16
act_quant.fused_available = lambda: (False, "no Triton on fake tensors")
# comfy-kitchen's CUDA kernel cannot take fake tensors either; its eager backend (the same package, plain torch ops)
# stands in for it in the case that asks for it, counting its calls
import comfy_kitchen
kitchen_calls = []
kitchen_eager = comfy_kitchen.registry.get_implementation("quantize_per_tensor_fp8", backend="eager")
def kitchen(x, scale, dtype):
    kitchen_calls.append(tuple(x.shape))
    return kitchen_eager(x, scale, dtype)
patcher, report = load("df_bf16.safetensors", compute="fp8 matmul")
model = patcher.model.diffusion_model
sampling = per_frame.patch(patcher, 8.0, model_timesteps(4, 8.0)).get_model_object("model_sampling")
result = dict(report=report)
with torch.inference_mode(), FakeTensorMode(allow_non_fake_inputs=True) as mode:
    for module in model.modules():
        for store in (module._parameters, module._buffers):
            for name, tensor in store.items():
                if tensor is not None:
                    fake = mode.from_tensor(tensor.data if store is module._parameters else tensor).to("cuda")
                    store[name] = torch.nn.Parameter(fake, requires_grad=False) if store is module._parameters else fake
    xc, ctxc = (mode.from_tensor(a).to("cuda", torch.bfloat16) for a in (x, ctx))
    # Tensors the pack made on the CPU stay there (as fakes: a real tensor would be copied for real)
    sampling.keys, sampling.values = (mode.from_tensor(t) for t in (sampling.keys, sampling.values))
    sigma = mode.from_tensor(torch.tensor([[0.999, 0.6]])).to("cuda")   # Diffusion Forcing: a sigma per frame
    # an H100, an RTX 50xx, an RTX 40xx on Windows (no row-wise kernels there)
    # and one on Windows without Triton, where comfy-kitchen quantizes the activations
    for label, capability, windows in (("rowwise", (9, 0), False), ("tensorwise", (12, 0), False),
                                       ("windows", (8, 9), True), ("windows comfy-kitchen", (8, 9), True)):
        # offered to the per-token plan too, which it cannot serve
        act_quant.kitchen_per_tensor = (lambda: kitchen) if label in ("rowwise", "windows comfy-kitchen") else (
            lambda: None)
        kitchen_calls.clear()
        torch.cuda.get_device_capability = lambda device=None: capability
        fp8_plan.WINDOWS = windows
        fp8_plan._plans.clear()
        dispatch.device_capability.cache_clear()
        for attention in ("disabled", "reference"):
            override = SageOverride(attention, guard=0)   # the guard reads values, which fake tensors have none of
            opts = dict(patcher.model_options["transformer_options"], optimized_attention_override=override,
                        wrappers=patcher.wrappers, skyreels_fps=16)
            before = dict(fp8.stats)
            # What the host's apply_model does with Sample Video's per-frame model_sampling
            t = sampling.timestep(sigma)
            out = model(sampling.calculate_input(sigma, xc), t, ctxc, transformer_options=opts)
            out = sampling.calculate_denoised(sigma, out, xc)
            result[f"{label} {attention}"] = dict(
                out=[list(out.shape), str(out.dtype), str(out.device)], t=list(t.shape), attention=override.counts,
                plan=fp8_plan._plans[("cuda", 0, "channel")][0], fallback_reasons=dict(fp8.fallback_reasons),
                kitchen_calls=len(kitchen_calls), **{k: fp8.stats[k] - before[k] for k in before})
            kitchen_calls.clear()
result["blocks"] = len(model.blocks)
"""


def test_fp8_model_forward_passes_torchs_cuda_rules(host, tmp_path):
    write_models(tmp_path)
    r = run_in_host(host, SETUP.format(repo=REPO, folder=str(tmp_path)) + FAKE_CUDA)
    print(r)
    assert "fps embedding: on" in r["report"], r
    blocks = r["blocks"]
    for label, plan in (("rowwise", "rowwise"), ("tensorwise", "tensorwise"), ("windows", "tensorwise"),
                        ("windows comfy-kitchen", "tensorwise")):
        for attention, counts in (("disabled", {"sage": 0, "exact": 2 * blocks}),
                                  ("reference", {"sage": 2 * blocks, "exact": 0})):
            v = r[f"{label} {attention}"]
            assert v["plan"] == plan and v["t"] == [1, 2], v
            # the x0 prediction, in float32 as the host's apply_model returns it
            assert v["out"] == [[1, 16, 2, 16, 16], "torch.float32", "cuda:0"], (plan, attention, v)
            # Every block Linear (10 a block) multiplied in FP8, none fell back to upcast.
            assert (v["w8a8"], v["fallback"], v["upcast"]) == (10 * blocks, 0, 0), (plan, attention, v)
            assert v["attention"] == counts, (plan, attention, v)
            # comfy-kitchen quantized every activation there (q/k/v share one: 7 a block), none for per-token scales
            assert v["kitchen_calls"] == (7 * blocks if "comfy-kitchen" in label else 0), (label, attention, v)


GPU_DTYPE = r"""
import comfy.model_management
from skyreels_pack.quant import act_quant
from skyreels_pack.nodes.adapters.run_report import weights_summary
# An H100 as the load device, as ComfyUI sees one: its rule computes a quantized Wan model in fp16 there. Only the
# model is built (nothing runs on the device), so the device query, the capability and Triton are all that change.
comfy.model_management.get_torch_device = lambda: torch.device("cuda", 0)
comfy.model_management.unet_manual_cast = lambda *args, **kwargs: torch.float16
torch.cuda.get_device_capability = lambda device=None: (9, 0)
act_quant.fused_available = lambda: (True, None)
result = {}
for compute in ("auto", "upcast"):
    patcher, report = load("t2v_bf16.safetensors", "fp8_e4m3fn (per-channel)", compute)
    result[compute] = [str(patcher.model.get_dtype_inference()), weights_summary(patcher)[0], report]
comfy.cli_args.args.fp16_unet = True      # as --force-fp16 sets it
patcher, report = load("t2v_bf16.safetensors", "fp8_e4m3fn (per-channel)", "auto")
result["--force-fp16"] = [str(patcher.model.get_dtype_inference()), weights_summary(patcher)[0], report]
"""


def test_fp8_products_on_a_gpu_compute_in_bf16(host, tmp_path):
    """CUDA's _scaled_mm writes its products in bf16: in ComfyUI's fp16 each Linear's output was cast (on an H200,
    300 casts, 169 ms of a 3.5 s step of the 1.3B model at 540P). With FP8 products the model computes in bf16, as
    SkyReels-V2 does; with upcast, or where the user asked for fp16, it keeps the host's choice. Old code: fp16 for
    both."""
    write_models(tmp_path)
    r = run_in_host(host, SETUP.format(repo=REPO, folder=str(tmp_path)) + GPU_DTYPE)
    assert r["auto"][0] == "torch.bfloat16" and "compute: fp8 matmul" in r["auto"][2], r
    assert r["auto"][1].endswith("6 bfloat16"), r     # the Linears kept in high precision too
    assert r["upcast"][0] == "torch.float16" and r["upcast"][1].endswith("6 float16"), r
    forced = r["--force-fp16"]
    assert forced[0] == "torch.float16" and forced[2].endswith("other tensors stay float16"), r
