"""Kosinkadink's ComfyUI-VideoHelperSuite (VHS), the pack most video workflows save and load with, beside this one in a
real ComfyUI server: the shipped long-video workflow (on generate_video_fp8's embedded tiny model) with VHS's Video
Combine in place of core's Create Video + Save Video, its animated latent previews, and its Load Video as the video
Sample Video continues.

VHS is found as tests/comfy_host.find_pack says ($COMFYUI_VHS_PATH, the host's custom_nodes, ~); without it, or
without the opencv and imageio-ffmpeg it needs (its requirements.txt), these tests are skipped, naming what is
missing."""
import asyncio
import glob
import importlib.util
import json
import os
import shutil
import uuid

import av
import numpy as np
import pytest
import torch
from PIL import Image

from comfy_host import REPO, describe_pack, find_pack
from server import Server, error_of

# VHS's lossless format, 16 bits a channel: its frames can be checked value for value against core's Save Image
FFV1 = {"loop_count": 0, "format": "video/ffv1-mkv", "pingpong": False, "save_output": True, "level": "3",
        "coder": "1", "context": "1", "gop_size": 1, "slices": "16", "slicecrc": "1", "pix_fmt": "rgba64le",
        "save_metadata": True, "trim_to_audio": False}


@pytest.fixture(scope="module")
def vhs_server(host, tmp_path_factory):
    pack = find_pack(host, "ComfyUI-VideoHelperSuite", "COMFYUI_VHS_PATH", marker="videohelpersuite/nodes.py")
    if pack is None:
        pytest.skip("ComfyUI-VideoHelperSuite not found: set COMFYUI_VHS_PATH, or lay it out at "
                    "~/ComfyUI-VideoHelperSuite")
    missing = [m for m in ("cv2", "imageio_ffmpeg") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"ComfyUI-VideoHelperSuite needs {' and '.join(missing)} (pip install opencv-python "
                    "imageio-ffmpeg)")
    print(describe_pack(pack))
    from generate_video_fp8 import prepare_demo
    base = str(tmp_path_factory.mktemp("vhs_base"))
    srv = Server(host, base)
    srv.extra_args += ["--preview-method", "latent2rgb"]      # previews on, as the frontend's setting asks
    shutil.copytree(pack, os.path.join(base, "custom_nodes", "ComfyUI-VideoHelperSuite"))
    names = prepare_demo(host, base)
    srv.start()
    try:
        assert "VHS_VideoCombine" in srv.get("/object_info"), srv.read_log()[-3000:]    # VHS failed to import
        yield srv, names
    finally:
        srv.stop()


def workflow_prompt(srv, names, argv):
    """The shipped long-video workflow in API form for the demo model, without its Create Video and Save Video."""
    from generate_video_fp8 import build_prompt, parse_args
    with open(os.path.join(REPO, "workflows", "skyreels_df_long_video.json"), encoding="utf-8") as f:
        workflow = json.load(f)
    prompt = build_prompt(workflow, srv.get("/object_info"), parse_args(argv), names, demo=True,
                          source=(64, 64, 25) if "--video_path" in argv else None)
    for key in [k for k, n in prompt.items() if n["class_type"] in ("CreateVideo", "SaveVideo", "ImageFromBatch",
                                                                   "BatchImagesNode", "ImageScale")]:
        del prompt[key]
    sample = next(k for k, n in prompt.items() if n["class_type"] == "SkyReelsSampleVideo")
    if "video_frames" in prompt:        # the video at the output's size: its frames go straight to Sample Video
        prompt[sample]["inputs"]["prefix_video"] = ["video_frames", 0]
    return prompt, sample


async def run_watched(srv, prompt, extra_data):
    """Runs a prompt with a websocket client connected, as the frontend does; returns (history entry, VHS preview
    events, binary preview messages)."""
    import aiohttp
    client, events, previews = str(uuid.uuid4()), [], 0
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{srv.url}/ws?clientId={client}") as ws:
            async with session.post(f"{srv.url}/prompt", json={"prompt": prompt, "client_id": client,
                                                              "extra_data": extra_data}) as r:
                body = await r.json()
                assert r.status == 200, body
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.BINARY:
                    previews += 1
                    continue
                data = json.loads(msg.data)
                if data["type"] == "VHS_latentpreview":
                    events.append(data["data"])
                # the last message of a prompt, after an error too, sent once its history is written
                if data["type"] == "executing" and data["data"].get("node") is None and \
                        data["data"].get("prompt_id") == body["prompt_id"]:
                    break
    return srv.get(f"/history/{body['prompt_id']}")[body["prompt_id"]], events, previews


def pngs(folder):
    return torch.from_numpy(np.stack([np.asarray(Image.open(p).convert("RGB"))
                                      for p in sorted(glob.glob(os.path.join(folder, "*.png")))]).astype(np.int64))


def test_video_combine_saves_sample_videos_frames_at_its_fps_with_animated_previews(vhs_server):
    srv, names = vhs_server
    prompt, sample = workflow_prompt(srv, names, ["--fps", "16"])      # 57 frames in 2 windows
    prompt["vhs"] = {"class_type": "VHS_VideoCombine", "inputs": {
        "images": [sample, 2], "frame_rate": [sample, 3], "filename_prefix": "vhs/video", **FFV1}}
    prompt["png"] = {"class_type": "SaveImage", "inputs": {"images": [sample, 2], "filename_prefix": "png/frame"}}
    # VHS's "Display animated previews when sampling" setting, as the frontend sends it
    extra = {"extra_pnginfo": {"workflow": {"extra": {"VHS_latentpreview": True}}}}
    entry, events, previews = asyncio.run(asyncio.wait_for(run_watched(srv, prompt, extra), 600))
    assert error_of(entry) is None, error_of(entry)
    report = next(o["text"][0] for o in entry["outputs"].values() if "text" in o)
    assert "2 window(s), 15 latent frames = 57 video frames" in report and ", fps 16" in report, report
    [saved] = entry["outputs"]["vhs"]["gifs"]
    assert saved["frame_rate"] == 16.0, saved
    with av.open(saved["fullpath"]) as c:
        rate = float(c.streams.video[0].average_rate)
        video = torch.from_numpy(np.stack([f.to_ndarray(format="rgb48le") for f in c.decode(video=0)]).astype(np.int64))
    frames = pngs(os.path.join(srv.base, "output", "png"))
    assert rate == 16.0 and video.shape == frames.shape == (57, 64, 64, 3), (rate, video.shape, frames.shape)
    # The same float frames: VHS rounds 65535 x to 16 bits, Save Image truncates 255 x to 8, and 65535 = 257 * 255,
    # so video / 257 - frame = round(257 y) / 257 - floor(y) (y = 255 x) lies in [0, 1]; the tiny model's frames
    # differ by tens of levels, so a frame out of place fails.
    gap = video / 257 - frames
    assert gap.min() >= 0 and gap.max() <= 1, (gap.min().item(), gap.max().item())
    # VHS's animated previews take Sample Video's per-step latents as they take KSampler's: [batch, 16, frames, h,
    # w], its first window's 10 latent frames here, all 10 sent on the first step
    assert [e["length"] for e in events] == [10] and events[0]["id"] == sample and previews >= 10, (events, previews)


def write_lossless_clip(path, frames, width, height):
    """An 8-bit RGB clip, lossless (PNG frames), whose frames differ (ramps moving 37 and 11 levels a frame): both
    loaders read its values exactly (core Load Video reads rgb24 as such, other formats through float planes)."""
    with av.open(str(path), "w") as c:
        stream = c.add_stream("png", rate=24)
        stream.width, stream.height, stream.pix_fmt = width, height, "rgb24"
        for i in range(frames):
            picture = np.full((height, width, 3), 128, dtype=np.uint8)
            picture[:, :, 0] = (np.arange(width) * 3 + i * 37) % 256
            picture[:, :, 1] = (np.arange(height)[:, None] * 5 + i * 11) % 256
            c.mux(stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")))
        c.mux(stream.encode())


def test_load_video_continues_a_video_as_core_load_video_does(vhs_server):
    srv, names = vhs_server
    write_lossless_clip(os.path.join(srv.base, "input", "video_path_clip.mov"), 25, 64, 64)
    argv = ["--video_path", "clip.mov", "--num_frames", "33"]
    runs = {}
    for loader in ("core", "vhs"):
        prompt, sample = workflow_prompt(srv, names, argv)     # core Load Video -> Get Video Components
        if loader == "vhs":
            del prompt["video"]
            prompt["video_frames"] = {"class_type": "VHS_LoadVideo", "inputs": {
                "video": "video_path_clip.mov", "force_rate": 0, "custom_width": 0, "custom_height": 0,
                "frame_load_cap": 0, "skip_first_frames": 0, "select_every_nth": 1}}
        for what, link in (("given", ["video_frames", 0]), ("made", [sample, 2])):
            prompt[what] = {"class_type": "SaveImage", "inputs": {"images": link,
                                                                  "filename_prefix": f"{loader}_{what}/frame"}}
        entry = srv.run(prompt)
        assert error_of(entry) is None, error_of(entry)
        report = next(o["text"][0] for o in entry["outputs"].values() if "text" in o)
        assert ", a video continued" in report, report
        runs[loader] = [pngs(os.path.join(srv.base, "output", f"{loader}_{what}")) for what in ("given", "made")]
    (core_given, core_made), (vhs_given, vhs_made) = runs["core"], runs["vhs"]
    assert core_given.shape == (25, 64, 64, 3) and core_made.shape == (33, 64, 64, 3), (core_given.shape,
                                                                                       core_made.shape)
    # an 8-bit RGB file: the same frames from either loader, and the same video made from them, value for value (the
    # loaders' frames of an H.264 file differ: core converts its YUV to float planes, VHS to 8-bit RGB through opencv)
    assert torch.equal(vhs_given, core_given) and torch.equal(vhs_made, core_made)
