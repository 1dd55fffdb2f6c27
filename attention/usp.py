"""Unified sequence parallelism (USP, as in xDiT) and CFG parallelism for one attention layer, on torch.distributed
(NCCL on GPUs, gloo on CPU). Ulysses trades tokens for heads by all-to-all; ring all-gathers keys and values (Llama
3's context parallelism) rather than passing blocks, whose partial results merge by log-sum-exp, which sageattention
does not return. Sequences are padded at the end to split evenly: padded keys are cut, padded queries get zeros."""
import math

import torch
import torch.distributed as dist


class Mesh:
    """The process groups of one cfg x ring x ulysses layout of the default group (every rank builds the same)."""

    def __init__(self, cfg=1, ring=1):
        world, rank = dist.get_world_size(), dist.get_rank()
        self.cfg, self.ring = cfg, ring
        self.ulysses = world // (cfg * ring)
        self.sequence = self.ulysses * self.ring
        self.c, self.s = divmod(rank, self.sequence)
        self.r, self.u = divmod(self.s, self.ulysses)
        grid = torch.arange(world).view(cfg, ring, self.ulysses)   # rank = (c * ring + r) * ulysses + u
        self.sequence_group = _groups(grid.flatten(1), rank)
        self.ulysses_group = _groups(grid.flatten(0, 1), rank)
        self.ring_group = _groups(grid.transpose(1, 2).flatten(0, 1), rank)
        self.cfg_group = _groups(grid.flatten(1).T, rank)

    def __deepcopy__(self, memo):
        return self   # held in model options: whatever copies them must share the process groups

    def __str__(self):
        return f"cfg {self.cfg} x ulysses {self.ulysses} x ring {self.ring}"


def _groups(grid, rank):
    """The group of this rank's row of `grid`; None for rows of one (no collective). Every rank must create every
    group, in the same order."""
    if grid.shape[1] == 1:
        return None
    rows = grid.tolist()
    groups = [dist.new_group(ranks) for ranks in rows]
    return next(g for g, ranks in zip(groups, rows) if rank in ranks)


def layout(world, heads, cfg=False, ring=0):
    """(cfg, ring) for `world` ranks: cfg 2 when asked and the world is even; ring 0 = the fewest ring ranks that
    leave the Ulysses degree a divisor of `heads`."""
    c = 2 if cfg and world % 2 == 0 else 1
    sequence = world // c
    ring = ring or sequence // math.gcd(sequence, heads)
    if sequence % ring:
        raise ValueError(f"ring_degree {ring} does not divide the {sequence} sequence-parallel workers")
    if heads % (sequence // ring):
        raise ValueError(f"{heads} attention heads do not split over ulysses degree {sequence // ring} "
                         f"({sequence} sequence-parallel workers / ring {ring}); use ring_degree 0 (auto)")
    return c, ring


def first_of_group(value, mesh, device):
    """`value` (a number) as the first rank of this rank's sequence group has it: what each rank works out alone and
    that decides which collectives run (TeaCache's skip) must agree within the group."""
    if mesh.sequence_group is None:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.broadcast(t, src=mesh.c * mesh.sequence, group=mesh.sequence_group)
    return t.item()


def _all_to_all(x, scatter_dim, gather_dim, group):
    """x split in equal pieces along scatter_dim, piece i to rank i; what arrives concatenated along gather_dim."""
    if group is None:
        return x
    # piece i first; a copy only where the pieces are not already in that order (B = 1 keeps tokens so)
    send = x.unflatten(scatter_dim, (dist.get_world_size(group), -1)).movedim(scatter_dim, 0).contiguous()
    received = torch.empty_like(send)
    dist.all_to_all_single(received, send, group=group)
    return received.movedim(0, gather_dim).flatten(gather_dim, gather_dim + 1)   # a view where it can be (B = 1)


def gather(x, group, dim=1):
    """The group's pieces of x concatenated along dim (0 or 1), in rank order (the same on every rank). Each piece
    is received into its place in the whole, which NCCL does in place: pieces then joined held the whole twice."""
    if group is None:
        return x
    x = x.contiguous()
    shape = list(x.shape)
    shape[dim] *= dist.get_world_size(group)
    whole = x.new_empty(shape)
    # torch 2.14 renamed it (the old name warns); looked up here, as a PyTorch without distributed has neither
    gather_into = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    for out, piece in [(whole, x)] if dim == 0 else zip(whole, x):   # per batch entry: each one contiguous
        gather_into(out, piece, group=group)
    return whole


def usp_attention(q, k, v, attend, length, mesh):
    """This rank's [B, L_pad/S, H, D] of attention over the whole sequence (real length `length`) from its shard of
    q, k, v. attend(q, k, v, q_start) attends from queries at q_start.. to all keys given (exact, 8-bit or causal)."""
    q, k, v = (_all_to_all(t, 2, 1, mesh.ulysses_group) for t in (q, k, v))   # [B, L/R, H/U, D]
    chunk = q.shape[1]
    start = mesh.r * chunk                      # ring chunk r: the ulysses group's tokens, in order
    k, v = (gather(t, mesh.ring_group)[:, :length] for t in (k, v))
    real = max(0, min(chunk, length - start))
    if real == chunk:       # no padded queries here: attention's own output (a copy into zeros held it twice)
        return _all_to_all(attend(q, k, v, start), 1, 2, mesh.ulysses_group)
    out = q.new_zeros(q.shape)
    if real:
        out[:, :real] = attend(q[:, :real], k, v, start)
    return _all_to_all(out, 1, 2, mesh.ulysses_group)
