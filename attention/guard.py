"""The accuracy guard of Patch SageAttention, in plain PyTorch: when an attention site is checked, how far 8-bit is
from exact attention there, and whether an 8-bit output is finite."""
import torch

from .reference import BLOCK_Q
from .sage import agreement

CHECKPOINTS = (0.25, 0.5, 0.75)  # fractions of the steps from which a site is checked again
# The guard checks 9 blocks of query rows (BLOCK_Q each, as the kernels quantize q: an error from q stays in its
# block) on every head; WIDEST of them chosen by their values
GUARD_BLOCKS, WIDEST = 9, 4
# Sample Video's transformer_options: the index of the model call within its window, and the window's calls
CALL, CALLS = "skyreels_call", "skyreels_calls"
FROM_NOISE = 0.99    # a pass starting at this flow sigma or above starts from noise (SkyReels-V2's first: 0.9999)


def phase(step, total):
    """0 before 1/4 of the steps, then 1, 2 and 3 from 1/4, 1/2 and 3/4: a site is checked once per phase, so one
    that goes wrong late in sampling (larger activations at low noise) is still caught."""
    return sum(step >= c * total for c in CHECKPOINTS) if total else 0


class StepIndex:
    """(step, total steps) of a model call: Sample Video counts its calls (`skyreels_call` of `skyreels_calls`);
    under a core sampler (no step counter) it is where this call's sigma sits in the schedule, a GPU read done once
    per model call (one `sigmas` tensor serves all its attention calls), not per attention call."""

    def __init__(self):
        self._sigmas, self._step = None, 0
        self._schedule, self._continues = None, False
        self.grid = None    # the model's noise levels, ascending (its model sampling's sigmas), set as a pass starts

    def continues(self, to):
        """Whether this sampling pass starts below the top of the flow schedule (sigma 1): a second KSampler
        (Advanced) or SplitSigmas pass, or a denoise below 1, whose noisiest steps ran before it or not at all.
        Read once per pass. Sample Video's passes always start from noise."""
        schedule = to.get("sample_sigmas")
        if CALL in to or schedule is None or not len(schedule):
            return False
        if schedule is not self._schedule:
            self._schedule, self._continues = schedule, self._below_top(schedule)
        return self._continues

    def _below_top(self, schedule):
        """More than one of the pass's own steps below the model's top noise level, counted on the model's grid of
        levels: ddim_uniform's whole pass starts up to one step down (flow sigma 0.96 at 4 steps, shift 8), a pass
        from step 2 of 4 two steps down. Without the grid (a pass no core sampler started): below FROM_NOISE."""
        if self.grid is None or len(schedule) < 2:
            return float(schedule[0]) < FROM_NOISE
        at = torch.searchsorted(self.grid, schedule[:2].to(self.grid)).tolist()
        return len(self.grid) - 1 - at[0] >= at[0] - at[1]

    def __call__(self, to):
        schedule = to.get("sample_sigmas")
        total = len(schedule) - 1 if schedule is not None else 0
        if CALL in to:   # with the window's number of calls: asynchronous DF makes more than steps
            return to[CALL], to.get(CALLS, total)
        sigmas = to.get("sigmas")
        if sigmas is None or not total:
            return 0, total
        if sigmas is not self._sigmas:  # a strong reference: no id() reuse between model calls
            self._sigmas = sigmas
            # the nearest step's sigma (the schedule's last one, 0, is where sampling ends: no step starts there)
            self._step = int((schedule[:-1].to(sigmas.device) - sigmas.flatten()[0]).abs().argmin())
        return self._step, total


def _bisection(m):
    """0 .. m-1 in an order whose every prefix is spread out: the ends, the middle, the quarters, ..."""
    order, spans = [0, m - 1], [(0, m - 1)]
    for a, b in spans:
        if b - a > 1:
            order.append((a + b) // 2)
            spans += [(a, (a + b) // 2), ((a + b) // 2, b)]
    return list(dict.fromkeys(order))


def guard_rows(q, blocks=GUARD_BLOCKS, block=BLOCK_Q):
    """The query rows the guard checks of q [B, heads, L, D], in whole blocks of `block` rows as the kernels quantize
    q (so these rows come out as in the whole call): the last block (a partial one is padded), the WIDEST blocks
    whose values span the most in some head (largest |q| over mean |q|: one outlier wrecks its block's int8 scale),
    and blocks spread evenly over the sequence, `blocks` in all; None (every row) where that is half of them or more
    (a short call costs little). Two reductions over q (no copy of it), against the attention's L^2 work."""
    length = q.shape[2]
    n = -(-length // block)
    if n <= 2 * blocks:
        return None
    peak = torch.aminmax(q.detach(), dim=-1)
    peak = torch.maximum(peak.min.abs(), peak.max.abs()).float()                   # [B, heads, L]
    mass = torch.linalg.vector_norm(q.detach(), 1, dim=-1).float()   # sum of |q| per row (in q's dtype: no fp32 copy)
    pad = n * block - length
    peak, mass = (torch.nn.functional.pad(t, (0, pad)).unflatten(-1, (n, block)) for t in (peak, mass))
    rows_in = torch.full((n,), float(block), device=q.device)
    rows_in[-1] = block - pad
    span = peak.amax(-1) / (mass.sum(-1) / (rows_in * q.shape[-1])).clamp_min(1e-30)   # [B, heads, n]
    widest = span.flatten(0, 1).amax(0).topk(WIDEST).indices.tolist()
    spread = torch.linspace(0, n - 1, blocks).round().long().tolist()
    chosen = list(dict.fromkeys([n - 1] + widest + [spread[i] for i in _bisection(blocks)]))
    starts = torch.tensor(sorted(chosen[:blocks])) * block
    rows = (starts[:, None] + torch.arange(block)).flatten()
    return rows[rows < length]


def guard_cosine(eight_bit, exact, q, k, v):
    """Cosine similarity of an 8-bit call's output `eight_bit` vs exact(q, k, v) on every head for some query rows
    (guard_rows) and all keys; -inf if those rows are not finite. q, k, v, `eight_bit` and exact's output are
    [B, heads, L, D]. Every head, because outliers sit in some heads (two heads of twelve missed the others); some
    rows, because an 8-bit error from k or v reaches every row and one from q stays in its block, which guard_rows
    looks for. Only the exact side is computed again: on an H200 (1.3B, 51,000 tokens) the check cost 0.40 s of a
    checked step while it also ran its rows in 8-bit again (most likely as 1152 rows against all keys take about one
    wave of the GPU whatever their share of the work, 2%)."""
    rows = guard_rows(q)
    if rows is not None:
        rows = rows.to(q.device)
        eight_bit, q = eight_bit.index_select(2, rows), q.index_select(2, rows)
    return agreement(eight_bit, exact(q, k, v))["cosine"] if all_finite(eight_bit) else float("-inf")


def all_finite(out):
    """False if any value of `out` is NaN or Inf: its min and max (NaN propagates, an Inf is one of them), read once
    in its own dtype. A sum in fp32 made a whole fp32 copy of each output on the CPU (2x its bytes). O(L) traffic and
    one sync against the attention's O(L^2): well under 1% of a call at video lengths."""
    return out.numel() == 0 or bool(torch.isfinite(torch.stack(torch.aminmax(out))).all())
