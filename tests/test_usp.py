"""USP (Ulysses x ring) and block-causal attention, pure PyTorch: gloo process groups on CPU against one process."""
import json
import socket
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from attention.block_causal import block_causal
from attention.usp import layout
from helpers import REPO

WORKER = r"""
import json, os, sys
sys.path[:0] = [{repo!r}, os.path.join({repo!r}, "tests")]
import torch, torch.nn.functional as F
import torch.distributed as dist
from attention.usp import Mesh, _all_to_all, first_of_group, gather, usp_attention
from test_act_quant import peak_extra_bytes
from attention.block_causal import block_causal
dist.init_process_group("gloo", init_method="tcp://127.0.0.1:{port}", rank={rank}, world_size={world})
torch.manual_seed(0)                      # the same full tensors on every rank
B, L, H, D, FRAME = 2, 9 * 6, 4, 16, 6    # 9 frames of 6 tokens
q, k, v = (torch.randn(B, L, H, D) for _ in range(3))

def sdpa(qq, kk, vv, q_start=0):
    return F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (qq, kk, vv))).transpose(1, 2)

result = {{}}
for cfg, ring in {layouts}:
    mesh = Mesh(cfg, ring)
    S = mesh.sequence
    local = -(-9 // S) * FRAME                       # whole frames per rank, padded at the end
    pad = lambda t: torch.cat([t, t.new_zeros(B, local * S - L, H, D)], 1)[:, mesh.s * local:(mesh.s + 1) * local]
    name = str(mesh)
    result["first " + name] = first_of_group(10.0 * dist.get_rank() + 0.5, mesh, "cpu")    # what TeaCache agrees on
    for causal in (False, True):
        if causal:
            attend = lambda qq, kk, vv, q_start: block_causal(qq, kk, vv, sdpa, 2 * FRAME, q_start)
            want = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v)),
                                                  attn_mask=(torch.arange(L)[None] // (2 * FRAME)
                                                             <= torch.arange(L)[:, None] // (2 * FRAME))).transpose(1, 2)
        else:
            attend, want = sdpa, sdpa(q, k, v)
        out = usp_attention(pad(q), pad(k), pad(v), attend, L, mesh)
        mine = pad(want)
        result[name + (" causal" if causal else "")] = ((out - mine).abs().max().item(), out.shape[1])
    # memory: what gathering shares (B = 2) and each all-to-all (B = 1) hold beyond their input, over their output
    share = torch.full((B, 30, H, D), float(dist.get_rank()))
    peak, whole = peak_extra_bytes(lambda: gather(share, mesh.sequence_group))
    result["gather " + name] = (peak / whole.nbytes, [int(piece[0, 0, 0, 0]) for piece in whole.chunk(S, 1)])
    if dist.get_world_size() == 1:    # attention's output alone: the size of one, made fresh as attention makes it
        peak, out = peak_extra_bytes(lambda: usp_attention(q, k, v, lambda qq, kk, vv, s: qq * 1.0, L, mesh))
        result["output " + name] = peak / out.nbytes
    if mesh.ulysses > 1:
        peak, heads = peak_extra_bytes(lambda: _all_to_all(share[:1], 2, 1, mesh.ulysses_group))
        back, tokens = peak_extra_bytes(lambda: _all_to_all(heads, 1, 2, mesh.ulysses_group))
        assert torch.equal(tokens, share[:1])
        result["all-to-all " + name] = [peak / heads.nbytes, back / tokens.nbytes]
print("@@" + json.dumps(result))
# Leave the group together before exiting: a rank that exits while gloo's threads still talk to it aborted the
# other ("terminate called without an active exception", about 1 run in 40 here).
dist.barrier()
dist.destroy_process_group()
"""


def spmd(world, layouts, timeout=300):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [subprocess.Popen([sys.executable, "-c", WORKER.format(repo=REPO, port=port, rank=r, world=world,
                                                                      layouts=layouts)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(world)]
    try:
        outs = [p.communicate(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    # every failing rank: one failing after the last collective makes the others fail at the closing barrier
    failed = [f"rank {r} exited {p.returncode}: {err[-3000:]}" for r, (p, (_, err)) in enumerate(zip(procs, outs))
              if p.returncode]
    assert not failed, "\n".join(failed)
    return [json.loads(out.split("@@")[-1]) for out, _ in outs]


def pop_memory(r, group_of):
    """Checks and removes the worker's memory figures. A gather holds the whole it returns and gloo's buffer for one
    batch entry's call (B = 2: 1.5x measured; NCCL receives in place, 1.0x); pieces joined after the call held the
    whole twice (2.0x). An all-to-all of one batch entry holds what it sends and receives, the output a view of it
    or one copy (2.0x measured both ways; stacked pieces and a joined output made 3.0x)."""
    for name in [n for n in r if n.startswith(("gather ", "all-to-all "))]:
        if name.startswith("gather "):
            ratio, ranks = r.pop(name)
            assert ranks == group_of(name), (name, ranks)     # the pieces in rank order
            assert ratio <= 1.55, (name, ratio)
        else:
            assert max(r.pop(name)) <= 2.05, name


def test_two_ranks_ulysses_and_ring_equal_one_process():
    # 9 frames over 2 ranks: 5 frames each, the last one padding. Ulysses (2 heads per rank) and ring (all 4
    # heads, keys all-gathered), each plain and block-causal (2-frame blocks), against one process.
    for r in spmd(2, [(1, 1), (1, 2)]):
        pop_memory(r, lambda name: [0, 1])
        assert {r.pop("first cfg 1 x ulysses 2 x ring 1"), r.pop("first cfg 1 x ulysses 1 x ring 2")} == {0.5}
        assert set(r) == {"cfg 1 x ulysses 2 x ring 1", "cfg 1 x ulysses 2 x ring 1 causal",
                          "cfg 1 x ulysses 1 x ring 2", "cfg 1 x ulysses 1 x ring 2 causal"}
        for name, (err, tokens) in r.items():
            assert tokens == 30, name               # 5 frames x 6 tokens stay on each rank
            assert err <= 1e-5, (name, err)          # the same arithmetic per query (measured ~1e-7)


def test_one_rank_returns_attentions_own_output():
    # no padded queries: the output is attention's own (measured 1.0x; copied into a zeroed output: 2.0x)
    [r] = spmd(1, [(1, 1)])
    assert r["output cfg 1 x ulysses 1 x ring 1"] <= 1.05, r
    assert r["cfg 1 x ulysses 1 x ring 1"][0] <= 1e-5, r


def test_four_ranks_two_dimensional_mesh():
    # ulysses 2 x ring 2 (3 frames per rank, 3 padded), and cfg 2 x ring 2: every group agrees with one process.
    for rank, r in enumerate(spmd(4, [(1, 2), (2, 2)])):
        pop_memory(r, lambda name: [0, 1, 2, 3] if "cfg 1" in name else [2, 3] if rank >= 2 else [0, 1])
        # every rank takes the number of its sequence group's first rank: 0 for all, and with cfg 2 0 or 2 by half
        assert [r.pop("first cfg 1 x ulysses 2 x ring 2"), r.pop("first cfg 2 x ulysses 1 x ring 2")] == \
            [0.5, 20.5 if rank >= 2 else 0.5], rank
        assert {n.split(" causal")[0] for n in r} == {"cfg 1 x ulysses 2 x ring 2", "cfg 2 x ulysses 1 x ring 2"}
        for name, (err, _) in r.items():
            assert err <= 1e-5, (name, err)


def mask(length, block_tokens):
    """SkyReels-V2's block-causal rule as a boolean mask [length, length] (True = attend), for masked SDPA."""
    block = torch.arange(length) // block_tokens
    return block[None, :] <= block[:, None]


@pytest.mark.parametrize("q_start,length", [(0, 40), (12, 20), (7, 9)])
def test_block_causal_equals_masked_attention(q_start, length):
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 40, 2, 8, generator=g) for _ in range(3))
    calls = []

    def sdpa(qq, kk, vv):
        calls.append((qq.shape[1], kk.shape[1]))
        return F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (qq, kk, vv))).transpose(1, 2)

    got = block_causal(q[:, q_start:q_start + length], k, v, sdpa, 10, q_start)
    want = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v)), attn_mask=mask(40, 10))
    assert (got - want.transpose(1, 2)[:, q_start:q_start + length]).abs().max() <= 1e-6
    # one call per query block, each on the keys up to its block's end: the masked part is never computed
    if q_start == 0:
        assert calls == [(10, 10), (10, 20), (10, 30), (10, 40)]
    if q_start == 7:
        assert calls == [(3, 10), (6, 20)]


def test_block_causal_holds_its_output_once():
    # 8 query blocks: the output is made once, each block's result written into it; the meter also counts the one
    # block alive while it is written (measured 1.125x the output; joined at the end, parts and whole: 2.0x)
    from test_act_quant import peak_extra_bytes
    q, k, v = (torch.randn(1, 256, 2, 16) for _ in range(3))

    def plain(qq, kk, vv):
        return qq * 1.0     # the size of an attention output, made fresh as attention makes it

    peak, out = peak_extra_bytes(lambda: block_causal(q, k, v, plain, 32))
    assert torch.equal(out, q) and peak <= 1.2 * out.nbytes, peak / out.nbytes


def test_block_causal_rule_matches_skyreels():
    # SkyReels-V2's rule: frame block of the key <= frame block of the query (2 tokens a frame, 2 frames a block)
    m = mask(8, 4)
    assert m[3].tolist() == [True] * 4 + [False] * 4 and m[4].tolist() == [True] * 8
    with pytest.raises(ValueError, match="block_tokens must be positive"):
        block_causal(torch.zeros(1, 2, 1, 4), torch.zeros(1, 2, 1, 4), torch.zeros(1, 2, 1, 4), None, 0)


def test_layout_picks_the_fewest_ring_ranks():
    assert layout(2, 2) == (1, 1)
    assert layout(8, 12) == (1, 2)                 # 1.3B on 8 GPUs: ulysses 4 x ring 2
    assert layout(8, 12, cfg=True) == (2, 1)       # cfg 2 x ulysses 4
    assert layout(16, 40) == (1, 2)                # 14B on 16: ulysses 8 x ring 2
    assert layout(3, 2) == (1, 3)
    assert layout(8, 12, ring=4) == (1, 4)
    assert layout(3, 2, cfg=True) == (1, 3)        # an odd world runs without cfg parallel
    with pytest.raises(ValueError, match="ring_degree 3 does not divide the 8 sequence-parallel workers"):
        layout(8, 12, ring=3)
    with pytest.raises(ValueError, match="12 attention heads do not split over ulysses degree 8"):
        layout(8, 12, ring=1)


def test_imports_where_pytorch_has_no_distributed_collectives():
    # PyTorch built without distributed (dist.is_available() False) defines none of them: the module, which every
    # model load imports, must not look one up before a parallel run uses it
    code = ("import torch.distributed as d\nfor name in ('all_gather_single', 'all_gather_into_tensor', 'all_gather'):"
            "\n    if hasattr(d, name):\n        delattr(d, name)\nimport attention.usp")   # (torch < 2.14: no _single)
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
