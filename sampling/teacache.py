"""TeaCache as SkyReels-V2 runs it: a call reuses the last computed call's block residual until the summed relative L1
change of the timestep embedding (rescaled by a polynomial fitted per model) reaches the threshold; per stream (cond,
uncond). The first steps (1, or 5 with retention steps) always run, and the last one without retention steps."""
from dataclasses import dataclass

import torch

# SkyReels-V2's published coefficients (its transformer's initialize_teacache), highest power first, by
# (T2V / I2V, model size or resolution, retention steps). DF models use the T2V sets.
COEFFICIENTS = {
    ("T2V", "1.3B", False): (2.39676752e+03, -1.31110545e+03, 2.01331979e+02, -8.29855975e+00, 1.37887774e-01),
    ("T2V", "14B", False): (-5784.54975374, 5449.50911966, -1811.16591783, 256.27178429, -13.02252404),
    ("T2V", "1.3B", True): (-5.21862437e+04, 9.23041404e+03, -5.28275948e+02, 1.36987616e+01, -4.99875664e-02),
    ("T2V", "14B", True): (-3.03318725e+05, 4.90537029e+04, -2.65530556e+03, 5.87365115e+01, -3.15583525e-01),
    ("I2V", "540P", False): (-3.02331670e+02, 2.23948934e+02, -5.25463970e+01, 5.87348440e+00, -2.01973289e-01),
    ("I2V", "720P", False): (-114.36346466, 65.26524496, -18.82220707, 4.91518089, -0.23412683),
    ("I2V", "540P", True): (2.57151496e+05, -3.54229917e+04, 1.40286849e+03, -1.35890334e+01, 1.32517977e-01),
    ("I2V", "720P", True): (8.10705460e+03, 2.13393892e+03, -3.72934672e+02, 1.66203073e+01, -4.17769401e-02),
}
SIZES = {1536: "1.3B", 5120: "14B"}     # model width -> size
AREA_720P = (544 * 960 + 720 * 1280) // 2   # pixel area between SkyReels-V2's 540P and 720P


def coefficients(image_to_video, width, pixel_area, retention):
    if image_to_video:
        return COEFFICIENTS[("I2V", "720P" if pixel_area >= AREA_720P else "540P", retention)]
    return COEFFICIENTS[("T2V", SIZES[width], retention)]


def rescale(coeffs, x):
    """The polynomial at x by Horner's rule in float64, as SkyReels-V2's np.poly1d: the same bits, so a sum that
    lands at the threshold decides as there (powers summed differ in the last bits for 3 of 4 inputs)."""
    y = 0.0
    for c in coeffs:
        y = y * x + c
    return y


@dataclass
class Stream:
    distance: float = 0.0
    previous: torch.Tensor = None    # the embedding of the last call
    residual: torch.Tensor = None    # blocks output - input of the last computed call
    index: int = -1                  # the step of the last call


class TeaCache:
    def __init__(self, threshold, retention):
        self.threshold, self.retention = threshold, retention
        self.streams = {}
        self.calls = self.skipped = 0
        self.step = self.last_step = -1     # the step index of the latest call, and the one before it

    def _forget_absent(self, index):
        """Drop the streams the last step did not call (a context window that moved): each holds a full-size
        residual. Steps count as they come, as a sampler may skip indices; a stream's own call order is no matter."""
        if index != self.step:
            self.last_step, self.step = self.step, index
            for key in [k for k, s in self.streams.items() if s.index < self.last_step]:
                del self.streams[key]

    def compute(self, stream, index, total, embedding, coeffs, shape, agree=None):
        """Whether call `index` of `total` of `stream` runs the blocks (else it reuses the residual). A second call at
        one step (a sampler's second evaluation, a guidance pass on one prompt) runs them and changes nothing.
        `agree` maps the embedding's change to the one every rank of a parallel run takes (one rank's), so that all
        make the same decisions in the same state: the ranks' own figures may differ in the last bits."""
        self.calls += 1
        self._forget_absent(index)
        s = self.streams.setdefault(stream, Stream())
        if index == s.index:
            return None
        if index == 0:
            self.streams[stream] = s = Stream()
        s.index = index
        run = (index < (5 if self.retention else 1) or (not self.retention and index >= total - 1)
               or s.previous is None or s.previous.shape != embedding.shape
               or s.residual is None or s.residual.shape != shape)
        if not run:
            # In float32, as SkyReels-V2's embedding is: the host's is in the compute dtype, and bf16 means and their
            # ratio were off by up to 1.1%, which changed the skips of 26 in 400 synthetic 1.3B runs (37 in 800 in all).
            previous = s.previous.float()
            change = ((embedding.float() - previous).abs().mean() / previous.abs().mean()).item()
            change = change if agree is None else agree(change)
            s.distance += rescale(coeffs, change)
            run = not s.distance < self.threshold      # as the reference's test: a NaN change runs the blocks
        if run:    # the residual is replaced at the call's end: held through its blocks, it was one hidden state more
            s.distance, s.residual = 0.0, None
        s.previous = embedding.detach().clone()
        self.skipped += not run
        return run

    def residual(self, stream):
        return self.streams[stream].residual

    def keep(self, stream, residual):
        self.streams[stream].residual = residual

    def release(self):
        """Drop the residuals and embeddings (full-size tensors on the GPU) once a sampling run ends."""
        self.streams = {}
        self.step = self.last_step = -1
