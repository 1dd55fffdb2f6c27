"""Another pack's replacement of the Wan model's forward pass. Some caches for Wan (ComfyUI-TeaCache's TeaCache and
ComfyUI-MagCache's MagCache nodes) set their own function as the model's forward_orig while each model call runs
(from a model_function_wrapper), so it is seen on the model instance only during a call. Such a function has its own
idea of the timestep (one per call) and of how the blocks run (without the MODEL's transformer_options, so without
Patch SageAttention's override or this pack's TeaCache)."""
from ...attention.sage import log_once
from .sage_override import SageOverride, describe
from .video_attention import VideoAttention

NAMES = ("forward_orig", "_forward")     # what the host's Wan model runs under its forward(); the instance has none


def replacement(dm):
    """Who replaced `dm`'s forward pass on the instance for this call, e.g. "teacache_wanmodel_forward
    (ComfyUI-TeaCache)"; None when it runs the host's own."""
    dm = getattr(dm, "_orig_mod", dm)   # under TorchCompileModel's wrapper the call sees torch.compile's module
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


class SageWatch:
    """Patch SageAttention's wrappers that notice a replaced forward under any sampler (core's KSampler has no report
    to say it): one on each model call notes who replaced it; one on each sampling pass logs, once per patched MODEL,
    when no attention call of the pass reached the override."""

    def __init__(self, override):
        self.override, self.who = override, []

    def call(self, executor, *args, **kwargs):
        who = replacement(executor.class_obj.diffusion_model)
        if who is not None and who not in self.who:
            self.who.append(who)
        return executor(*args, **kwargs)

    def sampling(self, executor, *args, **kwargs):
        # The guider's options: a node applied after Patch SageAttention may have set another attention override
        running = getattr(executor.class_obj, "model_options", {}).get("transformer_options", {}).get(
            "optimized_attention_override")
        while isinstance(running, VideoAttention):   # Sample Video's causal attention: the override it wraps
            running = running.inner
        before, self.who = dict(self.override.counts), []
        out = self.override.new_pass(executor, *args, **kwargs)
        self.override.bypassed_by = self.who if self.override.counts == before else []    # Sample Video reports it
        if self.override.bypassed_by:
            log_once(("bypassed", *self.who), sage_bypassed(", ".join(self.who)), seen=self.override.logged)
        elif self.override.counts == before and running is not None and not isinstance(running, SageOverride):
            # e.g. ModelAttentionBackend or KJNodes' Patch Sage Attention KJ after it: the host ran that override
            # alone, and under KSampler nothing said so (Sample Video's report names it). Sample Video's causal
            # attention keeps ours underneath, and an override calling ours would have counted calls. A later Patch
            # SageAttention replaces ours as designed (silently, as it does): Patch SageAttention still runs.
            who = describe(running)
            log_once(("replaced later", who), f"Patch SageAttention: not used: a node after it set another attention "
                     f"override on this MODEL, {who}; ComfyUI runs one per model, the last applied (apply Patch "
                     "SageAttention after that node to use it)", seen=self.override.logged)
        return out

    def __deepcopy__(self, memo):
        return self     # cloned MODELs share it, as they share the override

