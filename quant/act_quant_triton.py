"""Triton kernel for per-token FP8 (e4m3fn) activation quantization: one pass over a [M, K] activation writes the
FP8 values and one fp32 scale per row, or uses a given per-tensor scale. Imported only for CUDA activations (the quant
package must not import triton at load); the tests run it under TRITON_INTERPRET=1 against act_quant.py's eager code."""
import functools

import torch
import triton
import triton.language as tl

E4M3_MAX = tl.constexpr(448.0)
# Values one program holds: rows up to this long are read once and kept in registers for both the absmax and the
# cast; longer rows are read twice (the second read mostly from L2). On an H200 (2026-12-04, bench/act_quant.py
# --sweep) 4096 ran 2.2-2.8x faster than holding whole rows (16384): 1922-2143 GB/s against 666-862 at the 1.3B
# model's 102,000 x 1536 and x 8960 activations.
MAX_TILE = 4096


@triton.jit
def _round_e4m3(v):
    # Rounds v (|v| <= 448) to the nearest e4m3fn value, ties to even, in fp32, so that the final cast only converts
    # exact values: the interpreter's own fp32 -> fp8 rounding (which the tests run) loses carries into the exponent
    # (125.0 -> 64.0) and breaks ties away from zero. A GPU's cast rounds as this does, so it costs a few integer ops.
    bits = v.to(tl.int32, bitcast=True)
    exponent = ((bits >> 23) & 0xFF) - 127
    # e4m3fn keeps 3 mantissa bits; below 2^-6 (its subnormals) the step stays 2^-9.
    step_exponent = tl.maximum(exponent, -6) - 3
    # v + c lies in the binade of c = 1.5 * 2^23 * step, whose ulp is step: the fp32 add rounds v to a multiple of
    # step (ties to even), and the subtraction is exact.
    c = (((step_exponent + 23 + 127) << 23) | 0x400000).to(tl.float32, bitcast=True)
    r = (v + c) - c
    # The add and subtract turn -0.0 and negatives rounded to zero into +0.0: restore the sign bit, as a cast keeps.
    # With bit operations: Triton 3.6 (torch 2.11 brings it) and older compile a float's unary minus as 0 - x, which
    # loses the sign of zero.
    sign = (bits >> 31) << 31
    return (tl.abs(r).to(tl.int32, bitcast=True) | sign).to(tl.float32, bitcast=True)


@triton.jit
def _to_e4m3(x, scale, GPU_ROUND: tl.constexpr):
    v = tl.div_rn(x, scale)  # correctly rounded, as torch's division (Triton's `/` may be approximate)
    # Clamp before the cast: e4m3fn has no Inf, so an overflow would become NaN.
    v = tl.clamp(v, -E4M3_MAX, E4M3_MAX, propagate_nan=tl.PropagateNan.ALL)
    if GPU_ROUND:   # the GPU's own conversion, one instruction for two values (not the interpreter's: see above)
        return v.to(tl.float8e4nv)
    return _round_e4m3(v).to(tl.float8e4nv)


@triton.jit
def _row_quant_kernel(x_ptr, q_ptr, s_ptr, M, K, stride_xm, stride_qm, BLOCK_M: tl.constexpr,
                      BLOCK_K: tl.constexpr, ONE_TILE: tl.constexpr, GIVEN_SCALE: tl.constexpr,
                      GPU_ROUND: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    x_rows = x_ptr + rows.to(tl.int64)[:, None] * stride_xm  # int64: M * K may pass 2^31
    q_rows = q_ptr + rows.to(tl.int64)[:, None] * stride_qm
    cols = tl.arange(0, BLOCK_K)[None, :]
    if ONE_TILE:
        mask = row_ok[:, None] & (cols < K)
        x = tl.load(x_rows + cols, mask=mask, other=0.0).to(tl.float32)
        amax = tl.max(tl.abs(x), axis=1)
    else:
        amax = tl.zeros([BLOCK_M], dtype=tl.float32)
        if not GIVEN_SCALE:
            for k0 in range(0, K, BLOCK_K):
                mask = row_ok[:, None] & (cols + k0 < K)
                x = tl.load(x_rows + k0 + cols, mask=mask, other=0.0).to(tl.float32)
                amax = tl.maximum(amax, tl.max(tl.abs(x), axis=1))
    if GIVEN_SCALE:
        scale = tl.load(s_ptr)
    else:
        row_scale = tl.div_rn(amax, E4M3_MAX)
        row_scale = tl.where(row_scale > 0, row_scale, 1.0)  # all-zero rows: 0 / 1 stays 0
        tl.store(s_ptr + rows, row_scale, mask=row_ok)
        scale = row_scale[:, None]
    if ONE_TILE:
        tl.store(q_rows + cols, _to_e4m3(x, scale, GPU_ROUND), mask=mask)
    else:
        for k0 in range(0, K, BLOCK_K):
            mask = row_ok[:, None] & (cols + k0 < K)
            x = tl.load(x_rows + k0 + cols, mask=mask, other=0.0).to(tl.float32)
            tl.store(q_rows + k0 + cols, _to_e4m3(x, scale, GPU_ROUND), mask=mask)


@functools.cache
def rounds_once(device):
    """Whether Triton converts fp32 to e4m3 in one correctly rounded step on `device`: on NVIDIA GPUs of compute
    capability 9.0+. Below that, upstream Triton goes through fp16 first (two roundings: 0.4% of values one step
    off, read in its ElementwiseOpToLLVM.cpp, useFP16IntermediateSrc), so the software rounding runs there."""
    return device.type == "cuda" and torch.version.hip is None and torch.cuda.get_device_capability(device) >= (9, 0)


def quantize_rows(x, scale=None, max_tile=MAX_TILE, num_warps=8, gpu_round=None):
    """x [M, K] (fp32/bf16/fp16, any row stride) -> (q float8_e4m3fn, scale [M, 1] fp32, or the given one-value one).
    gpu_round: the GPU's own fp8 conversion instead of _round_e4m3 (default: where it rounds once, rounds_once). On
    an H200 it gave the same bits on 1.1 billion values and ran 1.1-1.3x faster; the interpreter (the tests, CPU
    tensors) cannot run it, its own conversion rounds wrongly. bench/act_quant.py --sweep times these settings on a
    GPU, each checked bit for bit against the software rounding."""
    gpu_round = rounds_once(x.device) if gpu_round is None else gpu_round
    x = x if x.stride(1) == 1 else x.contiguous()
    m, k = x.shape
    q = torch.empty((m, k), dtype=torch.float8_e4m3fn, device=x.device)
    given = scale is not None
    s = scale if given else torch.empty((m, 1), dtype=torch.float32, device=x.device)
    if m == 0 or k == 0:
        return q, (s if given else s.fill_(1.0))
    block_k = min(triton.next_power_of_2(k), max_tile)
    block_m = min(max(1, max_tile // block_k), triton.next_power_of_2(m))
    _row_quant_kernel[(triton.cdiv(m, block_m),)](x, q, s, m, k, x.stride(0), q.stride(0), BLOCK_M=block_m,
                                                  BLOCK_K=block_k, ONE_TILE=block_k >= k, GIVEN_SCALE=given,
                                                  GPU_ROUND=gpu_round, num_warps=num_warps)
    return q, s
