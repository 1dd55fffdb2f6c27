"""Another pack's replacement of the Wan model's forward pass. Some caches for Wan (ComfyUI-TeaCache's TeaCache and
ComfyUI-MagCache's MagCache nodes) set their own function as the model's forward_orig while each model call runs
(from a model_function_wrapper), so it is seen on the model instance only during a call. Such a function has its own
idea of the timestep (one per call) and of how the blocks run (without the MODEL's transformer_options, so without
Patch SageAttention's override or this pack's TeaCache)."""
from .sage_override import describe

KEY = "skyreels_foreign_forward"    # transformer_options: a Seen that Sample Video reads for its report
NAMES = ("forward_orig", "_forward")     # what the host's Wan model runs under its forward(); the instance has none


def replacement(dm):
    """Who replaced `dm`'s forward pass on the instance for this call, e.g. "teacache_wanmodel_forward
    (ComfyUI-TeaCache)"; None when it runs the host's own."""
    for name in NAMES:
        fn = vars(dm).get(name)
        if fn is not None:
            return describe(getattr(fn, "__func__", fn))
    return None


def in_diffusion_forcing(who):
    return (f"Sample Video: mode: diffusion forcing gives every latent frame its own timestep in one model call, but "
            f"{who} replaced the model's forward pass with one made for a single timestep per call (another pack's "
            "cache, e.g. TeaCache or MagCache). Remove that node from the MODEL and use TeaCache (SkyReels-V2), which "
            "skips model calls in diffusion forcing too, or use mode 'standard'")


def with_our_teacache(who):
    return (f"TeaCache (SkyReels-V2): {who} replaced the model's forward pass (another pack's cache, e.g. TeaCache or "
            "MagCache) and runs the transformer blocks its own way, so the two caches cannot run together: use one, "
            "remove that node or TeaCache (SkyReels-V2)")


def sage_bypassed(who):
    return (f"attention: no call reached Patch SageAttention: {who} replaced the model's forward pass and runs the "
            "blocks without the MODEL's options, so ComfyUI's own attention ran; TeaCache (SkyReels-V2) skips calls "
            "and keeps Patch SageAttention")


class Seen:
    """The replacements seen during one Sample Video run (shared by the copies the host makes of the options)."""

    def __init__(self):
        self.who = []

    def add(self, who):
        if who not in self.who:
            self.who.append(who)

    def __deepcopy__(self, memo):
        return self
