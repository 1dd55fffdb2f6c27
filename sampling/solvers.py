"""Flow-matching solvers stepped one step at a time on x0 predictions (Diffusion Forcing needs one per frame block,
each at its own step; the host's samplers run whole schedules). They keep the tensors given: don't modify those.
`unipc`: UniPC (Zhao et al. 2023) as SkyReels-V2 runs it: data prediction, B(h) = expm1(h) ("bh2"), order 2 with
first-order first and last steps, UniC corrector after the first. `euler`: ComfyUI's `euler` step, same numbers.
`dtype`: the latents' dtype between steps, None to keep the one given. SkyReels-V2's DF pipeline keeps bf16 latents:
each step's result (and the corrector's) is rounded to them, and so are the corrector's weights, as its scheduler
rounds them; the rest of its arithmetic follows from torch's type promotion, as here."""
import torch


class FlowEuler:
    def __init__(self, sigmas, dtype=None):
        self.sigmas = [float(s) for s in sigmas]
        self.index, self.dtype = 0, dtype

    def step(self, x0, x):
        s, s_next = self.sigmas[self.index], self.sigmas[self.index + 1]
        self.index += 1
        d = (x - x0) / s
        return (x + d * (s_next - s)).to(self.dtype or x.dtype)


class FlowUniPC:
    """`df`: as SkyReels-V2's Diffusion Forcing loop, which writes each step's result into the latents' view its
    scheduler kept from the first step, so the second step's corrector starts from x1, not x0. (Its T2V/I2V loops
    rebind instead, so run textbook UniPC, as `df=False` does.) The step's coefficients are computed as its scheduler
    computes them, as 0-dim float32 CPU tensors (lambda = log(1 - sigma) - log(sigma) in float32 and so on), and
    multiply the latents as such on the CPU and CUDA: the same bits as its scheduler, in float32 and in bf16."""

    def __init__(self, sigmas, order=2, df=False, dtype=None):
        self.sigmas = [float(s) for s in sigmas]
        self._s = torch.tensor(self.sigmas, dtype=torch.float32)
        self.order, self.df, self.dtype = order, df, dtype
        self.index = 0           # steps taken
        self.x0s = []            # the last `order` x0 predictions, oldest first
        self.last_x = None       # the sample the last predictor started from (for the corrector)
        self.last_order = 1

    def step(self, x0, x):
        k = self.index
        if k > 0:
            x = self._corrector(x0)
        self.x0s = (self.x0s + [x0])[-self.order:]
        # First-order while history is short, and on the final step (to sigma 0).
        self.last_order = min(self.order, len(self.sigmas) - 1 - k, len(self.x0s))
        self.last_x = x
        self.index = k + 1
        if self.sigmas[k + 1] == 0:
            out = x0        # the limit of the first-order step at sigma 0: the x0 prediction itself
        else:
            out, c, h, b_h = self._first_order(k, x)
            if self.last_order == 2:
                out = out - _scalar(c, x) * (0.5 * self._d1(k, h)[0])
        out = out.to(self.dtype or x.dtype)
        if self.df and k == 0:
            self.last_x = out
        return out

    def _lam(self, i):
        s = self._s[i]
        return torch.log(1 - s) - torch.log(s)   # lambda = log(alpha / sigma); flow matching: alpha = 1 - sigma

    def _first_order(self, j, x):
        """The first-order step sigmas[j] -> sigmas[j + 1] from `x`, with that step's (1 - t) B(h), h and B(h)."""
        s0, t = self._s[j], self._s[j + 1]
        h = self._lam(j + 1) - self._lam(j)
        b_h = torch.expm1(-h)
        c = (1 - t) * b_h
        # The ratio a 0-dim float32 CPU tensor, as SkyReels-V2's scheduler holds it, so that torch multiplies bf16 x
        # as it multiplies theirs (on the CPU it rounds such a ratio to bf16 first; a Python float it does not).
        # Other devices may not take a CPU scalar, and their scripts run on neither.
        return _scalar(t / s0, x) * x - _scalar(c, x) * self.x0s[-1], c, h, b_h

    def _d1(self, j, h):
        """(D1 / r1, r1): the last x0 difference of the step from sigmas[j]."""
        r1 = (self._lam(j - 1) - self._lam(j)) / h
        return (self.x0s[-2] - self.x0s[-1]) / _scalar(r1, self.x0s[-1]), r1

    def _corrector(self, x0_t):
        j = self.index - 1
        base, c, h, b_h = self._first_order(j, self.last_x)
        c = _scalar(c, base)
        d1_t = x0_t - self.x0s[-1]
        dtype = self.dtype or self.last_x.dtype
        if self.last_order == 1:
            return (base - c * (0.5 * d1_t)).to(dtype)
        # Order 2: solve [[1, 1], [r1, 1]] rho = b for the weights of the two differences, in float32 as the
        # scheduler does, then rounded to the latents' dtype as it rounds them.
        d1, r1 = self._d1(j, h)
        phi = b_h / -h - 1
        b = torch.stack([phi * 1 / b_h, (phi / -h - 1 / 2) * 2 / b_h])
        rho0, rho1 = torch.linalg.solve(torch.stack([torch.ones(2), torch.stack([r1, torch.ones(())])]), b).to(dtype)
        return (base - c * (float(rho0) * d1 + float(rho1) * d1_t)).to(dtype)


def _scalar(v, x):
    """A 0-dim float32 CPU tensor `v` as it multiplies `x`: itself on the CPU and CUDA, else a Python float."""
    return v if x.device.type in ("cpu", "cuda") else float(v)


SOLVERS = {"unipc": FlowUniPC, "euler": FlowEuler}


def make_solver(name, sigmas, df=False, dtype=None):
    if name not in SOLVERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SOLVERS)}")
    return FlowUniPC(sigmas, df=df, dtype=dtype) if name == "unipc" else SOLVERS[name](sigmas, dtype=dtype)


def sample(denoise, x, sigmas, solver="unipc", callback=None):
    """Standard sampling: every frame at the same sigma. `denoise(x, sigma)` returns the x0 prediction."""
    solver = make_solver(solver, sigmas)
    for i in range(len(sigmas) - 1):
        x0 = denoise(x, sigmas[i])
        x = solver.step(x0, x)
        if callback is not None:
            callback(i, x0, x)
    return x
