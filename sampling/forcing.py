"""Diffusion Forcing (SkyReels-V2): a noise level per latent frame. A plan row gives each causal block its solver steps
taken: 0 = not started (timestep 999), 1..steps, steps + 1 = finished (clean, timestep 0; a clean prefix starts so).
Block 0 takes a step per row; each later one follows `ar_step` steps behind the one before (0: all together), freely
once that one is finished. The model sees the whole window in every row: SkyReels-V2 plans each window with its
`base_num_frames` equal to the window's length (tests/test_sampling.py: test_windows_match_skyreels)."""
from dataclasses import dataclass

import torch

from .schedule import SIGMA_MAX, TRAIN_STEPS
from .solvers import make_solver


@dataclass
class Plan:
    step_index: torch.Tensor    # [rows, frames] int64: 0 .. steps + 1
    update: torch.Tensor        # [rows, frames] bool: frames the solver steps in this row
    steps: int

    @property
    def rows(self):
        return self.step_index.shape[0]

    @property
    def prefix(self):
        """Leading frames that start finished (the clean prefix)."""
        return int((self.step_index[0] == self.steps + 1).long().cumprod(0).sum())


def timestep_matrix(num_frames, steps, ar_step=0, num_pre_ready=0, causal_block_size=1):
    """The Diffusion Forcing plan of one window, as SkyReels-V2's `generate_timestep_matrix(num_frames, ...,
    base_num_frames=num_frames, ...)` makes it (frames are latent frames)."""
    if causal_block_size < 1 or num_frames % causal_block_size:
        raise ValueError(f"{num_frames} latent frames do not split into blocks of causal_block_size "
                         f"{causal_block_size}")
    blocks, done = num_frames // causal_block_size, steps + 1
    row = torch.zeros(blocks, dtype=torch.long)
    row[:num_pre_ready // causal_block_size] = done
    rows, updates = [], []
    while not bool(torch.all(row >= steps)):
        new = torch.zeros_like(row)
        for i in range(blocks):
            new[i] = row[i] + 1 if i == 0 or row[i - 1] >= steps else new[i - 1] - ar_step
        new = new.clamp(0, done)
        updates.append((new != row) & (new != done))
        rows.append(new)
        row = new
    step_index, update = (torch.stack(t).repeat_interleave(causal_block_size, dim=1) for t in (rows, updates))
    return Plan(step_index, update, steps)


def clean_end(plan, frames):
    """`plan` with its last `frames` frames clean throughout (timestep 0, never updated), as SkyReels-V2 conditions
    on an end image: it plans them as ordinary frames, then overwrites their column. Trailing rows that then update
    nothing are dropped (they would be model calls whose result no frame takes)."""
    step_index, update = plan.step_index.clone(), plan.update.clone()
    step_index[:, -frames:] = plan.steps + 1
    update[:, -frames:] = False
    rows = int(update.any(dim=1).nonzero().max()) + 1 if update.any() else 0
    return Plan(step_index[:rows], update[:rows], plan.steps)


def frame_sigmas(step_index, sigmas):
    """Per-frame sigmas of plan rows: not started -> 999/1000, step k -> sigmas[k - 1], finished -> 0."""
    table = torch.cat([torch.tensor([SIGMA_MAX]), sigmas.float()[:-1], torch.zeros(1)])
    return table[step_index]


def windows(latent_length, base_latent, overlap_latent):
    """[(prefix, length)] of each window of a long video: the first has no prefix; every later one starts with the
    last `overlap_latent` frames of the one before and adds `length - overlap_latent` new frames."""
    if latent_length <= base_latent:
        return [(0, latent_length)]
    if not 0 < overlap_latent < base_latent:
        raise ValueError(f"overlap_history must give fewer latent frames than base_num_frames "
                         f"({overlap_latent} vs {base_latent})")
    out, made = [(0, base_latent)], base_latent
    while made < latent_length:
        length = min(latent_length - made + overlap_latent, base_latent)
        out.append((overlap_latent, length))
        made += length - overlap_latent
    return out


def whole_blocks(latent_length, base_latent, overlap_latent, block):
    """The latent lengths nearest `latent_length` (below, above; None where there is none) whose windows all hold
    whole causal blocks, as SkyReels-V2 needs (its README: "--num_frames should be carefully set")."""
    def fits(n):
        try:
            return all(length % block == 0 for _, length in windows(n, base_latent, overlap_latent))
        except ValueError:      # an overlap no longer video can take: only one window fits
            return False
    return (next((n for n in range(latent_length - 1, 0, -1) if fits(n)), None),
            next((n for n in range(latent_length + 1, latent_length + base_latent + block) if fits(n)), None))


def whole_block_bases(latent_length, base_latent, overlap_latent, block):
    """The window lengths in whole causal blocks nearest `base_latent` (below, above; None where there is none),
    longer than the overlap, with which every window of a `latent_length` video holds whole blocks."""
    def fits(base):
        return all(length % block == 0 for _, length in windows(latent_length, base, overlap_latent))
    start = base_latent // block * block
    return (next((n for n in range(start, overlap_latent, -block) if fits(n)), None),
            next((n for n in range(start + block, latent_length + block + 1, block) if fits(n)), None))


def sample_window(denoise, x, sigmas, plan, solver="unipc", addnoise_condition=0, draw=torch.randn, callback=None,
                  dtype=None):
    """Run one window. `x` [B, C, F, H, W] holds noise, with the clean prefix in its first `plan.prefix` frames;
    `denoise(x, frame_sigmas)` returns the x0 prediction. With `addnoise_condition` the model sees the prefix
    noised to that timestep (SkyReels-V2 keeps long videos from drifting so); it is never updated. Its noise is
    `draw(shape)`, one call per model call that sees the prefix. `dtype`: the latents' between steps (SkyReels-V2's
    DF pipeline keeps its transformer's, bf16; None: x's); the model sees them, and the result comes, in x's."""
    given = x.dtype
    x = x.to(dtype or given, copy=True)
    frames, prefix = x.shape[2], plan.prefix
    solvers = [make_solver(solver, sigmas, df=True, dtype=dtype) for _ in range(frames)]
    rows = frame_sigmas(plan.step_index, sigmas)
    for r in range(plan.rows):
        x_in, s_in = x.clone(), rows[r].clone()
        if addnoise_condition > 0 and prefix:
            level = addnoise_condition / TRAIN_STEPS
            cond = x_in[:, :, :prefix]
            x_in[:, :, :prefix] = cond * (1 - level) + draw(cond.shape).to(cond) * level
            s_in[:prefix] = level
        x0 = denoise(x_in.to(given), s_in)
        for f in range(frames):
            if plan.update[r, f]:
                # Copies: the solver keeps what it is given (x is written in place; a view would keep all of x0);
                # `df=True` solvers reproduce what SkyReels-V2's view does to its solver state.
                x[:, :, f] = solvers[f].step(x0[:, :, f].clone(), x[:, :, f].clone())
        if callback is not None:
            callback(r, x0, x)
    return x.to(given)
