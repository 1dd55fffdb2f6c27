"""One Ray actor per device: joins the torch.distributed group, loads the model from the same file with this pack's
loader and runs the whole Sample Video on its share of the tokens; rank 0's LATENT goes back to the host.
Shipped to the actors by value (cloudpickle), so it imports nothing from the host at module level."""
import importlib.util
import os
import socket
import sys


# Attention options ComfyUI exits for at import where their package is missing (a worker on another machine)
NEEDS = {"use_sage_attention": "sageattention", "use_flash_attention": "flash_attn"}


def apply_host_args(cli_args, given):
    """The host's launch options (parallel_pool.host_args) on this process's ComfyUI, before anything reads them. An
    attention option this machine cannot run is left off, as ComfyUI would exit for it."""
    for name, value in given.items():
        if value and name in NEEDS and importlib.util.find_spec(NEEDS[name]) is None:
            continue
        if value and name == "use_ck_attention":
            import comfy_kitchen
            if not comfy_kitchen.int8_attention_is_available():
                continue
        if name == "fast":
            value = {cli_args.PerformanceFeature(v) for v in value}
        setattr(cli_args.args, name, value)


class Worker:
    def __init__(self, host, pack, cpu, threads, host_args=None):
        sys.path[:0] = [host]
        import torch
        torch.set_num_threads(threads)          # Ray sets OMP_NUM_THREADS to the actor's CPUs; say it to torch too
        if not cpu:
            torch.cuda.set_device(0)             # Ray's CUDA_VISIBLE_DEVICES leaves this actor its one GPU
        import comfy.cli_args
        apply_host_args(comfy.cli_args, host_args or {})
        comfy.cli_args.args.cpu = cpu
        spec = importlib.util.spec_from_file_location("skyreels_pack", os.path.join(pack, "__init__.py"),
                                                      submodule_search_locations=[pack])
        sys.modules["skyreels_pack"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules["skyreels_pack"])
        import comfy.model_management     # what main.py sets after loading custom nodes (--fast autotune)
        getattr(comfy.model_management, "set_cudnn_benchmark", lambda: None)()
        self.cpu, self.model = cpu, None

    def where(self):
        """(ip, pid) of this actor: the host waits for the processes of its own machine to exit."""
        import ray
        return ray.util.get_node_ip_address(), os.getpid()

    def address(self):
        """(ip, free port) of this actor's machine: rank 0's is the group's rendezvous."""
        import ray
        with socket.socket() as s:
            s.bind(("", 0))
            return ray.util.get_node_ip_address(), s.getsockname()[1]

    def join(self, address, port, rank, world, cfg, ring):
        import torch.distributed as dist
        from skyreels_pack.attention.usp import Mesh
        dist.init_process_group("gloo" if self.cpu else "nccl", init_method=f"tcp://{address}:{port}", rank=rank,
                                world_size=world)
        self.rank, self.mesh = rank, Mesh(cfg, ring)

    def load(self, recipe, sage, patches=None):
        import folder_paths
        from skyreels_pack.nodes.adapters import sequence_parallel
        from skyreels_pack.nodes.loader import LoadFP8SkyReelsModel
        from skyreels_pack.nodes.sage_patch import PatchSageAttention

        path = recipe["path"].rstrip(os.sep)
        folder_paths.add_model_folder_path("diffusion_models", os.path.dirname(path), is_default=True)
        name = os.path.basename(path) + ("/" if os.path.isdir(path) else "")
        model = LoadFP8SkyReelsModel.execute(name, recipe["weight_format"], recipe["compute"],
                                             recipe["keep_first_blocks"], recipe["keep_last_blocks"]).args[0]
        if patches:   # the host's LoRA patches, as its model holds them
            import uuid
            model = model.clone()
            model.patches = {k: list(v) for k, v in patches["patches"].items()}
            model.patches_uuid = uuid.UUID(patches["uuid"])
        if sage is not None:
            model = PatchSageAttention.execute(model, *sage).args[0]
        self.model = sequence_parallel.patch(model, self.mesh)

    def sample(self, conditioning, widgets, inputs, progress, preview=("none", 512), teacache=None):
        import comfy.cli_args
        import comfy.model_management
        import comfy.sd
        import comfy.utils
        import latent_preview
        import torch
        from skyreels_pack.nodes.adapters import teacache_hooks
        from skyreels_pack.nodes.sample import sample_video
        from skyreels_pack.sampling.teacache import TeaCache
        inputs = dict(inputs)
        if inputs.get("vae") is not None:   # the host's VAE weights, in Ray's object store
            import ray
            inputs["vae"] = comfy.sd.VAE(sd=ray.get(inputs["vae"]))
        # The host's preview method of this prompt (its launch option or the frontend's setting) and size: rank 0
        # makes the previews the host shows, the other ranks none.
        method, size = preview if self.rank == 0 else ("none", preview[1])
        comfy.cli_args.args.preview_method = comfy.cli_args.LatentPreviewMethod(method)
        latent_preview.MAX_PREVIEW_RESOLUTION = size
        if self.rank == 0:   # the host shows rank 0's progress bar, and its previews
            comfy.utils.set_progress_bar_global_hook(
                lambda value, total, preview=None, node_id=None: progress.put_nowait((value, total, preview)))
        model = self.model    # TeaCache (threshold, retention steps) around sequence parallel's blocks, for this run
        if teacache is not None:
            model = teacache_hooks.install(model, TeaCache(*teacache))
        # No autograd, as the host's nodes run (in inference mode, which would need the loading in it too): a
        # latent from the worker's VAE (a start image) carried a graph through every step, holding their activations
        with torch.no_grad():
            result = sample_video(model, *conditioning, **widgets, **inputs)
        del inputs
        comfy.model_management.soft_empty_cache()   # kept workers hold the model, not this run's activations
        return result if self.rank == 0 else None
