"""SageAttention (v1) in plain PyTorch: the algorithm of the `sageattention` 1.0.6 Triton kernels, on any device.
K is smoothed (its mean over tokens subtracted: each query's scores shift by a constant, softmax is unchanged); Q
(with 1/sqrt(head dim) * log2(e) folded in) and K are quantized to INT8 per block of 128 and 64 tokens (scale =
absmax / 127, round half away from zero); QK^T is exact (INT8 products summed in fp32: |sum| <= 127 * 127 * 128 <
2^24); softmax in fp32, base 2 as the kernel; P and V rounded to fp16, their product accumulated in fp32. Queries go
in chunks: memory O(chunk * L), not O(L^2)."""
import torch

LOG2E = 1.4426950408889634
BLOCK_Q, BLOCK_K = 128, 64
CHUNK_BYTES = 256 * 1024 * 1024  # score buffer per chunk


def to_hnd(x, layout):
    if layout not in ("HND", "NHD"):
        raise ValueError(f"layout must be 'HND' or 'NHD', not {layout!r}")
    return x if layout == "HND" else x.transpose(1, 2)


def quantize_blocks(x, block):
    """INT8 values (as fp32) and per-block scales of x [..., L, D], blocks of `block` tokens."""
    *lead, n, d = x.shape
    pad = (-n) % block
    xp = torch.nn.functional.pad(x, (0, 0, 0, pad)).reshape(*lead, -1, block, d)
    scale = xp.abs().amax(dim=(-2, -1), keepdim=True) / 127.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero block stays zero, not NaN
    scaled = xp / scale
    q = torch.trunc(scaled + 0.5 * torch.where(scaled >= 0, 1.0, -1.0))
    q = q.reshape(*lead, -1, d)[..., :n, :]
    per_token = scale.expand(*lead, scale.shape[-3], block, 1).reshape(*lead, -1, 1)[..., :n, :]
    return q, per_token


def sage_attention_reference(q, k, v, *, layout="HND"):
    """Same shape and dtype as q. Inputs are never modified. Each group of heads is quantized and attended before
    the next, so the fp32 working copies are a group's (at 51,000 tokens one head's), not the whole input's."""
    qh, kh, vh = (to_hnd(t, layout) for t in (q, k, v))
    b, h, nq, d = qh.shape
    nk = kh.shape[2]
    out = torch.empty(b, h, nq, d, dtype=q.dtype, device=q.device)
    # Groups of heads x query rows sized to CHUNK_BYTES of scores.
    rows = min(nq, max(BLOCK_Q, CHUNK_BYTES // (4 * nk) // BLOCK_Q * BLOCK_Q))
    heads = max(1, CHUNK_BYTES // (4 * nk * rows))
    for i in range(b):
        for g in range(0, h, heads):
            kf = kh[i, g:g + heads].float()
            q_int, q_scale = quantize_blocks(qh[i, g:g + heads].float() * (d ** -0.5 * LOG2E), BLOCK_Q)
            k_int, k_scale = quantize_blocks(kf - kf.mean(dim=1, keepdim=True), BLOCK_K)
            del kf
            k_t, k_scale_row = k_int.transpose(1, 2), k_scale.transpose(1, 2)
            v16 = vh[i, g:g + heads].to(torch.float16).float()
            for start in range(0, nq, rows):
                rs = slice(start, start + rows)
                scores = (q_int[:, rs] @ k_t) * q_scale[:, rs] * k_scale_row
                scores = torch.exp2(scores - scores.amax(dim=-1, keepdim=True))
                denom = scores.sum(dim=-1, keepdim=True)
                pv = scores.to(torch.float16).float() @ v16
                out[i, g:g + heads, rs] = (pv / denom).to(q.dtype)
    return out if layout == "HND" else out.transpose(1, 2)
