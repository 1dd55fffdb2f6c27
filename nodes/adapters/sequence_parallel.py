"""Sequence (and CFG) parallelism for the host's Wan model over a torch.distributed mesh (one process per device,
`attention.usp.Mesh`).

Every rank of a sequence group runs every transformer block on its share of the tokens: whole latent frames, the
sequence padded at the end with empty frames to split evenly. Self-attention sees the whole sequence through USP
(`attention.usp`, in `video_attention`); text and image cross-attention need no exchange (their keys are the same
on every rank); the last block gathers the tokens back, so the head and everything after it run as on one device.
Whole frames keep the per-frame modulation of Diffusion Forcing aligned with the tokens it belongs to. With cfg 2,
one sequence group runs the cond pass and the other the uncond pass of each step; they swap outputs.

Installed on a clone with the host's own patch points: a replacement for every block ("dit", "double_block"), the
attention override (wrapping Patch SageAttention's) and the sampler's cond batching function.
"""
import torch
import comfy.samplers

from ...attention.usp import gather
from . import video_attention

MESH_KEY = "skyreels_mesh"   # transformer_options: the Mesh, for what else must agree across ranks (Sample Video)


class Shards:
    """Where this rank's tokens sit in one forward pass."""

    def __init__(self, grid, world, rank):
        self.frames, self.per_frame = grid[0], grid[1] * grid[2]
        self.local_frames = -(-self.frames // world)
        self.length = self.frames * self.per_frame
        self.padded = self.local_frames * world * self.per_frame
        self.start = rank * self.local_frames * self.per_frame
        self.stop = self.start + self.local_frames * self.per_frame

    def tokens(self, t, dim=1):
        """This rank's slice of a per-token tensor, padded with zeros past the real sequence."""
        if t.shape[dim] != self.length:
            return t                                  # not per token (e.g. broadcast over the sequence)
        if self.padded > self.length:
            pad = list(t.shape)
            pad[dim] = self.padded - self.length
            t = torch.cat([t, t.new_zeros(pad)], dim=dim)
        return t.narrow(dim, self.start, self.stop - self.start)

    def frames_of(self, e):
        """This rank's frames of a per-frame modulation [B, F, 6, C] (one frame = shared by all: unchanged)."""
        if e.ndim < 4 or e.shape[1] == 1:
            return e
        first = self.start // self.per_frame
        idx = torch.arange(first, first + self.local_frames, device=e.device).clamp(max=self.frames - 1)
        return e.index_select(1, idx)


class Blocks:
    def __init__(self, attention, mesh):
        self.attention, self.mesh = attention, mesh

    def __deepcopy__(self, memo):
        return self   # shared, never copied, whatever copies the model options

    def __call__(self, args, extra):
        to = args["transformer_options"]
        index, total = to["block_index"], to["total_blocks"]
        x, mesh = args["img"], self.mesh
        if index == 0:
            shards = Shards(to["grid_sizes"], mesh.sequence, mesh.s)
            if x.shape[1] != shards.length:
                raise ValueError("sequence parallel: this model adds tokens beyond the video's (reference or context "
                                 "latents); not supported")
            if to.get("optimized_attention_override") is not self.attention:
                raise ValueError("sequence parallel: another attention override was set after it (apply Patch "
                                 "SageAttention before)")
            self.attention.shards = shards
            x = shards.tokens(x)
        s = self.attention.shards
        out = extra["original_block"]({"img": x, "txt": args["txt"], "vec": s.frames_of(args["vec"]),
                                       "pe": s.tokens(args["pe"]), "transformer_options": to})
        x = out["img"]
        if index == total - 1:
            x = gather(x, mesh.sequence_group)[:, :s.length]
        return {"img": x}


class Batching:
    """The sampler's cond batching. Every rank must run the same forward passes, but the host batches cond and
    uncond (and conditioning entries) by the device's free memory, which differs between ranks: here they are
    always batched. With cfg parallel, each sequence group runs its own half and the halves are swapped."""

    def __init__(self, mesh):
        self.mesh = mesh

    def __deepcopy__(self, memo):
        return self

    def __call__(self, args):
        model, conds, mesh = args["model"], args["conds"], self.mesh
        patcher = model.current_patcher
        patcher.get_free_memory = lambda device=None: float("inf")   # this instance, for this call only
        try:
            if mesh.cfg > 1 and len(conds) == mesh.cfg and all(c is not None for c in conds):
                mine = comfy.samplers.calc_cond_batch(model, [conds[mesh.c]], args["input"], args["sigma"],
                                                      args["model_options"])[0]
                return list(gather(mine[None], mesh.cfg_group, dim=0).unbind(0))
            # one pass only (cfg 1): every group runs it
            return comfy.samplers.calc_cond_batch(model, conds, args["input"], args["sigma"], args["model_options"])
        finally:
            del patcher.get_free_memory


def agree(model, t):
    """`t` as rank 0 has it, on every rank of the model's mesh (what each rank computed alone, such as VAE
    encodings, may differ in the last bits between GPUs; the ranks' latents must not). Unchanged without a mesh."""
    mesh = model.model_options.get("transformer_options", {}).get(MESH_KEY)
    if mesh is None:
        return t
    import torch.distributed as dist
    where = t.device
    if dist.get_backend() == "nccl":          # NCCL moves GPU tensors only; VAE outputs come back on the CPU
        t = t.to(torch.device("cuda", torch.cuda.current_device()))
    t = t.contiguous()
    dist.broadcast(t, src=0)
    return t.to(where)


def patch(model, mesh):
    """A clone of `model` (a ModelPatcher) whose forward passes run on `mesh` (attention.usp.Mesh)."""
    replaced = model.model_options.get("transformer_options", {}).get("patches_replace", {}).get("dit", {})
    if replaced:
        raise ValueError("sequence parallel: this MODEL already replaces transformer blocks (another patch); not "
                         "supported")
    if video_attention.installed(model) is not None:
        raise ValueError("sequence parallel: apply it before anything that sets video attention")
    m = video_attention.install(model, mesh)
    blocks = Blocks(video_attention.installed(m), mesh)
    m.model_options["sampler_calc_cond_batch_function"] = Batching(mesh)
    m.model_options["transformer_options"][MESH_KEY] = mesh
    for i in range(len(m.model.diffusion_model.blocks)):
        m.set_model_patch_replace(blocks, "dit", "double_block", i)
    return m
