"""Ulysses sequence parallelism (DeepSpeed-Ulysses, the all-to-all half of xDiT's USP) on torch.distributed.

Each of P ranks holds L/P tokens of q, k, v with all H heads. An all-to-all gives every rank all L tokens for H/P
heads; attention runs there exactly as on one device; a second all-to-all returns the rank's L/P tokens with all
heads. Two all-to-alls of the activations per attention call, no weights exchanged. Heads must split evenly.

Sequences are padded at the end to a multiple of P; the padded keys are cut off before attention, so the result is
the unpadded sequence's.
"""
import torch
import torch.distributed as dist


def _all_to_all(x, scatter_dim, gather_dim, group):
    """Split x in P equal pieces along scatter_dim, send piece r to rank r, concatenate what arrives along
    gather_dim (rank order). One all_to_all_single: NCCL and gloo both have it."""
    world = dist.get_world_size(group)
    send = torch.stack([p.contiguous() for p in torch.tensor_split(x, world, dim=scatter_dim)])
    received = torch.empty_like(send)
    dist.all_to_all_single(received, send, group=group)
    return torch.cat(received.unbind(0), dim=gather_dim)


def seq_to_heads(x, group=None):
    """[B, L/P, H, D] on each rank -> [B, L, H/P, D]."""
    return _all_to_all(x, scatter_dim=2, gather_dim=1, group=group)


def heads_to_seq(x, group=None):
    """[B, L, H/P, D] on each rank -> [B, L/P, H, D]."""
    return _all_to_all(x, scatter_dim=1, gather_dim=2, group=group)


def ulysses_attention(q, k, v, attend, length, group=None):
    """Attention over the whole sequence from this rank's shard.

    q, k, v: [B, L_pad/P, H, D], this rank's tokens (the sequence padded to L_pad). `length`: the real L.
    attend(q, k, v) -> [B, L, H', D] on [B, L, H', D] inputs (any exact or 8-bit attention).
    Returns this rank's [B, L_pad/P, H, D].
    """
    world = dist.get_world_size(group)
    if q.shape[2] % world:
        raise ValueError(f"{q.shape[2]} attention heads do not split over {world} ranks (Ulysses needs H % P == 0)")
    q, k, v = (seq_to_heads(t, group) for t in (q, k, v))
    padded = q.shape[1]
    out = attend(q[:, :length], k[:, :length], v[:, :length])
    if padded > length:
        out = torch.cat([out, out.new_zeros(out.shape[0], padded - length, *out.shape[2:])], dim=1)
    return heads_to_seq(out, group)
