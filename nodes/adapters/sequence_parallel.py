"""Sequence (and CFG) parallelism for the host's Wan model over an `attention.usp.Mesh`. Each rank of a sequence
group runs every block on whole latent frames (so Diffusion Forcing's per-frame modulation stays with its tokens);
self-attention sees the whole sequence through `video_attention`; cross-attention needs no exchange (same keys on
every rank); the last block gathers the tokens back. With cfg 2 the two groups run the cond and the uncond pass."""
import comfy.samplers
import torch
import torch.distributed as dist

from ...attention.usp import gather
from . import video_attention

MESH_KEY = "skyreels_mesh"   # transformer_options: the Mesh, for what else must agree across ranks (Sample Video)


class Shards:
    """Where this rank's tokens sit in one forward pass."""

    def __init__(self, grid, world, rank):
        self.frames, self.per_frame = grid[0], grid[1] * grid[2]
        self.local_frames = -(-self.frames // world)
        self.length = self.frames * self.per_frame
        self.start = rank * self.local_frames * self.per_frame

    def tokens(self, t):
        """This rank's slice of a per-token tensor [B, L, ...] (a view), padded with zeros past the real sequence (a
        copy of the slice alone)."""
        if t.shape[1] != self.length:
            return t                                  # not per token (e.g. broadcast over the sequence)
        local = self.local_frames * self.per_frame
        part = t[:, self.start:self.start + local]    # shorter, or empty, past the real sequence
        if part.shape[1] == local:
            return part
        return torch.cat([part, t.new_zeros(t.shape[0], local - part.shape[1], *t.shape[2:])], dim=1)

    def frames_of(self, e):
        """This rank's frames of a per-frame modulation [B, F, 6, C] (one frame = shared by all: unchanged)."""
        if e.ndim < 4 or e.shape[1] == 1:
            return e
        first = self.start // self.per_frame
        idx = torch.arange(first, first + self.local_frames, device=e.device).clamp(max=self.frames - 1)
        return e.index_select(1, idx)


def _blocks(attention, mesh):
    """The replacement of every block: a closure, so whatever copies the model options shares it."""
    def block(args, extra):
        to = args["transformer_options"]
        x = args["img"]
        if to["block_index"] == 0:
            shards = Shards(to["grid_sizes"], mesh.sequence, mesh.s)
            if x.shape[1] != shards.length:
                raise ValueError("sequence parallel: this model adds tokens beyond the video's (reference or context "
                                 "latents); not supported")
            if to.get("optimized_attention_override") is not attention:
                raise ValueError("sequence parallel: another attention override was set after it (apply Patch "
                                 "SageAttention before)")
            attention.now.shards = shards
            x = shards.tokens(x)
        s = attention.now.shards
        x = extra["original_block"]({"img": x, "txt": args["txt"], "vec": s.frames_of(args["vec"]),
                                     "pe": s.tokens(args["pe"]), "transformer_options": to})["img"]
        if to["block_index"] == to["total_blocks"] - 1:
            x = gather(x, mesh.sequence_group)[:, :s.length]
        return {"img": x}
    return block


def _batching(mesh):
    """The sampler's cond batching. Every rank must run the same forward passes, but the host batches cond and
    uncond (and conditioning entries) by the device's free memory, which differs between ranks: here they are
    always batched. With cfg parallel, each sequence group runs its own half and the halves are swapped."""
    def calc_cond_batch(args):
        model, conds = args["model"], args["conds"]
        patcher = model.current_patcher
        patcher.get_free_memory = lambda device=None: float("inf")   # this instance, for this call only
        try:
            # cfg parallel: this group's pass only; else (one pass, or cfg 1) every group runs all
            split = mesh.cfg > 1 and len(conds) == mesh.cfg and all(c is not None for c in conds)
            out = comfy.samplers.calc_cond_batch(model, [conds[mesh.c]] if split else conds, args["input"],
                                                 args["sigma"], args["model_options"])
            return list(gather(out[0][None], mesh.cfg_group, dim=0).unbind(0)) if split else out
        finally:
            del patcher.get_free_memory
    return calc_cond_batch


def is_first_rank(model):
    """Whether this process is rank 0 of the model's mesh, whose results the host takes (True without a mesh)."""
    return MESH_KEY not in model.model_options.get("transformer_options", {}) or dist.get_rank() == 0


def agree(model, t):
    """`t` as rank 0 has it, on every rank of the model's mesh (what each rank computed alone, such as VAE
    encodings, may differ in the last bits between GPUs; the ranks' latents must not). Unchanged without a mesh."""
    mesh = model.model_options.get("transformer_options", {}).get(MESH_KEY)
    if mesh is None:
        return t
    where = t.device   # NCCL moves GPU tensors only; VAE outputs come back on the CPU
    t = t.to("cuda" if dist.get_backend() == "nccl" else where).contiguous()
    dist.broadcast(t, src=0)
    return t.to(where)


def cfg_total(model, values):
    """`values` (counts) summed over the cfg groups of the model's mesh: with cfg parallel each group counts its own
    pass (TeaCache's calls). Unchanged without one."""
    mesh = model.model_options.get("transformer_options", {}).get(MESH_KEY)
    if mesh is None or mesh.cfg_group is None:
        return values
    t = torch.tensor(values, dtype=torch.float64, device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t, group=mesh.cfg_group)
    return [round(v) for v in t.tolist()]


def patch(model, mesh):
    """A clone of `model` (a ModelPatcher) whose forward passes run on `mesh` (attention.usp.Mesh)."""
    m = video_attention.install(model, mesh)
    block = _blocks(video_attention.installed(m), mesh)
    m.set_model_sampler_calc_cond_batch_function(_batching(mesh))
    m.model_options["transformer_options"][MESH_KEY] = mesh
    for i in range(len(m.model.diffusion_model.blocks)):
        m.set_model_patch_replace(block, "dit", "double_block", i)
    return m
