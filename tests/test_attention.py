import contextlib
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from helpers import REPO

import attention.dispatch as dispatch
import attention.sage as sage
from attention.reference import sage_attention_reference
from attention.sage import sage_attention
from attention.reference import to_hnd
from attention.sage import KernelsUnavailable, agreement


def exact_attention(q, k, v, *, layout="HND"):
    """PyTorch SDPA in the given layout (the reference every other path is compared with)."""
    qh, kh, vh = (to_hnd(t, layout) for t in (q, k, v))
    out = F.scaled_dot_product_attention(qh, kh, vh)
    return out if layout == "HND" else out.transpose(1, 2)


def make(shape_l, lk, d, layout="HND", dtype=torch.float16, heads=2, seed=0, k_offset=0.0, scale=1.0):
    g = torch.Generator().manual_seed(seed)

    def t(n):
        shp = (1, heads, n, d) if layout == "HND" else (1, n, heads, d)
        return torch.randn(shp, generator=g)

    q, k, v = t(shape_l) * scale, t(lk), t(lk)
    if k_offset:  # a large per-channel offset shared by all tokens: what K smoothing removes
        off = torch.randn(d, generator=g) * k_offset
        k = k + off
    return q.to(dtype), k.to(dtype), v.to(dtype)


def compare(q, k, v, *, layout="HND", mode="auto"):
    """agreement of sage_attention with exact attention (in fp32) on these inputs."""
    a = sage_attention(q, k, v, layout=layout, mode=mode)
    return agreement(a, exact_attention(q.float(), k.float(), v.float(), layout=layout))


# ---- our PyTorch SageAttention against the real sageattention Triton kernels (CPU interpreter) ----

KERNEL_CASES = {  # name: (queries, keys, head dim, layout, dtype)
    "d64_hnd_fp16": (128, 128, 64, "HND", torch.float16),
    "d128_nhd_bf16": (200, 256, 128, "NHD", torch.bfloat16),
    "d128_hnd_fp16_offsets": (130, 192, 128, "HND", torch.float16),
    "ragged_257": (128, 257, 128, "HND", torch.float16),
}


@pytest.fixture(scope="module")
def kernel_outputs(tmp_path_factory):
    pytest.importorskip("sageattention", reason="the kernel comparisons need sageattention==1.0.6 (CI installs it)")
    folder = tmp_path_factory.mktemp("kernels")
    cases = {}
    for i, (name, (nq, nk, d, layout, dtype)) in enumerate(KERNEL_CASES.items()):
        q, k, v = make(nq, nk, d, layout, dtype, seed=i, k_offset=8.0 if "offsets" in name else 0.0)
        cases[name] = dict(q=q, k=k, v=v, layout=layout, is_causal=False, sm_scale=None)
    torch.save(cases, folder / "cases.pt")
    subprocess.run([sys.executable, os.path.join(REPO, "tests", "kernel_outputs.py"), str(folder / "cases.pt"),
                    str(folder / "out.pt")], check=True, timeout=600)
    return cases, torch.load(folder / "out.pt")


@pytest.mark.parametrize("name", [n for n in KERNEL_CASES if n != "ragged_257"])
def test_reference_agrees_with_the_triton_kernels(kernel_outputs, name):
    cases, outputs = kernel_outputs
    c = cases[name]
    ours = sage_attention_reference(c["q"], c["k"], c["v"], layout=c["layout"])
    theirs = outputs[name]
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    # Same algorithm; they differ only in where fp16 rounds (the kernel rounds each 64-key P.V block to fp16 and
    # rescales online). Bound: 1% of the output norm, and max error a few fp16/bf16 ulps of values of size ~3.
    diff = (ours.float() - theirs.float())
    assert diff.norm() / theirs.float().norm() <= 0.01
    assert diff.abs().max() <= (0.04 if c["q"].dtype == torch.bfloat16 else 0.02)


def test_kernel_padding_bug_at_257_keys_and_our_fix(kernel_outputs):
    cases, outputs = kernel_outputs
    c = cases["ragged_257"]
    exact = exact_attention(c["q"].float(), c["k"].float(), c["v"].float())
    kernel_err = ((outputs["ragged_257"].float() - exact).norm() / exact.norm()).item()
    ours = sage_attention_reference(c["q"], c["k"], c["v"]).float()
    ours_err = ((ours - exact).norm() / exact.norm()).item()
    assert kernel_err > 0.05 and ours_err < 0.02, (kernel_err, ours_err)


# ---- against exact attention ----

@pytest.mark.parametrize("layout", ["HND", "NHD"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("inputs", ["gaussian", "k_offsets", "ragged_257"])
def test_cosine_against_exact_attention(layout, dtype, d, inputs):
    nq, nk = (256, 257) if inputs == "ragged_257" else (300, 320)
    q, k, v = make(nq, nk, d, layout, dtype, k_offset=20.0 if inputs == "k_offsets" else 0.0)
    r = compare(q, k, v, layout=layout, mode="reference")
    assert r["cosine"] >= 0.999, r


def test_fp32_inputs():
    q, k, v = make(128, 128, 64, dtype=torch.float32)
    r = compare(q, k, v, mode="reference")
    assert r["cosine"] >= 0.999
    assert sage_attention(q, k, v, mode="reference").dtype == torch.float32


def test_memory_is_chunked(monkeypatch):
    # With a tiny score budget the result must not change: chunks of heads and query rows are independent.
    q, k, v = make(384, 256, 64, heads=3)
    whole = sage_attention_reference(q, k, v)
    monkeypatch.setattr("attention.reference.CHUNK_BYTES", 4 * 256 * 128)
    assert torch.equal(sage_attention_reference(q, k, v), whole)


def test_working_memory_is_one_head_groups_not_the_inputs(monkeypatch):
    # Patch SageAttention's "reference" mode on a GPU: at 51,000 tokens x 40 heads, fp32/int8 working copies of the
    # whole q, k and v were 13x q's bf16 bytes (measured), about 6 GiB beside the score chunks. Groups of heads are
    # quantized one after another (one head at this score budget): measured 1.86x, mostly the score chunk's
    # temporaries. The meter counts the tensors torch's ops allocate.
    from test_act_quant import peak_extra_bytes
    monkeypatch.setattr("attention.reference.CHUNK_BYTES", 4 * 2048 * 256)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2048, 12, 128, generator=g).bfloat16() for _ in range(3))
    peak, out = peak_extra_bytes(lambda: sage_attention_reference(q, k, v, layout="NHD"))
    assert peak - out.nbytes <= 2.5 * q.nbytes, (peak - out.nbytes) / q.nbytes


@pytest.mark.parametrize("mode", ["auto", "sageattention", "sageattn", "reference"])
def test_inputs_are_never_modified(mode):
    q, k, v = make(128, 200, 128, k_offset=5.0)
    before = [t.clone() for t in (q, k, v)]
    kernels(q, k, v, mode=mode)
    assert all(torch.equal(a, b) for a, b in zip(before, (q, k, v)))


def test_zero_blocks_give_no_nan():
    q, k, v = make(128, 128, 64)
    q[:, :, :128] = 0
    out = sage_attention_reference(q, k, v)
    assert torch.isfinite(out.float()).all()


# ---- fallbacks: each path taken, each logged once ----

def kernels(q, k, v, mode="sageattention"):
    """sage_attention with the kernels, or None where they cannot run (the caller then keeps attention exact)."""
    with contextlib.suppress(KernelsUnavailable):
        return sage_attention(q, k, v, mode=mode)
    return None


def test_no_gpu_raises_kernels_unavailable():
    q, k, v = make(64, 64, 64)
    for mode in ("sageattn", "auto"):
        with pytest.raises(KernelsUnavailable, match="cpu device"):
            sage_attention(q, k, v, mode=mode)


def test_missing_package_is_named(monkeypatch):
    monkeypatch.setattr(sage, "installed_packages", lambda: (None, True))
    assert sage.kernel_unavailable(torch.device("cpu")) == "No module named 'sageattention' (pip install sageattention)"
    with pytest.raises(KernelsUnavailable, match="pip install sageattention"):
        sage_attention(*make(64, 64, 64))


def test_what_is_installed_is_probed_once_not_per_call(monkeypatch):
    kernels(*make(64, 64, 64))  # the first call may probe (cached per process)
    probes = []
    monkeypatch.setattr(dispatch.importlib.util, "find_spec", lambda *a: probes.append(a))
    monkeypatch.setattr(dispatch.importlib.metadata, "version", lambda *a: probes.append(a))
    for mode in ("auto", "sageattention", "sageattn"):
        kernels(*make(64, 64, 64), mode=mode)
    assert probes == []


def test_bad_arguments():
    q, k, v = make(64, 64, 64)
    with pytest.raises(ValueError, match="layout must be"):
        sage_attention(q, k, v, layout="BHSD", mode="reference")
    with pytest.raises(ValueError, match="mode must be"):
        sage_attention(q, k, v, mode="fast")
    with pytest.raises(TypeError, match="fp32/bf16/fp16"):
        sage_attention(q.to(torch.float64), k, v)


@pytest.mark.parametrize("version,capability,miscounts", [("1.0.6", (8, 9), True), ("2.2.0", (8, 6), True),
                                                           ("2.2.0", (8, 9), False), ("2.2.0", (9, 0), False)])
def test_ragged_keys_go_exact_where_the_installed_kernels_miscount_padding(monkeypatch, version, capability,
                                                                           miscounts):
    # 1.x's kernels everywhere, and 2.x's Triton kernel on sm86, count a ragged last 64-key block's padding
    # (test_kernel_padding_bug_at_257_keys_and_our_fix); calls of whole blocks, or of 16384+ keys, keep the kernels.
    monkeypatch.setattr(sage, "installed_packages", lambda: (version, True))
    monkeypatch.setattr(sage, "device_capability", lambda device: capability)
    cuda = torch.device("cuda")
    assert (sage.miscounted_padding(257, cuda) is not None) == miscounts
    assert sage.miscounted_padding(256, cuda) is None and sage.miscounted_padding(16385, cuda) is None


def test_the_kernels_get_head_dims_of_unit_stride(monkeypatch):
    # sageattention's kernels index the head dim without its stride: a transposed view would read the wrong values.
    seen = []
    monkeypatch.setattr(sage, "_kernel", lambda q, k, v, **kw: (seen.append([t.stride(-1) for t in (q, k, v)]), q)[1])
    monkeypatch.setattr(sage, "installed_packages", lambda: ("2.2.0", True))
    q = torch.randn(1, 2, 64, 128).half().transpose(-1, -2)     # [1, 2, 128, 64], stride(-1) 128
    sage._kernel_call(q, q, q, "HND")
    assert seen == [[1, 1, 1]]


def test_kernel_wrapper_with_the_real_kernels(monkeypatch, tmp_path):
    """Our CUDA-path wrapper (K smoothing out of place, head-dim padding, smooth_k=False) calling the installed
    sageattention 1.0.6 `sageattn` itself, its Triton kernels under the interpreter, in a subprocess. On a GPU the
    same call runs the compiled kernels (bench/gpu_check.sh)."""
    pytest.importorskip("sageattention", reason="needs sageattention==1.0.6 (CI installs it)")
    script = tmp_path / "wrapper.py"
    script.write_text(f"""
import json, os, sys
os.environ["TRITON_INTERPRET"] = "1"
sys.path[:0] = [{REPO!r}]
import torch
# sageattn checks q.is_cuda before anything else; under the interpreter its kernels run on CPU tensors.
torch.Tensor.is_cuda = property(lambda self: True)
import attention.sage as sage
from sageattention import sageattn

smooth_k = []
def spy(*args, **kwargs):
    smooth_k.append(kwargs["smooth_k"])
    return sageattn(*args, **kwargs)

sage._kernel = spy
g = torch.Generator().manual_seed(0)
res = {{}}
for d in (48, 64, 80, 128):
    q, k, v = (torch.randn(1, 2, 128, d, generator=g).half() for _ in range(3))
    k += 4
    before = k.clone()
    out = sage._kernel_call(q, k, v, "HND")
    ref = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float())
    cos = torch.nn.functional.cosine_similarity(out.float().flatten(), ref.flatten(), dim=0).item()
    res[d] = (list(out.shape), cos, torch.equal(k, before))
assert smooth_k == [False] * 4, smooth_k    # our wrapper smooths K itself, out of place
print(json.dumps(res))
""")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    for d, (shape, cos, unchanged) in res.items():
        assert shape == [1, 2, 128, int(d)] and cos >= 0.999 and unchanged, (d, shape, cos, unchanged)


def test_importing_the_cores_loads_no_kernels_and_no_cuda():
    code = ("import sys, torch, quant, attention; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('sageattention', 'triton')), "
            "torch.cuda.is_initialized())")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[] False"


def test_missing_triton_is_named(monkeypatch):
    monkeypatch.setattr(sage, "installed_packages", lambda: ("1.0.6", False))
    assert sage.kernel_unavailable(torch.device("cpu")).startswith("No module named 'triton'")


def test_a_failing_kernel_is_not_retried(monkeypatch):
    monkeypatch.setattr(sage, "_broken", None)
    calls = []

    def broken_kernel(*a, **k):
        calls.append(1)
        raise ImportError("triton: no GPU driver")

    monkeypatch.setattr(sage, "_kernel", broken_kernel)
    monkeypatch.setattr(sage, "kernel_unavailable", lambda device: sage._broken)  # as if on a capable GPU
    q, k, v = make(64, 64, 64)
    why = "the sageattention kernels failed (ImportError: triton: no GPU driver)"
    for _ in range(2):
        with pytest.raises(KernelsUnavailable) as raised:
            sage_attention(q, k, v)
        assert str(raised.value) == why
    assert len(calls) == 1


# torch >= 2.8 raises CUDA runtime errors as AcceleratorError, older torch as RuntimeError
CUDA_ERROR = getattr(torch, "AcceleratorError", RuntimeError)


@pytest.mark.parametrize("error, goes_up", [
    (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), True),
    (CUDA_ERROR("CUDA error: out of memory"), True),
    # A sageattention wheel built without this GPU's architecture: the kernels cannot run here, fall back.
    (CUDA_ERROR("CUDA error: no kernel image is available for execution on the device"), False),
], ids=["OutOfMemoryError", "CUDA out of memory", "no kernel image"])
def test_out_of_memory_in_the_kernel_goes_up_and_turns_nothing_off(monkeypatch, error, goes_up):
    # Out of memory is no broken kernel: ComfyUI's execution frees models on an OOM and says so; the next run may
    # fit, and must still get the kernels (one OOM at a long video used to turn them off until ComfyUI restarted).
    monkeypatch.setattr(sage, "_broken", None)

    def failing(*a, **k):
        raise error

    monkeypatch.setattr(sage, "_kernel", failing)
    monkeypatch.setattr(sage, "kernel_unavailable", lambda device: sage._broken)  # as if on a capable GPU
    q, k, v = make(64, 64, 64)
    if goes_up:
        with pytest.raises(type(error), match="out of memory"):
            sage_attention(q, k, v)
        assert sage._broken is None
    else:
        assert kernels(q, k, v) is None
        assert sage._broken == f"the sageattention kernels failed ({type(error).__name__}: {error})"
