import logging
import subprocess
import sys
import types

import pytest
import torch
import torch.nn.functional as F
import helpers

from quant.fp8 import dequantize_weight, fp8_linear, quantize_weight, quantize_weight_chunked
from quant import fp8, fp8_plan
from quant.fp8 import relative_error
from quant.fp8_plan import scaled_mm_plan

E4M3, E5M2 = torch.float8_e4m3fn, torch.float8_e5m2


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.fixture
def weight():
    return torch.randn(256, 1024, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_e4m3_round_trip_within_3_5_percent(weight, granularity):
    q, scale = quantize_weight(weight, granularity=granularity)
    assert q.dtype == E4M3 and scale.dtype == torch.float32
    assert scale.shape == (() if granularity == "tensor" else (256, 1))
    assert rel(dequantize_weight(q, scale, torch.float32), weight) <= 0.035


@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_e5m2_round_trip_within_7_percent(weight, granularity):
    # e5m2 keeps 2 mantissa bits to e4m3's 3, so its bound is twice as loose.
    q, scale = quantize_weight(weight, dtype=E5M2, granularity=granularity)
    assert q.dtype == E5M2
    assert rel(q.float() * scale, weight) <= 0.07
    # quant/scale.py's convention, for e5m2 too: each scale's largest magnitude is stored as the format's largest
    top = q.float().abs().amax(dim=1)
    assert (top.max() if granularity == "tensor" else top.min()) == torch.finfo(E5M2).max == 57344


def test_per_channel_beats_per_tensor_on_uneven_rows(weight):
    weight[:8] *= 1e5  # a few loud channels push the other rows into e4m3 subnormals (per-tensor)
    quiet = {g: rel(dequantize_weight(*quantize_weight(weight, granularity=g), torch.float32)[8:], weight[8:])
             for g in ("tensor", "channel")}
    assert quiet["channel"] <= 0.035 < quiet["tensor"]


@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_zeros_are_exact_and_finite(granularity):
    w = torch.zeros(32, 64)
    w[5] = torch.randn(64)  # one live row, the rest zero rows
    for weight in (torch.zeros(32, 64), w):
        q, scale = quantize_weight(weight, granularity=granularity)
        assert torch.isfinite(scale).all() and torch.isfinite(q.float()).all()
        back = dequantize_weight(q, scale, torch.float32)
        assert torch.equal(back[weight == 0], torch.zeros_like(back[weight == 0]))


def test_absmax_maps_to_fp8_max_without_overflow():
    w = torch.tensor([[1e4, -1e4, 1.0, 0.0]])
    q, scale = quantize_weight(w)
    assert q.float().abs().max().item() == 448.0
    assert torch.isfinite(q.float()).all()
    assert scale.item() == pytest.approx(1e4 / 448)


@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_chunked_equals_whole(weight, granularity):
    q, scale = quantize_weight(weight, granularity=granularity)
    qc, sc, err = quantize_weight_chunked(weight.bfloat16(), granularity=granularity, chunk=4096, error_every=1)
    q2, s2 = quantize_weight(weight.bfloat16(), granularity=granularity)
    assert torch.equal(qc.view(torch.uint8), q2.view(torch.uint8)) and torch.equal(sc, s2)
    exact = relative_error(weight.bfloat16(), qc, sc)
    assert err == pytest.approx(exact, rel=1e-4)
    # By default the error is measured on every 8th block of rows (64 blocks here): within 2% of the exact one.
    assert quantize_weight_chunked(weight.bfloat16(), granularity=granularity, chunk=4096)[2] == \
        pytest.approx(exact, rel=0.02)
    assert q.shape == qc.shape


def test_nan_or_inf_weight_is_refused_not_hidden_by_the_scale():
    for bad in (float("nan"), float("inf")):
        w = torch.randn(16, 16)
        w[3, 3] = bad
        for granularity in ("tensor", "channel"):
            with pytest.raises(ValueError, match="NaN/Inf"):
                quantize_weight_chunked(w, granularity=granularity)
            with pytest.raises(ValueError, match="NaN/Inf"):
                quantize_weight(w, granularity=granularity)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="granularity must be"):
        quantize_weight(torch.ones(4, 4), granularity="block")
    with pytest.raises(ValueError, match="dtype must be"):
        quantize_weight(torch.ones(4, 4), dtype=torch.int8)
    with pytest.raises(ValueError, match="mode must be"):
        fp8_linear(torch.ones(2, 16), *quantize_weight(torch.ones(16, 16)), mode="int8")


@pytest.fixture
def linear_case():
    x, w, b = helpers.linear_case()
    return x, w, b, F.linear(x, w, b)


@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_fp8_linear_upcast_within_3_5_percent(linear_case, granularity):
    x, w, b, ref = linear_case
    y = fp8_linear(x, *quantize_weight(w, granularity=granularity), b, mode="upcast")
    assert y.shape == ref.shape and y.dtype == x.dtype
    assert rel(y, ref) <= 0.035


@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_fp8_linear_w8a8_within_5_percent_and_equal_to_the_triton_path(linear_case, granularity, act_quant_kernel):
    x, w, b, ref = linear_case
    q, scale = quantize_weight(w, granularity=granularity)
    y = fp8_linear(x, q, scale, b, mode="w8a8")
    assert y.shape == ref.shape and y.dtype == x.dtype
    # Against the fp32 product: weight and activation rounding, ~2.6% each (e4m3's 3 mantissa bits), add in
    # quadrature to ~3.7%; the bound leaves room for the bias-free rows.
    assert rel(y, ref) <= 0.05
    # The same call with the Triton kernel quantizing x (CPU interpreter, a subprocess): the same bytes in, so the
    # same product out.
    cases, outputs = act_quant_kernel
    assert torch.equal(cases[f"linear_{granularity}"]["x"], x)
    assert torch.equal(outputs[f"linear_{granularity}"], y)


def test_w8a8_per_token_scale_keeps_quiet_tokens(linear_case):
    # A per-tensor activation scale (or scale 1) loses tokens that are much quieter than the loudest one.
    x, w, b, _ = linear_case
    x = x.reshape(-1, 128).clone()
    x[0] *= 1e3
    x[1] *= 1e-3
    y = fp8_linear(x, *quantize_weight(w), None, mode="w8a8")
    ref = F.linear(x, w)
    assert rel(y[1], ref[1]) <= 0.05 and rel(y[0], ref[0]) <= 0.05


def test_w8a8_bf16_input_and_zero_rows(linear_case):
    x, w, b, _ = linear_case
    x = x.clone()
    x[0, 0] = 0
    ref = F.linear(x, w, b)
    y = fp8_linear(x.bfloat16(), *quantize_weight(w), b, mode="w8a8")
    assert y.dtype == torch.bfloat16 and torch.isfinite(y.float()).all()
    assert torch.allclose(y[0, 0].float(), b, atol=1e-2)
    assert rel(y, ref) <= 0.05


def test_w8a8_falls_back_to_upcast_and_counts_why(monkeypatch):
    import quant.fp8 as fp8

    monkeypatch.setattr(fp8, "fallback_reasons", {})
    x = torch.randn(4, 24)  # 24 is not a multiple of 16: _scaled_mm cannot take it
    w = torch.randn(8, 24)
    q, scale = quantize_weight(w)
    y1 = fp8_linear(x, q, scale, mode="w8a8")
    y2 = fp8_linear(x, q, scale, mode="w8a8")
    assert torch.equal(y1, fp8_linear(x, q, scale, mode="upcast")) and torch.equal(y1, y2)
    assert fp8.fallback_reasons == {"weight shape (8, 24) is not a multiple of 16": 2}
    # The output size too (a model with an ffn_dim not a multiple of 16): _scaled_mm's refusal there would have
    # turned FP8 products off for every later layer.
    q, scale = quantize_weight(torch.randn(24, 32))
    y = fp8_linear(x := torch.randn(4, 32), q, scale, mode="w8a8")
    assert torch.equal(y, fp8_linear(x, q, scale, mode="upcast"))
    assert fp8.fallback_reasons["weight shape (24, 32) is not a multiple of 16"] == 1


def test_chunked_quantization_leaves_an_fp32_weight_alone(weight):
    before = weight.clone()
    quantize_weight_chunked(weight, chunk=4096)
    quantize_weight_chunked(weight, granularity="channel", chunk=4096)
    assert torch.equal(weight, before)


def rowwise_cpu_plan(monkeypatch):
    """The row-wise plan on CPU whatever this torch's CPU kernel takes (2.11 and older take no row-wise scales), for
    the tests of what happens after the plan, which never reach the real kernel."""
    monkeypatch.setattr(fp8_plan, "_plans", {})
    monkeypatch.setattr(fp8_plan, "cpu_rowwise_scales", lambda: True)


def test_a_failing_scaled_mm_is_not_retried(monkeypatch):
    import quant.fp8 as fp8

    calls = []

    def broken(*a, **k):
        calls.append(1)
        raise RuntimeError("no kernel for this dtype pair\nmore")

    monkeypatch.setattr(fp8, "_w8a8", broken)
    rowwise_cpu_plan(monkeypatch)
    monkeypatch.setattr(fp8, "_failed", {})
    monkeypatch.setattr(fp8, "fallback_reasons", {})
    x, (q, scale) = torch.randn(4, 32), quantize_weight(torch.randn(16, 32), dtype=E5M2)
    for _ in range(3):
        y = fp8_linear(x, q, scale, mode="w8a8")
    assert len(calls) == 1 and torch.equal(y, fp8_linear(x, q, scale, mode="upcast"))
    # the reason, for Sample Video's report (run_report.matmul_summary)
    assert fp8.fallback_reasons == {"torch._scaled_mm failed: no kernel for this dtype pair": 3}


# ---- torch._scaled_mm per architecture ----

PLANS = {(7, 5): None, (8, 0): None, (8, 6): None, (8, 9): "rowwise", (9, 0): "rowwise", (10, 0): "rowwise",
         (12, 0): "tensorwise"}


@pytest.mark.parametrize("granularity", ["tensor", "channel"])
@pytest.mark.parametrize("capability", PLANS)
def test_scaled_mm_plan_per_architecture(capability, granularity):
    plan, reason = scaled_mm_plan("cuda", capability, "2.14.1+cu130", granularity)
    assert plan == PLANS[capability]
    major, minor = capability
    if plan is None:
        assert reason == f"GPU compute capability {major}.{minor} has no FP8 tensor cores (needs 8.9+)"
    elif plan == "rowwise":
        assert reason == f"sm{major}{minor}: per-token activation scales x per-{granularity} weight scales"
    else:
        assert "per-tensor activation scales" in reason and "192707" in reason
        assert ("per-channel weight scales applied to the output" in reason) == (granularity == "channel")


def test_scaled_mm_plan_needs_a_torch_with_the_kernels():
    assert scaled_mm_plan("cuda", (9, 0), "2.4.1", "channel") == (
        None, "torch 2.4.1 has no row-wise torch._scaled_mm for sm90 (needs 2.5+)")
    assert scaled_mm_plan("cuda", (9, 0), "2.5.0", "channel")[0] == "rowwise"
    assert scaled_mm_plan("cuda", (8, 9), "2.6.0+cu124", "tensor")[0] is None
    assert scaled_mm_plan("cuda", (8, 9), "2.7.0", "tensor")[0] == "rowwise"
    assert scaled_mm_plan("cuda", (10, 0), "2.6.0", "tensor")[0] is None
    assert scaled_mm_plan("cuda", (12, 0), "2.4.0", "tensor")[0] is None
    assert scaled_mm_plan("cuda", (12, 1), "2.9.0", "tensor")[0] == "tensorwise"
    # CPU: torch's own kernel, row-wise (fp8_linear's tests run on it); other devices have no plan.
    assert scaled_mm_plan("cpu", None, "2.14.1", "channel")[0] == "rowwise"
    assert scaled_mm_plan("mps", None, "2.14.1", "channel") == (None, "mps device: no FP8 tensor cores")
    with pytest.raises(ValueError, match="granularity"):
        scaled_mm_plan("cuda", (9, 0), "2.14.1", "block")


# Windows: PyTorch builds its CUTLASS row-wise kernels on Linux only (RowwiseScaledMM.cu: BUILD_ROWWISE_FP8_KERNEL
# needs !_WIN32); only cuBLASLt's, on sm90 with torch 2.9+ built with CUDA 12.9+, take row-wise scales there.
WINDOWS_PLANS = [((8, 6), "2.14.1", "13.0", None), ((8, 9), "2.14.1", "13.0", "tensorwise"),
                 ((8, 9), "2.6.0", "12.4", "tensorwise"),     # per-tensor needs no row-wise kernel: 2.5+
                 ((9, 0), "2.14.1", "13.0", "rowwise"), ((9, 0), "2.9.0", "12.9", "rowwise"),
                 ((9, 0), "2.9.0", "12.8", "tensorwise"), ((9, 0), "2.14.1", "12.8", "tensorwise"),
                 ((9, 0), "2.8.0", "12.9", "tensorwise"),
                 ((9, 0), "2.14.1", None, "tensorwise"), ((10, 0), "2.14.1", "13.0", "tensorwise"),
                 ((12, 0), "2.14.1", "13.0", "tensorwise")]


@pytest.mark.parametrize("capability, torch_version, cuda, expected", WINDOWS_PLANS)
def test_scaled_mm_plan_on_windows(capability, torch_version, cuda, expected):
    plan, reason = scaled_mm_plan("cuda", capability, torch_version, "channel", windows=True, cuda_version=cuda)
    assert plan == expected
    if plan == "tensorwise" and capability < (12, 0):
        assert reason.startswith(f"sm{capability[0]}{capability[1]} on Windows: per-tensor activation scales, "
                                 "per-channel weight scales applied to the output (PyTorch builds its row-wise FP8 "
                                 "kernels on Linux only"), reason
        assert ("cuBLAS has them on sm90 with torch 2.9+ built with CUDA 12.9+" in reason) == (capability == (9, 0))
    # Linux: the same GPUs and builds keep the row-wise plan (sm120 keeps its own)
    linux = scaled_mm_plan("cuda", capability, torch_version, "channel", cuda_version=cuda)[0]
    assert linux == (PLANS[capability] if torch_version != "2.6.0" else None)


@pytest.mark.parametrize("message", ["Rowwise scaling is not currently supported on your device",
                                     "Rowwise scaling is not currenlty supported on your device"])   # torch 2.5/2.6
def test_a_torch_without_row_wise_kernels_goes_per_tensor(monkeypatch, caplog, linear_case, message):
    # A build scaled_mm_plan did not foresee (a Windows torch it expects cuBLAS's row-wise kernel in, a source build
    # without CUTLASS): the first product fails as such a torch does, and from then on the device's products take the
    # tensorwise plan: no upcast, no fallback counted, the plan's reason says why.
    scaled_mm, calls = torch._scaled_mm, []

    def without_rowwise(a, b, *, scale_a, scale_b, **kwargs):
        calls.append(scale_a.numel())
        if scale_a.numel() > 1:
            raise RuntimeError(message)
        return scaled_mm(a, b, scale_a=scale_a, scale_b=scale_b, **kwargs)

    rowwise_cpu_plan(monkeypatch)
    monkeypatch.setattr(torch, "_scaled_mm", without_rowwise)
    monkeypatch.setattr(fp8, "_failed", {})
    monkeypatch.setattr(fp8, "fallback_reasons", {})
    x, w, b, ref = linear_case
    q, scale = quantize_weight(w, granularity="channel")
    before = dict(fp8.stats)
    with caplog.at_level(logging.WARNING, logger="skyreels_fp8"):
        ys = [fp8_linear(x, q, scale, b, mode="w8a8") for _ in range(2)]
    assert calls == [x[..., 0].numel(), 1, 1]     # one row-wise try, then per-tensor products
    assert caplog.messages == [f"FP8 products on cpu: this PyTorch has no row-wise FP8 kernel ({message}); "
                               "per-tensor activation scales from now on"]
    assert fp8.stats["w8a8"] - before["w8a8"] == 2 and fp8.stats["fallback"] == before["fallback"]
    assert fp8.fallback_reasons == {} and torch.equal(ys[0], ys[1]) and rel(ys[0], ref) <= 0.05
    for granularity in ("tensor", "channel"):
        plan, reason = fp8_plan.device_plan(torch.device("cpu"), granularity)
        assert plan == "tensorwise" and reason.endswith(f"(this torch: {message})"), reason


def test_device_plan_asks_for_the_capability_once(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: calls.append(device) or (12, 0))
    monkeypatch.setattr(fp8_plan, "_plans", {})
    for _ in range(3):
        assert fp8_plan.device_plan(torch.device("cuda", 1), "channel")[0] == "tensorwise"
    assert calls == [torch.device("cuda", 1)]


NO_TRITON = "Triton not importable (ImportError): no fused activation quantization"
KITCHEN = "; its activations quantized by comfy-kitchen's CUDA kernel, as ComfyUI's own FP8 layers do (Triton not " \
          "importable (ImportError))"


@pytest.mark.parametrize("capability, windows, triton, kitchen, expected", [
    ((8, 6), False, True, True, (False, "GPU compute capability 8.6 has no FP8 tensor cores (needs 8.9+)")),
    ((9, 0), False, False, False, (False, NO_TRITON)),
    # per-token scales: comfy-kitchen quantizes per tensor only, so no FP8 products without Triton
    ((9, 0), False, False, True, (False, NO_TRITON)),
    ((9, 0), False, True, True, (True, None)),
    ((12, 0), False, True, False, (True, scaled_mm_plan("cuda", (12, 0), torch.__version__, "channel")[1])),
    # per-tensor scales: what would make FP8 products here
    ((12, 0), False, False, False, (False, NO_TRITON + "; comfy-kitchen's CUDA kernels are off: ComfyUI turns them off "
                                    "under a PyTorch built for CUDA < 13")),
    ((12, 0), False, False, True, (True, scaled_mm_plan("cuda", (12, 0), torch.__version__, "channel")[1] + KITCHEN)),
    # an RTX 40xx on Windows without triton-windows: per-tensor scales there, quantized by comfy-kitchen
    ((8, 9), True, False, True, (True, scaled_mm_plan("cuda", (8, 9), torch.__version__, "channel", windows=True)[1]
                                 + KITCHEN)),
])
def test_fused_quant_available(monkeypatch, capability, windows, triton, kitchen, expected):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(fp8_plan, "_plans", {})
    monkeypatch.setattr(fp8_plan, "WINDOWS", windows)
    monkeypatch.setattr(fp8_plan.act_quant, "fused_available", lambda: (triton, None if triton else NO_TRITON))
    monkeypatch.setattr(fp8_plan.act_quant, "kitchen_per_tensor", lambda: (lambda x, scale, dtype: None) if kitchen
                        else None)
    ck = pytest.importorskip("comfy_kitchen")
    monkeypatch.setattr(ck, "list_backends", lambda: {"cuda": {"available": True, "disabled": True}})
    assert fp8_plan.fused_quant_available(torch.device("cuda", 0)) == expected
    assert fp8_plan.fused_quant_available(torch.device("cpu")) == (False, "cpu device: no FP8 tensor cores")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_tensorwise_plan_within_5_percent(monkeypatch, linear_case, granularity, dtype):
    # sm120's plan, run on CPU: one activation scale, the per-channel weight scales applied to the output.
    monkeypatch.setattr(fp8, "device_plan", lambda device, granularity: ("tensorwise", "sm120"))
    x, w, b, ref = linear_case
    before = fp8.stats["w8a8"]
    y = fp8_linear(x.to(dtype), *quantize_weight(w, granularity=granularity), b, mode="w8a8")
    assert fp8.stats["w8a8"] == before + 1 and y.dtype == dtype and y.shape == ref.shape
    assert rel(y, ref) <= 0.05


@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_cpu_kernel_without_row_wise_scales_upcasts_and_says_why(monkeypatch, linear_case, granularity):
    # torch 2.11 and older (measured on 2.8.0 and 2.11.0): the CPU _scaled_mm takes one scale per operand and fails
    # an internal assert on row-wise ones ("please report a bug to PyTorch"). Simulated on this torch: fp8 matmul on
    # CPU upcasts, and the reason names torch, not an assert.
    scaled_mm, calls = torch._scaled_mm, []

    def per_tensor_only(a, b, *, scale_a, scale_b, **kwargs):
        calls.append((scale_a.numel(), scale_b.numel()))
        if a.device.type == "cpu" and (scale_a.numel() != 1 or scale_b.numel() != 1):
            raise RuntimeError("(scale_a.numel() == 1 && scale_b.numel() == 1) INTERNAL ASSERT FAILED at "
                               "Blas.cpp:248, please report a bug to PyTorch. Now _scaled_mm only supports "
                               "per-tensor scaling for CPU backend.")
        return scaled_mm(a, b, scale_a=scale_a, scale_b=scale_b, **kwargs)

    monkeypatch.setattr(torch, "_scaled_mm", per_tensor_only)
    monkeypatch.setattr(fp8_plan, "_plans", {})
    monkeypatch.setattr(fp8, "_failed", {})
    monkeypatch.setattr(fp8, "fallback_reasons", {})
    fp8_plan.cpu_rowwise_scales.cache_clear()
    try:
        why = f"cpu: torch {torch.__version__}'s torch._scaled_mm takes no per-token scales on CPU (torch 2.14 does)"
        assert fp8_plan.device_plan(torch.device("cpu"), granularity) == (None, why)
        x, w, b, _ = linear_case
        q, scale = quantize_weight(w, granularity=granularity)
        for _ in range(2):
            y = fp8_linear(x, q, scale, b, mode="w8a8")
        assert torch.equal(y, fp8_linear(x, q, scale, b, mode="upcast"))
        assert fp8.fallback_reasons == {why: 2} and calls == [(16, 16)]    # the probe's one call
    finally:
        fp8_plan.cpu_rowwise_scales.cache_clear()


def test_tensorwise_channel_scales_multiply_in_fp32(monkeypatch):
    # The product's own rounding stands alone: _scaled_mm gives 3.0 everywhere, and each channel's output is
    # 3 x its fp32 scale rounded once to bf16 (the scale rounded to bf16 first was up to 0.4% off, per channel).
    monkeypatch.setattr(fp8, "device_plan", lambda device, granularity: ("tensorwise", "sm120"))
    monkeypatch.setattr(torch, "_scaled_mm", lambda a, b, *, out_dtype, **kwargs: torch.full(
        (a.shape[0], b.shape[1]), 3.0, dtype=out_dtype))
    scale = torch.linspace(0.001, 0.0011, 64)      # fp32 channel scales, most not bf16 values
    y = fp8_linear(torch.randn(8, 32, dtype=torch.bfloat16), torch.zeros(64, 32, dtype=torch.float8_e4m3fn), scale,
                   mode="w8a8")
    assert torch.equal(y, (3.0 * scale).to(torch.bfloat16).expand(8, 64))
    assert not torch.equal(y, (3.0 * scale.to(torch.bfloat16)).expand(8, 64))     # what the rounded scales gave


def test_tensorwise_per_channel_does_not_overflow_fp16(monkeypatch, linear_case):
    # Tiny weights have tiny channel scales: the products before those scales pass fp16's 65504 (here ~1e5).
    monkeypatch.setattr(fp8, "device_plan", lambda device, granularity: ("tensorwise", "sm120"))
    x, w, _, _ = linear_case
    w = w * 1e-4
    y = fp8_linear(x.half(), *quantize_weight(w, granularity="channel"), mode="w8a8")
    assert torch.isfinite(y).all() and rel(y, F.linear(x, w)) <= 0.05


# ---- the CUDA calls, checked by torch's own CUDA rules without a GPU ----
# A FakeTensorMode tensor on device "cuda" runs torch._scaled_mm's meta function, which applies what the CUDA kernel
# demands of its arguments' layout and shapes (row-major activation, column-major weight, K and N multiples of 16,
# fp32 scales of shape (1, 1) or (M, 1) x (1, N)) and refuses operands on two devices. The dtype rules of the CUDA
# kernels are not in the meta function; CUDA_DTYPE_RULES states them (torch's ScaledBlas.cpp). fp8_linear's
# fallback would turn a broken rule into a silent upcast on every GPU, so this is where a bad call shows before a GPU
# runs it. On a GPU runner the same calls run for real (bench/gpu_check.sh); this test asserts no numbers.

def cuda_dtype_rules(xq, w, scale_a, scale_b, bias=None, out_dtype=None, **kwargs):
    """What CUDA's torch._scaled_mm refuses and the meta function lets through."""
    out_dtype = out_dtype or xq.dtype
    if scale_a.numel() > 1:
        assert out_dtype == torch.bfloat16, "Only bf16 high precision output types are supported for row-wise scaling"
    if bias is not None:
        assert out_dtype != torch.float32, "Bias is not supported when out_dtype is set to Float32"
        assert bias.dtype == out_dtype, f"bias {bias.dtype} with {out_dtype} output"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("granularity", ["tensor", "channel"])
@pytest.mark.parametrize("plan", ["rowwise", "tensorwise"])
def test_w8a8_calls_pass_torchs_cuda_checks(monkeypatch, linear_case, plan, granularity, dtype):
    from torch._subclasses.fake_tensor import FakeTensorMode
    monkeypatch.setattr(fp8.act_quant, "fused_available", lambda: (False, "the Triton kernel cannot run on fakes"))
    scaled_mm, calls = torch._scaled_mm, []

    def checked(*args, **kwargs):
        cuda_dtype_rules(*args, **kwargs)
        calls.append(1)
        return scaled_mm(*args, **kwargs)

    monkeypatch.setattr(torch, "_scaled_mm", checked)
    x, w, b, _ = linear_case
    real = (x.to(dtype), *quantize_weight(w, granularity=granularity), b.to(dtype))
    with torch.inference_mode(), FakeTensorMode() as mode:
        x, q, scale, b = (mode.from_tensor(t).to("cuda") for t in real)
        for bias in (None, b):
            y = fp8._w8a8(x, q, scale, bias, plan)
            assert (y.shape, y.dtype, y.device.type) == ((3, 40, 96), dtype, "cuda")
        assert len(calls) == 2
        # The checks are live: a row-major weight (the untransposed qweight) is refused as the CUDA kernel does.
        xq, x_scale = fp8.act_quant.quantize_input(x)
        with pytest.raises(RuntimeError, match="mat2 must be col_major"):
            scaled_mm(xq, q.t().contiguous(), scale_a=x_scale, scale_b=scale.reshape(1, -1), out_dtype=torch.bfloat16)


def quantization_kernel(monkeypatch, error):
    """The Triton quantization kernel, raising `error` on every call (and whether triton is installed or not)."""
    calls = []

    def failing(*a, **k):
        calls.append(1)
        raise error

    monkeypatch.setattr(fp8.act_quant, "_use_fused", lambda x: True)
    monkeypatch.setitem(sys.modules, "quant.act_quant_triton", types.SimpleNamespace(quantize_rows=failing))
    rowwise_cpu_plan(monkeypatch)
    monkeypatch.setattr(fp8, "_failed", {})
    monkeypatch.setattr(fp8, "fallback_reasons", {})
    return calls


@pytest.mark.parametrize("error, named", [
    # triton-windows' own ptxas.exe failing to start (0xC0000142, a DLL it cannot load), as reported from ComfyUI
    (subprocess.CalledProcessError(3221225794, ["ptxas.exe", "--version"]),
     "CalledProcessError: Command '['ptxas.exe', '--version']' returned non-zero exit status 3221225794."),
    (ValueError(""), "ValueError: no message"),
], ids=["ptxas fails to start", "no message"])
def test_a_triton_kernel_that_fails_to_compile_means_upcast(monkeypatch, linear_case, error, named):
    # The kernel compiles on the first call of each specialization; that fails in ways that are no RuntimeError
    # (Triton's CompilationError, a ptxas or C compiler that cannot run: common with triton-windows). fp8 matmul
    # then upcasts, says why once, and does not try the kernel again.
    calls = quantization_kernel(monkeypatch, error)
    x, w, b, _ = linear_case
    q, scale = quantize_weight(w, granularity="channel")
    ys = [fp8_linear(x, q, scale, b, mode="w8a8") for _ in range(3)]
    assert len(calls) == 1 and all(torch.equal(y, fp8_linear(x, q, scale, b, mode="upcast")) for y in ys)
    assert fp8.fallback_reasons == {f"the Triton activation quantization failed ({named})": 3}


OUT_OF_MEMORY = [torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.41 GiB"),
                 RuntimeError("Triton Error [CUDA]: out of memory")]   # no OutOfMemoryError, as ComfyUI's is_oom knows


@pytest.mark.parametrize("error", OUT_OF_MEMORY, ids=["OutOfMemoryError", "message"])
@pytest.mark.parametrize("where", ["quantization kernel", "product"])
def test_out_of_memory_in_an_fp8_product_goes_up_and_turns_nothing_off(monkeypatch, linear_case, error, where):
    # Not a missing kernel: ComfyUI's execution frees models on an OOM and says so; the next run may fit.
    def out_of_memory(*a, **k):
        raise error

    if where == "product":
        rowwise_cpu_plan(monkeypatch)
        monkeypatch.setattr(fp8, "_failed", {})
        monkeypatch.setattr(fp8, "fallback_reasons", {})
        monkeypatch.setattr(fp8, "_w8a8", out_of_memory)
    else:
        quantization_kernel(monkeypatch, error)
    x, w, b, _ = linear_case
    q, scale = quantize_weight(w, granularity="channel")
    with pytest.raises(type(error), match="out of memory"):
        fp8_linear(x, q, scale, b, mode="w8a8")
    assert fp8._failed == {} and fp8.fallback_reasons == {}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_dequantize_an_empty_weight(dtype):
    # 0 rows (the CPU's row blocks read the size of row 0) as the whole-tensor form did: an empty result
    q = torch.zeros(0, 8, dtype=torch.float8_e4m3fn)
    for scale in (torch.ones(1), torch.ones(0, 1)):
        w = dequantize_weight(q, scale, dtype)
        assert w.shape == (0, 8) and w.dtype == dtype


@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_relative_error_works_in_row_blocks(monkeypatch, granularity):
    # convert_to_fp8.py --verify: measured before, three whole fp32 copies (the weight, its dequantization and their
    # difference: 811 MiB for one 14B FFN weight of 135 MiB in bf16). Bound: three blocks' fp32 copies (64 rows
    # here: a block's two, and one of the block before, freed as the next is made), against 16 blocks per copy.
    from test_act_quant import peak_extra_bytes
    w = torch.randn(1024, 512, generator=torch.Generator().manual_seed(0)).bfloat16()
    q, scale = quantize_weight(w, granularity=granularity)
    whole = ((w.float() - q.float() * scale.float()).norm() / w.float().norm()).item()
    monkeypatch.setattr(fp8, "DEQUANTIZE_VALUES", 64 * 512, raising=False)
    peak, err = peak_extra_bytes(lambda: relative_error(w, q, scale))
    assert peak <= 3 * 4 * 64 * 512 + 4096, peak / w.nbytes
    # by blocks vs one fp32 norm of 2^19 values: summation order only (measured 2.7e-5; test_chunked_equals_whole too)
    assert err == pytest.approx(whole, rel=1e-4)
    assert relative_error(torch.zeros(4, 8), *quantize_weight(torch.zeros(4, 8))[:2]) == 0.0


@pytest.mark.parametrize("granularity", ["tensor", "channel"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dequantize_makes_one_copy_of_the_weight(monkeypatch, granularity, dtype):
    # fp8_linear's upcast (every product where fp8 matmul falls back), the host's cast of our FP8 layers (a LoRA
    # applied on the fly, low-VRAM offload) and FP8 files loaded as bf16 go through this. Measured before: 2x the
    # result's bytes in fp32, 4x in bf16: whole fp32 copies of the weight. Then 5x in bf16 on the CPU, by a meter
    # that sees every allocation: the CPU's multiply of a bf16 tensor by an fp32 one converted both to whole fp32
    # copies (a CUDA kernel converts as it reads). Bound: the result and one block's fp32 copy (64 rows here).
    from test_act_quant import peak_extra_bytes
    monkeypatch.setattr(fp8, "DEQUANTIZE_VALUES", 64 * 512, raising=False)
    q, scale = quantize_weight(torch.randn(1024, 512, generator=torch.Generator().manual_seed(0)), granularity=granularity)
    peak, w = peak_extra_bytes(lambda: dequantize_weight(q, scale, dtype))
    assert w.dtype == dtype and peak <= w.nbytes + 4 * 64 * 512 + 4096, peak / w.nbytes
    assert torch.equal(w, (q.float() * scale.float()).to(dtype))     # the fp32 product, rounded once
    # One rounding on every device: the multiply's type promotion, which decides what a kernel computes in, is fp32.
    # (A 0-d fp32 scale promotes to bf16/fp16; CUDA then rounds the scale first. The CPU reads it as a float
    # scalar, so the values above cannot show it.)
    assert set(multiply_dtypes(lambda: dequantize_weight(q, scale, dtype))) == {torch.float32}


def multiply_dtypes(fn):
    """The result types torch's promotion gives every multiply fn makes."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Seen(TorchDispatchMode):
        types = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func in (torch.ops.aten.mul.Tensor, torch.ops.aten.mul_.Tensor):
                self.types.append(torch.result_type(args[0], args[1]))
            return func(*args, **(kwargs or {}))

    with Seen() as seen:
        fn()
    return seen.types


@pytest.mark.parametrize("host, device, plan, products, asked, expected", [
    (torch.float16, "cuda", "rowwise", True, False, torch.bfloat16),      # an H100 / RTX 40xx: no cast of each product
    (torch.float16, "cuda", "tensorwise", True, False, torch.bfloat16),   # an RTX 50xx: written in bf16 too
    (torch.float16, "cuda", "rowwise", True, True, torch.float16),        # --force-fp16 and the like: the user's
    (torch.float16, "cuda", "rowwise", False, False, torch.float16),      # compute: upcast keeps the host's choice
    (torch.float16, "cuda", None, True, False, torch.float16),            # fp8 matmul forced on an RTX 30xx: upcast
    (torch.float32, "cuda", "rowwise", True, False, torch.float32),       # an fp32 choice stays
    (torch.float32, "cpu", "rowwise", True, False, torch.float32),        # the CPU's products are written in x.dtype
])
def test_compute_dtype_is_bf16_where_products_run_in_fp8_on_cuda(host, device, plan, products, asked, expected):
    assert fp8_plan.compute_dtype(host, device, plan, products, asked) == expected
