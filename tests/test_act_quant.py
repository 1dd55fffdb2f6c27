import gc
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from helpers import REPO, e4m3_neighbours
from quant import act_quant

E4M3 = torch.float8_e4m3fn
ROW_CASES = ["37x96_bf16_zero_rows", "37x96_bf16_tiles_of_64", "64x256_fp16", "33x80_fp32_tiny",
             "40x128_row_stride_200", "64x256_per_tensor", "rounding_sweep"]


def reference(x, scale=None):
    """The quantization written out in whole-tensor passes: row absmax / 448 (1 for zero rows), clamp, cast."""
    if scale is None:
        scale = x.abs().amax(dim=1, keepdim=True).float() / 448
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return (x.float() / scale).clamp(-448, 448).to(E4M3), scale


def same_bytes(a, b):
    return a.shape == b.shape and torch.equal(a.view(torch.uint8), b.view(torch.uint8))


# ---- the Triton kernel (CPU interpreter) against the eager code ----

@pytest.mark.parametrize("name", ROW_CASES)
def test_kernel_gives_the_eager_bytes(act_quant_kernel, name):
    cases, outputs = act_quant_kernel
    case = cases[name]
    q, scale = outputs[name]
    ref_q, ref_scale = reference(case["x"], case["scale"])
    eager_q, eager_scale = act_quant._quantize_eager(case["x"], case["scale"])
    # Same bytes, -0.0 included, and the same fp32 scales: no tolerance.
    assert same_bytes(q, ref_q) and same_bytes(eager_q, ref_q)
    assert torch.equal(scale, ref_scale) and torch.equal(eager_scale, ref_scale)


def test_kernel_keeps_negative_zeros_whatever_triton_negates_with(tmp_path):
    # Triton 3.6 (torch 2.11 brings it) and older compile a float's unary minus as 0 - x, which gives +0.0
    # for x = 0 on the GPU as in the interpreter; 3.8 flips the sign bit. Simulated here on the installed triton:
    # the kernel must give the eager bytes (-0.0 where a negative value rounds to zero) under either.
    pytest.importorskip("triton", reason="the kernel comparison needs triton")
    x = e4m3_neighbours()
    x[0, :3] = torch.tensor([-0.0, -1e-30, -2.0 ** -11])   # negatives that round to -0.0
    torch.save(x, tmp_path / "x.pt")
    script = f"""
import os, sys
os.environ["TRITON_INTERPRET"] = "1"
sys.path.insert(0, {REPO!r})
import torch
from triton.language import semantic

def old_minus(self, input):   # triton 3.6's TritonSemantic.minus
    zero = self.tensor(self.builder.get_null_value(input.type.scalar.to_ir(self.builder)), input.type.scalar)
    return self.sub(zero, input, True)

cls = getattr(semantic, "TritonSemantic", None)
assert cls is not None and hasattr(cls, "minus"), "this triton has no TritonSemantic.minus to replace"
cls.minus = old_minus
from quant.act_quant_triton import quantize_rows
torch.save(quantize_rows(torch.load({str(tmp_path / "x.pt")!r}), torch.ones(1, 1))[0], {str(tmp_path / "q.pt")!r})
"""
    subprocess.run([sys.executable, "-c", script], check=True, timeout=300)
    q = torch.load(tmp_path / "q.pt")
    eager_q, _ = act_quant._quantize_eager(x, torch.ones(1, 1))
    assert eager_q.view(torch.uint8)[0, :3].tolist() == [0x80] * 3 and same_bytes(q, eager_q)


# ---- the eager chunks ----

@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_eager_chunks_equal_the_one_pass_reference(monkeypatch, dtype):
    monkeypatch.setitem(act_quant.CHUNK_VALUES, "cpu", 1000)   # 10 rows a chunk: many chunks, a short last one
    g = torch.Generator().manual_seed(2)
    x = (torch.randn(67, 200, generator=g) * torch.logspace(-3, 3, 67)[:, None]).to(dtype)
    x[[0, 31]] = 0
    for xx in (x, x[:, 40:136]):   # contiguous, and rows with a stride of 200
        q, scale = act_quant.quantize(xx, fused=False)
        ref_q, ref_scale = reference(xx)
        assert same_bytes(q, ref_q) and torch.equal(scale, ref_scale)
    q, scale = act_quant.quantize(x, per_tensor=True, fused=False)
    ref_q, ref_scale = reference(x, absmax := x.abs().max().float() / 448)
    assert scale.shape == (1, 1) and torch.equal(scale.reshape(()), absmax) and same_bytes(q, ref_q)


def test_eager_input_is_left_alone():
    x = torch.randn(20, 64)
    before = x.clone()
    act_quant.quantize(x, fused=False)
    assert torch.equal(x, before)


@pytest.mark.parametrize("m", [1, 3, 4, 5, 16, 37, 1000, 32768])
@pytest.mark.parametrize("k", [32, 96, 5120, 13824])
def test_chunk_rows_bound(m, k):
    for budget in act_quant.CHUNK_VALUES.values():
        rows = act_quant.chunk_rows(m, k, budget)
        assert 1 <= rows <= m and rows * k <= max(budget, k)
        if m >= 4:   # the fp32 copy of a chunk within 0.625x of the bf16 activation
            assert 4 * rows * k <= 0.625 * 2 * m * k


def peak_extra_bytes(fn):
    """Peak of the CPU bytes allocated and not yet freed while fn runs, from each allocation and free at its own time
    (the profiler's raw memory events), and fn's result. Also sees the temporaries an op frees before it returns:
    the op-level events (prof.events()) fold those frees into the op's start, before its inner allocations."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    cpu = torch._C._autograd.DeviceType.CPU
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]" and e.device_type() == cpu]
    live = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        live += event.nbytes()
        peak = max(peak, live)
    return peak, result


def test_the_meter_sees_temporaries_an_op_frees_before_it_returns():
    # The CPU multiplies a bf16 tensor in place by an fp32 one through fp32 copies of both, freed inside mul_: 4x the
    # tensor. The op-level meter used before read 0x here, so the bounds of every test that uses it (here,
    # test_attention, test_checkpoint, test_fp8) would have passed such temporaries.
    x, scale = torch.zeros(256, 512, dtype=torch.bfloat16), torch.ones(256, 1)
    peak, _ = peak_extra_bytes(lambda: x.mul_(scale))
    assert peak >= 3.9 * x.nbytes, peak / x.nbytes


def test_eager_extra_memory_is_within_0_75x_of_a_bf16_activation():
    x = torch.randn(512, 1024).bfloat16()
    peak, (q, scale) = peak_extra_bytes(lambda: act_quant.quantize(x, fused=False))
    extra = peak - q.nbytes - scale.nbytes
    assert 0 < extra <= 0.75 * x.nbytes, extra / x.nbytes
    # The meter sees the whole-tensor passes fp8_linear made before (3.5x).
    peak, (q, scale) = peak_extra_bytes(lambda: reference(x))
    assert peak - q.nbytes - scale.nbytes > 3 * x.nbytes


# ---- quantize q, k and v's shared input once ----

@pytest.fixture
def counted(monkeypatch):
    calls = []
    real = act_quant.quantize

    def quantize(x, per_tensor=False, fused=None):
        calls.append(x.shape)
        return real(x, per_tensor, fused)

    monkeypatch.setattr(act_quant, "quantize", quantize)
    act_quant.forget()
    yield calls
    act_quant.forget()


def test_three_calls_on_one_tensor_quantize_once(counted):
    x = torch.randn(2, 8, 32)
    results = [act_quant.quantize_input(x) for _ in range(3)]
    assert len(counted) == 1 and results[0] is results[1] is results[2]
    assert same_bytes(results[0][0], reference(x.reshape(-1, 32))[0])
    act_quant.quantize_input(x, per_tensor=True)   # another scaling is another result
    assert len(counted) == 2


def test_in_place_change_is_quantized_again(counted):
    x = torch.randn(16, 32)
    act_quant.quantize_input(x)
    x.mul_(2)   # bumps x._version
    q, _ = act_quant.quantize_input(x)
    assert len(counted) == 2 and same_bytes(q, reference(x)[0])


def test_other_tensors_never_reuse(counted):
    x = torch.randn(16, 32)
    act_quant.quantize_input(x)
    act_quant.quantize_input(x.clone())              # equal values, another tensor
    act_quant.quantize_input(x.detach())             # same memory, version and shape, another tensor object
    act_quant.quantize_input(x.view(16, 2, 16)[:, 0])  # same address, other shape
    assert len(counted) == 4


def test_a_new_tensor_at_a_freed_tensors_address_is_not_reused():
    # Inference tensors track no version, so only the weak reference tells a new tensor at the same address from
    # the old one: here the same memory, shape and strides, rewritten in between.
    buffer = torch.randn(64)
    with torch.inference_mode():
        inference_buffer = buffer.clone()
        act_quant.enter_shared_scope()
        try:
            x = inference_buffer.view(4, 16)
            old = act_quant.quantize_input(x)[0].clone()
            del x
            inference_buffer.mul_(-3)
            y = inference_buffer.view(4, 16)
            q, _ = act_quant.quantize_input(y)
        finally:
            act_quant.exit_shared_scope()
    assert not same_bytes(q, old) and same_bytes(q, reference(y)[0])


def test_inference_tensors_are_reused_only_inside_a_shared_scope(counted):
    with torch.inference_mode():
        x = torch.randn(16, 32)
        act_quant.quantize_input(x)
        act_quant.quantize_input(x)
        assert len(counted) == 2 and act_quant._state.entry is None   # no version counter: no reuse, nothing held
        act_quant.enter_shared_scope()
        for _ in range(3):
            act_quant.quantize_input(x)
        assert len(counted) == 3
        act_quant.exit_shared_scope()
        assert act_quant._state.entry is None   # the scope's end frees the cached activation


def test_the_cache_holds_one_activation_and_none_of_a_freed_input(counted):
    x, y = torch.randn(16, 32), torch.randn(16, 32)
    act_quant.quantize_input(x)
    act_quant.quantize_input(y)
    act_quant.quantize_input(x)
    assert len(counted) == 3   # one entry: y replaced x
    del x
    gc.collect()
    assert act_quant._state.entry is None


@pytest.mark.parametrize("device, capability, hip, once", [
    ("cpu", None, None, False),                  # the interpreter: its own conversion rounds wrongly
    ("cuda", (8, 9), None, False),               # RTX 40xx: upstream Triton converts through fp16 below sm90
    ("cuda", (9, 0), None, True), ("cuda", (12, 0), None, True),
    ("cuda", (9, 4), "6.4", False)])             # ROCm: not measured
def test_the_gpus_own_fp8_rounding_only_where_it_rounds_once(monkeypatch, device, capability, hip, once):
    # On sm89 upstream Triton (3.8 and older; triton-windows changed it in 3.5.0.post21) casts fp32 to e4m3 through
    # fp16 (ElementwiseOpToLLVM.cpp, useFP16IntermediateSrc): two roundings, so the kernel keeps its software
    # rounding there, whose exact e4m3 values convert through fp16 unchanged.
    pytest.importorskip("triton", reason="the kernel module needs triton")
    from quant import act_quant_triton
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.version, "hip", hip)
    act_quant_triton.rounds_once.cache_clear()
    try:
        assert act_quant_triton.rounds_once(torch.device(device, 0) if device == "cuda" else torch.device(device)) \
            is once
    finally:
        act_quant_triton.rounds_once.cache_clear()


@pytest.mark.parametrize("dtype, same_at_least", [(torch.bfloat16, 0.95), (torch.float16, 0.99), (torch.float32, 0.999)])
def test_comfy_kitchens_per_tensor_quantization_takes_our_scale(dtype, same_at_least):
    """kitchen_quantize with our [1, 1] scale, through comfy-kitchen's eager backend: its CUDA kernel, which runs on a
    GPU without Triton, needs a GPU (bench/act_quant.py compares its bytes with ours there). The eager backend
    multiplies by a reciprocal rounded to the input's dtype, so some values take the neighbouring fp8 value: measured
    on three seeds, 96.5-97.6% the same bytes in bf16, 99.6-99.7% in fp16, all in fp32, never more than one step nor
    another sign. A scale taken the wrong way round leaves almost none the same."""
    ck = pytest.importorskip("comfy_kitchen")
    eager = ck.registry.get_implementation("quantize_per_tensor_fp8", backend="eager")
    x = (torch.randn(256, 512, generator=torch.Generator().manual_seed(0)) * 3).to(dtype)
    ours, scale = act_quant.quantize(x, per_tensor=True, fused=False)
    theirs = act_quant.kitchen_quantize(eager, x, scale)
    assert theirs.dtype == torch.float8_e4m3fn and theirs.shape == x.shape
    a, b = ours.view(torch.uint8).int(), theirs.view(torch.uint8).int()
    assert (a == b).float().mean() >= same_at_least
    assert ((a & 0x7F) - (b & 0x7F)).abs().max() <= 1 and not ((a ^ b) & 0x80)[(a & 0x7F) != 0].any()
    assert (act_quant.kitchen_quantize(eager, x, 1 / scale).view(torch.uint8).int() == a).float().mean() < 0.01


def test_comfy_kitchen_quantizes_only_where_its_cuda_backend_is_on(monkeypatch):
    """kitchen_per_tensor: the implementation comfy-kitchen's registry holds for its "cuda" backend, None where that
    backend is not registered (no GPU, no CUDA extension) or is turned off, as ComfyUI turns it off under a torch for
    CUDA < 13. A registry of comfy-kitchen's own class stands in for the process's, whose CUDA backend needs a GPU. A
    failing kernel is a KernelFailed naming comfy-kitchen, which fp8_linear answers by upcasting."""
    ck = pytest.importorskip("comfy_kitchen")
    from comfy_kitchen.constraints import FunctionConstraints
    from comfy_kitchen.registry import BackendRegistry

    def kernel(x, scale, dtype):
        return None

    registry = BackendRegistry()
    monkeypatch.setattr(ck, "registry", registry)
    found = []
    for step in ("unregistered", "registered", "disabled"):
        if step == "registered":
            registry.register("cuda", SimpleNamespace(quantize_per_tensor_fp8=kernel),
                              {"quantize_per_tensor_fp8": FunctionConstraints(params={})})
        if step == "disabled":
            registry.disable("cuda")
        act_quant.kitchen_per_tensor.cache_clear()
        found.append(act_quant.kitchen_per_tensor())
    act_quant.kitchen_per_tensor.cache_clear()
    assert found == [None, kernel, None]
    # why not, for the loader's report (the registry's own status of its backends)
    registry.enable("cuda")
    registry._backends.clear()
    registry.mark_unavailable("cuda", "CUDA not available on this system")
    assert act_quant.kitchen_missing() == "no comfy-kitchen CUDA kernels (CUDA not available on this system)"
    registry.disable("cuda")
    assert act_quant.kitchen_missing() == ("comfy-kitchen's CUDA kernels are off: ComfyUI turns them off under a "
                                           "PyTorch built for CUDA < 13")

    def fails(x, scale, dtype):
        raise RuntimeError("CUDA kernel launch failed: no kernel image is available\nmore")

    with pytest.raises(act_quant.KernelFailed, match=r"^comfy-kitchen's FP8 quantization failed \(RuntimeError: "
                                                     r"CUDA kernel launch failed: no kernel image is available\)$"):
        act_quant.kitchen_quantize(fails, torch.ones(16, 16), torch.ones(1, 1))


def test_comfy_kitchen_runs_in_row_blocks_past_its_32_bit_count(monkeypatch):
    """Activations of 2^31 values and more go to comfy-kitchen's kernel in row blocks (it counts values in 32 bits:
    the 14B model's ffn.2 input at 720P, 121 frames, cond and uncond in one batch, is 3.1e9): one scale for all, so
    the blocks give the bytes of one call. Here with blocks of 1024 values, through its eager backend."""
    ck = pytest.importorskip("comfy_kitchen")
    eager = ck.registry.get_implementation("quantize_per_tensor_fp8", backend="eager")
    calls = []

    def kernel(x, scale, dtype):
        calls.append(x.shape[0])
        return eager(x, scale, dtype)

    x = torch.randn(100, 64, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    scale = torch.full((1, 1), 0.01)
    whole = act_quant.kitchen_quantize(kernel, x, scale)
    monkeypatch.setattr(act_quant, "KITCHEN_VALUES", 1024)
    blocks = act_quant.kitchen_quantize(kernel, x, scale)
    assert calls == [100, 16, 16, 16, 16, 16, 16, 4]
    assert torch.equal(blocks.view(torch.uint8), whole.view(torch.uint8))


def test_per_tensor_scales_go_to_comfy_kitchen_where_triton_is_missing_or_fails(monkeypatch, caplog):
    """On a GPU (fake CUDA tensors here) with comfy-kitchen's kernel: per-tensor scales without Triton go to it, and
    so do they once the Triton kernel has failed (logged once; it is not tried again), where per-token scales, which
    it cannot make, fail as before (fp8_linear then upcasts). Activations it cannot take (not contiguous, rows not of
    16k values; an address not 16-byte aligned: test_comfy_kitchen_takes_only_aligned_activations) stay with the
    eager chunks."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    import quant.act_quant_triton as triton_kernel

    ck = pytest.importorskip("comfy_kitchen")
    eager = ck.registry.get_implementation("quantize_per_tensor_fp8", backend="eager")
    calls = {"kitchen": 0, "triton": 0}

    def kitchen(x, scale, dtype):
        calls["kitchen"] += 1
        return eager(x, scale, dtype)

    def triton_fails(x, given):
        calls["triton"] += 1
        raise RuntimeError("CalledProcessError: ptxas.exe returned 3221225794")

    monkeypatch.setattr(act_quant, "kitchen_per_tensor", lambda: kitchen)
    monkeypatch.setattr(act_quant, "_triton_failed", [])
    monkeypatch.setattr(triton_kernel, "quantize_rows", triton_fails)
    with FakeTensorMode(allow_non_fake_inputs=True) as mode, pytest.warns(UserWarning, match="data pointer"):
        x = mode.from_tensor(torch.zeros(64, 32)).to("cuda", torch.bfloat16)
        monkeypatch.setattr(act_quant, "fused_available", lambda: (False, "no Triton"))
        assert act_quant.quantize(x, per_tensor=True)[0].dtype == torch.float8_e4m3fn
        assert calls == {"kitchen": 1, "triton": 0}
        for odd in (x[:, :16], mode.from_tensor(torch.zeros(64, 24)).to("cuda", torch.bfloat16)):
            act_quant.quantize(odd, per_tensor=True)
        assert calls == {"kitchen": 1, "triton": 0}
        monkeypatch.setattr(act_quant, "fused_available", lambda: (True, None))
        with pytest.raises(act_quant.KernelFailed, match=r"^the Triton activation quantization failed \(RuntimeError: "
                                                         r"CalledProcessError: ptxas"):
            act_quant.quantize(x)
        with caplog.at_level("WARNING", logger="skyreels_fp8"):
            act_quant.quantize(x, per_tensor=True)
            act_quant.quantize(x, per_tensor=True)
        assert calls == {"kitchen": 3, "triton": 2}
    assert [r.getMessage() for r in caplog.records] == [
        "FP8 products: the Triton activation quantization failed (RuntimeError: CalledProcessError: ptxas.exe returned "
        "3221225794); comfy-kitchen's CUDA kernel quantizes the activations from now on"]


def test_comfy_kitchen_takes_only_aligned_activations(monkeypatch):
    """Its kernel loads 16 bytes at a time: a view 8 bytes into its storage would fault on the GPU."""
    monkeypatch.setattr(act_quant, "kitchen_per_tensor", lambda: (lambda x, scale, dtype: None))
    flat = torch.zeros(64 * 32 + 8, dtype=torch.bfloat16)
    assert act_quant._kitchen_takes(flat[8:].view(64, 32))     # 16 bytes in
    assert not act_quant._kitchen_takes(flat[4:4 + 64 * 32].view(64, 32))


def test_kernel_reads_a_column_strided_activation_by_its_values(tmp_path):
    """The kernel indexes columns as unit steps: an activation whose columns are not (a transposed view) is made
    contiguous first, else it would quantize other memory (a wrong, noisy Linear output)."""
    import os
    pytest.importorskip("triton")
    x = torch.randn(96, 48, generator=torch.Generator().manual_seed(7)).bfloat16().t()   # [48, 96], stride (1, 48)
    torch.save({"t": dict(x=x, scale=None, max_tile=16384)}, tmp_path / "cases.pt")
    subprocess.run([sys.executable, os.path.join(REPO, "tests", "act_quant_outputs.py"), str(tmp_path / "cases.pt"),
                    str(tmp_path / "out.pt")], check=True, timeout=300)
    q, scale = torch.load(tmp_path / "out.pt")["t"]
    eager_q, eager_scale = act_quant._quantize_eager(x, None)
    assert torch.equal(q.view(torch.uint8), eager_q.view(torch.uint8)) and torch.equal(scale, eager_scale)
