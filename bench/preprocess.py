#!/usr/bin/env python3
"""How far the host's image preprocessing is from SkyReels-V2's scripts' (a check, not a timing; CPU, seconds).

    python bench/preprocess.py SKYREELS_V2_DIR [--host PATH]

SKYREELS_V2_DIR: a SkyReels-V2 checkout (skyreels_v2_infer/, assets/main_pipeline.jpg, the 1080p clips
skycaptioner_v1/examples/data/*.mp4: the photos are their first frames), plus a seeded noisy picture.
(a) I2V: the 224x224 tensor each side hands the CLIP vision model, relative L2. Host: --image as generate_video_fp8.py
writes it (crop to 960:544, PIL Lanczos, PNG), Load Image, CLIP Vision Encode's comfy.clip_model.clip_preprocess with
crop "none" (the I2V workflow's). SkyReels-V2: its own functions, run here: load_image, resizecrop,
VideoProcessor.preprocess, bf16, CLIPModel.encode_video (its ViT a stub that keeps its input).
(b) --video_path: frames resized to 960x544, mean |host - ffmpeg| in 0-255 levels over 3 frames. Host: Load Video's
decode (VideoFromFile, float RGB) then Upscale Image (crop disabled, as generate_video_fp8.py sets it; each of its
methods but nearest-exact). SkyReels-V2's reader (decord) runs the decoded yuv frames through the ffmpeg filter graph
"scale=W:H" to rgb24; here the same graph through PyAV, flags=bicubic (ffmpeg's default). "resize alone": both
sides from the host's frames rounded to 8 bits. Other sizes of the clips are their frames resized by ffmpeg (lanczos);
the noisy picture is drawn at each size; every input is stored losslessly (FFV1) and read by both sides.
"""
import argparse
import datetime
import glob
import os
import platform
import shutil
import sys
import tempfile
import types
from fractions import Fraction

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPO, os.path.join(REPO, "tests")]

import av  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from bf16_forward import import_skyreels  # noqa: E402
from comfy_host import find_host  # noqa: E402
from generate_video_fp8 import write_image  # noqa: E402

W, H = 960, 544                                          # SkyReels-V2's 540P size
SIZES = ((1920, 1080), (1280, 720), (W, H), (640, 360))  # shrinking, the output size, enlarging
METHODS = ("bicubic", "lanczos", "area", "bilinear")                  # Upscale Image's, but nearest-exact
BICUBIC = [("scale", f"{W}:{H}:flags=bicubic"), ("format", "rgb24")]     # decord's graph (its sink takes rgb24)


def noisy(w, h):
    """A seeded picture that is mostly noise: a smooth ramp plus Gaussian noise (sigma 32 levels)."""
    ramp = np.linspace(40, 215, w)[None, :, None] + np.linspace(-20, 20, h)[:, None, None]
    return np.clip(ramp + np.random.default_rng(0).normal(0, 32, (h, w, 3)), 0, 255).astype(np.uint8)


def graph(frame, filters):
    """`frame` through an ffmpeg filter graph of `filters` ((name, args) pairs)."""
    g = av.filter.Graph()
    src = g.add_buffer(width=frame.width, height=frame.height, format=frame.format.name, time_base=Fraction(1, 24))
    g.link_nodes(src, *(g.add(*f) for f in filters), g.add("buffersink")).configure()
    g.push(frame)
    return g.pull()


def write_ffv1(path, frames):
    with av.open(path, "w") as out:
        s = out.add_stream("ffv1", rate=24)
        s.width, s.height, s.pix_fmt = frames[0].width, frames[0].height, "yuv420p"
        for f in frames:
            f.pts = None
            out.mux(s.encode(f))
        out.mux(s.encode())


def load_skyreels(skyreels_dir):
    import_skyreels(skyreels_dir)
    from skyreels_v2_infer.modules import clip
    from skyreels_v2_infer.pipelines.image2video_pipeline import resizecrop
    # its transforms as CLIPModel builds them (clip_xlm_roberta_vit_h_14 -> _clip), without the ViT-H weights
    vit = type("ViT", (torch.nn.Module,), {"image_size": 224})
    _, transforms = clip._clip(pretrained_name="open-clip-xlm-roberta-large-vit-huge-14", model_cls=vit,
                               return_transforms=True)
    return types.SimpleNamespace(clip=clip, resizecrop=resizecrop, transforms=transforms)


def skyreels_clip_input(sr, path):
    """generate_video.py: load_image, resizecrop, .convert("RGB"); Image2VideoPipeline.__call__: VideoProcessor
    .preprocess, the transformer's dtype (bf16), unsqueeze(2), CLIPModel.encode_video. (960x544 image, CLIP input)"""
    from diffusers.utils import load_image
    from diffusers.video_processor import VideoProcessor
    picture = sr.resizecrop(load_image(path), H, W).convert("RGB")
    img = VideoProcessor(vae_scale_factor=16).preprocess(picture, height=H, width=W)
    seen = []
    stub = types.SimpleNamespace(dtype=torch.bfloat16, device=torch.device("cpu"), transforms=sr.transforms,
                                 model=types.SimpleNamespace(image_size=224, visual=lambda x, **_: seen.append(x)))
    sr.clip.CLIPModel.encode_video(stub, img.to(torch.bfloat16).unsqueeze(2))
    return img, seen[0].float()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("skyreels_dir", help="a SkyReels-V2 checkout (skyreels_v2_infer, assets, skycaptioner_v1)")
    p.add_argument("--host", help="ComfyUI folder (default: found as the tests find it)")
    args = p.parse_args()
    host = args.host or find_host() or sys.exit("no ComfyUI host found: set COMFYUI_PATH or pass --host")
    sys.path.insert(0, host)                             # before the pack: its `nodes` is not ours
    import comfy.cli_args
    comfy.cli_args.args.cpu = True
    import comfy.clip_model
    import folder_paths
    import nodes
    from comfy_api.latest import InputImpl
    sr = load_skyreels(args.skyreels_dir)
    print(f"{datetime.date.today()}, device: CPU ({platform.machine()}, {os.cpu_count()} cores), torch "
          f"{torch.__version__}, PyAV {av.__version__} (libswscale {av.library_versions['libswscale']}); host {host}")
    folder = tempfile.mkdtemp(prefix="skyreels-preprocess-")
    folder_paths.set_input_directory(folder)             # Load Image reads its input folder only
    clips = {}
    for path in sorted(glob.glob(os.path.join(args.skyreels_dir, "skycaptioner_v1/examples/data/*.mp4"))):
        with av.open(path) as f:
            clips[os.path.basename(path)] = [fr for _, fr in zip(range(3), f.decode(video=0))]
    print("clips: " + ", ".join(f"{n} {v[0].width}x{v[0].height} {v[0].format.name}" for n, v in clips.items()))

    pictures = {n + " frame 0": v[0].to_image() for n, v in clips.items()}
    pictures["main_pipeline.jpg (diagram)"] = Image.open(os.path.join(args.skyreels_dir, "assets/main_pipeline.jpg"))
    pictures["noisy picture"] = Image.fromarray(noisy(1920, 1080))
    print(f"\n(a) CLIP input 224x224, |host - SkyReels-V2| / |SkyReels-V2|; the {W}x{H} images both sides resize")
    for name, picture in pictures.items():
        src = os.path.join(folder, "src.png")
        picture.convert("RGB").save(src)
        write_image(src, os.path.join(folder, "image.png"), (W, H))
        image = nodes.LoadImage().load_image("image.png")[0]
        # encode_image(crop=False) -> clip_preprocess; clip_vision_h's size, mean and std are its defaults
        ours = comfy.clip_model.clip_preprocess(image, size=224, crop=False).float()
        img, theirs = skyreels_clip_input(sr, src)
        apart = (image.movedim(-1, 1) * 2 - 1 - img).abs().max().item() * 127.5
        rel = 100 * (ours - theirs).norm() / theirs.norm()
        print(f"  {name:30s} {picture.size[0]:>4d}x{picture.size[1]:<5d} {rel:5.1f}%   "
              f"({W}x{H} images: at most {apart:.2g} levels apart)")

    print(f"\n(b) video frames to {W}x{H}, mean |host - ffmpeg bicubic| in 0-255 levels, 3 frames")
    print(f"  {'input':30s} {'size':10s} " + " ".join(f"{m:>8s}" for m in METHODS) + "   resize alone: "
          + " ".join(f"{m:>8s}" for m in METHODS))
    for w, h in SIZES:
        inputs = {n: [graph(f, [("scale", f"{w}:{h}:flags=lanczos")]) for f in v] for n, v in clips.items()}
        inputs["noisy picture"] = [av.VideoFrame.from_ndarray(noisy(w, h), format="rgb24").reformat(format="yuv420p")]
        for name, frames in inputs.items():
            path = os.path.join(folder, "video.mkv")
            write_ffv1(path, frames)
            images = InputImpl.VideoFromFile(path).get_components().images       # what Load Video gives
            with av.open(path) as f:
                ref = np.stack([graph(fr, BICUBIC).to_ndarray() for fr in f.decode(video=0)])
            rgb = (images * 255).round().clamp(0, 255).to(torch.uint8)
            alone = np.stack([graph(av.VideoFrame.from_ndarray(i, format="rgb24"), BICUBIC).to_ndarray()
                              for i in rgb.numpy()])
            mad = [(nodes.ImageScale().upscale(x, m, W, H, "disabled")[0] * 255 - torch.from_numpy(r)).abs().mean()
                   for x, r in ((images, ref), (rgb / 255, alone)) for m in METHODS]
            print(f"  {name:30s} {f'{w}x{h}':10s} " + " ".join(f"{float(m):8.2f}" for m in mad[:len(METHODS)])
                  + " " * 17 + " ".join(f"{float(m):8.2f}" for m in mad[len(METHODS):]))
    shutil.rmtree(folder)


if __name__ == "__main__":
    main()
