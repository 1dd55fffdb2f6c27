import logging

import pytest
import torch
import torch.nn.functional as F

from quant import dequantize_weight, fp8_linear, quantize_weight, quantize_weight_chunked
from quant.fp8 import relative_error

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
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 40, 128, generator=g)
    w = torch.randn(96, 128, generator=g) / 128 ** 0.5
    b = torch.randn(96, generator=g) * 0.1
    return x, w, b, F.linear(x, w, b)


@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_fp8_linear_upcast_within_3_5_percent(linear_case, granularity):
    x, w, b, ref = linear_case
    y = fp8_linear(x, *quantize_weight(w, granularity=granularity), b, mode="upcast")
    assert y.shape == ref.shape and y.dtype == x.dtype
    assert rel(y, ref) <= 0.035


@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_fp8_linear_w8a8_within_5_percent_and_matches_its_own_math(linear_case, granularity):
    x, w, b, ref = linear_case
    q, scale = quantize_weight(w, granularity=granularity)
    y = fp8_linear(x, q, scale, b, mode="w8a8")
    assert y.shape == ref.shape and y.dtype == x.dtype
    assert rel(y, ref) <= 0.05  # weight and activation rounding, ~2.6% each, add in quadrature
    # The same product written out: per-token activation scale (row absmax / 448) times the weight scales.
    x2 = x.reshape(-1, 128)
    xs = x2.abs().amax(1, keepdim=True) / 448
    manual = (x2 / xs).to(E4M3).float() * xs @ (q.float() * scale).t() + b
    assert rel(y.reshape(-1, 96), manual) <= 1e-5


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


def test_w8a8_falls_back_to_upcast_and_logs_once(caplog):
    x = torch.randn(4, 24)  # 24 is not a multiple of 16: _scaled_mm cannot take it
    w = torch.randn(8, 24)
    q, scale = quantize_weight(w)
    with caplog.at_level(logging.WARNING, logger="skyreels_fp8"):
        y1 = fp8_linear(x, q, scale, mode="w8a8")
        y2 = fp8_linear(x, q, scale, mode="w8a8")
    assert torch.equal(y1, fp8_linear(x, q, scale, mode="upcast")) and torch.equal(y1, y2)
    msgs = [r.getMessage() for r in caplog.records if "not a multiple of 16" in r.getMessage()]
    assert len(msgs) == 1 and "using upcast" in msgs[0]


def test_chunked_quantization_leaves_an_fp32_weight_alone(weight):
    before = weight.clone()
    quantize_weight_chunked(weight, chunk=4096)
    quantize_weight_chunked(weight, granularity="channel", chunk=4096)
    assert torch.equal(weight, before)


def test_a_failing_scaled_mm_is_not_retried(monkeypatch, caplog):
    import quant.fp8 as fp8

    calls = []

    def broken(*a, **k):
        calls.append(1)
        raise RuntimeError("no kernel for this dtype pair\nmore")

    monkeypatch.setattr(fp8, "_w8a8", broken)
    monkeypatch.setattr(fp8, "_failed", {})
    x, (q, scale) = torch.randn(4, 32), quantize_weight(torch.randn(16, 32), dtype=E5M2)
    with caplog.at_level(logging.WARNING, logger="skyreels_fp8"):
        for _ in range(3):
            y = fp8_linear(x, q, scale, mode="w8a8")
    assert len(calls) == 1 and torch.equal(y, fp8_linear(x, q, scale, mode="upcast"))
    assert [r.getMessage() for r in caplog.records] == [
        "fp8 matmul unavailable (torch._scaled_mm failed: no kernel for this dtype pair); using upcast"]
