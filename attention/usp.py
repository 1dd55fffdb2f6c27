"""Unified sequence parallelism (USP, as in xDiT) and CFG parallelism on torch.distributed, for one attention
layer over a video's tokens. Pure PyTorch: NCCL on GPUs, gloo on CPU.

The world is a mesh of cfg x ring x ulysses ranks (rank = c * S + r * U + u, S = U * R sequence ranks):
- cfg: rank groups that run the cond and the uncond pass of a step side by side (one exchange of the outputs);
- ulysses (DeepSpeed-Ulysses): an all-to-all trades a rank's 1/S of the tokens with all H heads for 1/R of the
  tokens (its ring chunk) with H/U heads; attention runs there; a second all-to-all trades back. H % U == 0;
- ring: when the heads do not split over all S sequence ranks, the R chunks' keys and values are all-gathered over
  the ring group, so each rank attends from its chunk's queries to every key. This is the all-gather form of ring
  attention (context parallelism as Llama 3 runs it): the same bytes per rank as the ring's R - 1 passes, not
  overlapped with compute, but the attention call stays one ordinary call. A pass-the-blocks ring would merge
  partial results through their log-sum-exp, which the sageattention kernels do not return, so 8-bit attention
  would be lost exactly where the most GPUs are.

Sequences are padded at the end to split evenly; padded keys are cut off before attention and padded queries get
zeros, so the result is the unpadded sequence's.
"""
import math

import torch
import torch.distributed as dist


class Mesh:
    """The process groups of one cfg x ring x ulysses layout of the default group (every rank builds the same)."""

    def __init__(self, cfg=1, ring=1):
        world, rank = dist.get_world_size(), dist.get_rank()
        if world % (cfg * ring):
            raise ValueError(f"{world} ranks do not split into cfg {cfg} x ring {ring} x ulysses")
        self.cfg, self.ring = cfg, ring
        self.ulysses = world // (cfg * ring)
        self.sequence = self.ulysses * self.ring
        self.c, self.s = divmod(rank, self.sequence)
        self.r, self.u = divmod(self.s, self.ulysses)
        S, U, R = self.sequence, self.ulysses, self.ring
        self.sequence_group = _groups([[c * S + i for i in range(S)] for c in range(cfg)], rank)
        self.ulysses_group = _groups([[c * S + r * U + u for u in range(U)] for c in range(cfg) for r in range(R)],
                                     rank)
        self.ring_group = _groups([[c * S + r * U + u for r in range(R)] for c in range(cfg) for u in range(U)], rank)
        self.cfg_group = _groups([[c * S + s for c in range(cfg)] for s in range(S)], rank)

    def __deepcopy__(self, memo):
        return self   # held in model options: whatever copies them must share the process groups

    def __str__(self):
        return f"cfg {self.cfg} x ulysses {self.ulysses} x ring {self.ring}"


def _groups(rank_lists, rank):
    """Every rank creates every group (torch.distributed requires it); returns this rank's, None when it is alone
    (a group of one needs no collective)."""
    mine = None
    for ranks in rank_lists:
        if len(ranks) == 1:
            continue
        group = dist.new_group(ranks)
        if rank in ranks:
            mine = group
    return mine


def layout(world, heads, cfg=False, ring=0):
    """(cfg, ring) degrees for `world` ranks: cfg 2 when asked and the world is even (an odd world runs cfg 1);
    ring = the given degree, or (0) the fewest ring ranks that leave the Ulysses degree a divisor of `heads`.
    ValueError when the heads cannot split."""
    c = 2 if cfg and world % 2 == 0 else 1
    sequence = world // c
    if ring == 0:
        ring = sequence // math.gcd(sequence, heads)
    if sequence % ring:
        raise ValueError(f"ring_degree {ring} does not divide the {sequence} sequence-parallel workers")
    if heads % (sequence // ring):
        raise ValueError(f"{heads} attention heads do not split over ulysses degree {sequence // ring} "
                         f"({sequence} sequence-parallel workers / ring {ring}); use ring_degree 0 (auto)")
    return c, ring


def _all_to_all(x, scatter_dim, gather_dim, group):
    """Split x in P equal pieces along scatter_dim, send piece i to rank i, concatenate what arrives along
    gather_dim (rank order). One all_to_all_single: NCCL and gloo both have it."""
    if group is None:
        return x
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


def gather(x, group, dim=1):
    """The group's pieces of x concatenated along dim, in rank order (the same on every rank)."""
    if group is None:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, x.contiguous(), group=group)
    return torch.cat(parts, dim=dim)


def usp_attention(q, k, v, attend, length, mesh):
    """Attention over the whole sequence from this rank's shard.

    q, k, v: [B, L_pad/S, H, D], this rank's tokens (sequence rank s holds the s-th piece of the sequence padded
    to L_pad); `length`: the real L. attend(q, k, v, q_start) -> [B, Lq, H', D] for queries at positions
    q_start.. and keys at 0..Lk (any exact or 8-bit attention; `attention.block_causal` for a causal video).
    Returns this rank's [B, L_pad/S, H, D].
    """
    if q.shape[2] % mesh.ulysses:
        raise ValueError(f"{q.shape[2]} attention heads do not split over {mesh.ulysses} ranks (Ulysses needs "
                         "H % P == 0)")
    q, k, v = (seq_to_heads(t, mesh.ulysses_group) for t in (q, k, v))
    chunk = q.shape[1]
    start = mesh.r * chunk                      # ring chunk r: the ulysses group's tokens, in order
    k, v = (gather(t, mesh.ring_group)[:, :length] for t in (k, v))
    real = max(0, min(chunk, length - start))
    out = q.new_zeros(q.shape)
    if real:
        out[:, :real] = attend(q[:, :real], k, v, start)
    return heads_to_seq(out, mesh.ulysses_group)
