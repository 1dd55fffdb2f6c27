"""Block-causal attention (SkyReels-V2's Diffusion Forcing): the tokens of causal block b attend to blocks 0..b only.
No mask tensor: each query block is one attention call on a prefix of the keys, so any attention fits (8-bit
SageAttention takes no mask), memory stays that of one call, and the masked half of the work is skipped."""


def block_causal(q, k, v, attend, block_tokens, q_start=0):
    """q: [B, Lq, H, D] at sequence positions q_start..; k, v: [B, Lk, H, D] at positions 0..Lk.
    attend(q, k, v) -> [B, Lq', H, D]. Returns [B, Lq, H, D], each block written into it as it comes (the blocks
    joined at the end held the output twice)."""
    if block_tokens < 1:
        raise ValueError(f"block_tokens must be positive, not {block_tokens}")
    out, pos, end = None, q_start, q_start + q.shape[1]
    while pos < end:
        block_end = (pos // block_tokens + 1) * block_tokens
        stop = min(block_end, end)
        keys = min(block_end, k.shape[1])
        part = attend(q[:, pos - q_start:stop - q_start], k[:, :keys], v[:, :keys])
        if out is None:
            out = part.new_empty(q.shape[0], q.shape[1], *part.shape[2:])
        out[:, pos - q_start:stop - q_start] = part
        del part     # before the next block's is made
        pos = stop
    return q.new_empty(q.shape) if out is None else out     # (no query)
