"""Step-by-step flow-matching solvers on denoised (x0) predictions.

Each solver owns the state of one tensor (a whole video, or one Diffusion Forcing block; it keeps references to the
tensors it is given, which the caller must not modify afterwards) and is stepped from
sigmas[k] to sigmas[k + 1] with the model's x0 prediction at sigmas[k]. Diffusion Forcing needs one solver per
frame block because blocks sit at different steps; the host's samplers run whole schedules, which is why these
exist.

`unipc` is UniPC (Zhao et al. 2023) as SkyReels-V2 runs it: multistep, data prediction, B(h) = expm1(h) ("bh2"),
order 2 with a first-order start and last step, and the UniC corrector on every step after the first.
In flow matching alpha = 1 - sigma and lambda = log(alpha / sigma). `euler` is the first-order step ComfyUI's
`euler` sampler takes, written the same way so both give the same numbers.
"""
import math


class FlowEuler:
    def __init__(self, sigmas):
        self.sigmas = [float(s) for s in sigmas]
        self.index = 0

    def step(self, x0, x):
        s, s_next = self.sigmas[self.index], self.sigmas[self.index + 1]
        self.index += 1
        d = (x - x0) / s
        return x + d * (s_next - s)


def _lam(sigma):
    return math.log(1 - sigma) - math.log(sigma)


class FlowUniPC:
    """`df`: as SkyReels-V2's Diffusion Forcing loop runs it. That loop hands each frame's scheduler a view into
    its latents and then writes the step's result into that view, so the sample the scheduler kept from its first
    step becomes that result, and the corrector of the second step starts from x1 instead of x0. (Its standard
    T2V/I2V loops rebind instead of writing, so they run textbook UniPC, as `df=False` does.)"""

    def __init__(self, sigmas, order=2, df=False):
        self.sigmas = [float(s) for s in sigmas]
        self.order, self.df = order, df
        self.index = 0           # steps taken
        self.x0s = []            # the last `order` x0 predictions, oldest first
        self.last_x = None       # the sample the last predictor started from (for the corrector)
        self.last_order = 1

    def step(self, x0, x):
        k = self.index
        if k > 0:
            x = self._corrector(x0, x)
        self.x0s = (self.x0s + [x0])[-self.order:]
        steps = len(self.sigmas) - 1
        # First-order while history is short, and on the final step (to sigma 0).
        self.last_order = min(self.order, steps - k, len(self.x0s))
        self.last_x = x
        self.index = k + 1
        out = self._predictor(x, self.last_order)
        if self.df and k == 0:
            self.last_x = out
        return out

    def _predictor(self, x, order):
        k = self.index - 1
        s0, t = self.sigmas[k], self.sigmas[k + 1]
        m0 = self.x0s[-1]
        if t == 0:
            return m0        # the limit of the first-order step at sigma 0: the x0 prediction itself
        h = _lam(t) - _lam(s0)
        b_h = math.expm1(-h)
        out = (t / s0) * x - (1 - t) * b_h * m0
        if order == 2:
            r1 = (_lam(self.sigmas[k - 1]) - _lam(s0)) / h
            d1 = (self.x0s[-2] - m0) / r1
            out = out - (1 - t) * b_h * 0.5 * d1
        return out

    def _corrector(self, x0_t, x_t):
        k = self.index
        s0, t = self.sigmas[k - 1], self.sigmas[k]
        m0 = self.x0s[-1]
        h = _lam(t) - _lam(s0)
        hh = -h
        phi1 = math.expm1(hh)
        b_h = phi1
        base = (t / s0) * self.last_x - (1 - t) * phi1 * m0
        d1_t = x0_t - m0
        if self.last_order == 1:
            return base - (1 - t) * b_h * 0.5 * d1_t
        # Order 2: solve [[1, 1], [r1, 1]] rho = b for the weights of the two differences.
        r1 = (_lam(self.sigmas[k - 2]) - _lam(s0)) / h
        d1 = (self.x0s[-2] - m0) / r1
        phi = phi1 / hh - 1
        b1 = phi / b_h
        phi = phi / hh - 0.5
        b2 = 2 * phi / b_h
        rho0 = (b1 - b2) / (1 - r1)
        rho1 = (b2 - r1 * b1) / (1 - r1)
        return base - (1 - t) * b_h * (rho0 * d1 + rho1 * d1_t)


SOLVERS = {"unipc": FlowUniPC, "euler": FlowEuler}


def make_solver(name, sigmas, df=False):
    if name not in SOLVERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SOLVERS)}")
    return FlowUniPC(sigmas, df=df) if name == "unipc" else SOLVERS[name](sigmas)


def sample(denoise, x, sigmas, solver="unipc", callback=None):
    """Standard sampling: every frame at the same sigma. `denoise(x, sigma)` returns the x0 prediction."""
    solver = make_solver(solver, sigmas)
    for i in range(len(sigmas) - 1):
        x0 = denoise(x, sigmas[i])
        x = solver.step(x0, x)
        if callback is not None:
            callback(i, x0, x)
    return x
