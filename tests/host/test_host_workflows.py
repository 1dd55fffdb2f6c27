"""The shipped workflows, end to end on the real host (CPU): each UI-format file is turned into the prompt the
frontend would queue (workflows/api.py), run on tiny files with the workflows' own file names, to a video file.

Substituted at the smallest boundary, and only there: CLIPLoader + CLIPTextEncode by TestWanConditioning, and
CLIPVisionLoader + CLIPVisionEncode by TestClipVisionOutput (tests/host/helper_nodes: the host's loaders build
full-size umt5-xxl / ViT-H models whatever the file holds). Sizes, frames and steps are made small; every other
widget keeps the workflow's value.
"""
import glob
import json
import os
import re

import av
import pytest
from server import PACK, error_of

from workflows.api import ui_to_api

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORKFLOWS = os.path.join(REPO, "workflows")
NAMES = ["skyreels_t2v_fp8_sage.json", "skyreels_i2v_fp8_sage.json", "skyreels_df_long_video.json",
         "skyreels_convert_to_fp8.json", "skyreels_df_start_end_frames.json"]
# fps 16, not the workflows' 24: the file must play at Sample Video's fps (its fps output into Create Video)
SMALL = dict(width=32, height=32, frames=9, steps=3, fps=16)
# The long-video workflow keeps its Diffusion Forcing settings (SkyReels-V2's synchronous 10 s command: ar_step 0,
# addnoise 20) on a shorter video: 57 frames in windows of 37 frames overlapping by 17 (latent 15 = 10 + 5).
SMALL_DF = {"width": 32, "height": 32, "frames": 57, "mode.base_num_frames": 37, "mode.overlap_history": 17, "steps": 3,
            "fps": 16}


def load(name):
    with open(os.path.join(WORKFLOWS, name), encoding="utf-8") as f:
        return json.load(f)


def small_prompt(name, object_info):
    prompt = ui_to_api(load(name), object_info)
    for node_id, node in list(prompt.items()):
        kind, inputs = node["class_type"], node["inputs"]
        if kind in ("CLIPLoader", "CLIPVisionLoader"):
            del prompt[node_id]
        elif kind == "CLIPTextEncode":
            prompt[node_id] = {"class_type": "TestWanConditioning", "inputs": {"seed": int(node_id), "tokens": 8}}
        elif kind == "CLIPVisionEncode":
            prompt[node_id] = {"class_type": "TestClipVisionOutput", "inputs": {"seed": int(node_id)}}
        elif kind == "SkyReelsSampleVideo":
            inputs.update(SMALL_DF if inputs["mode"] == "diffusion forcing" else SMALL)
        elif kind == "WanImageToVideo":
            inputs.update(width=SMALL["width"], height=SMALL["height"], length=SMALL["frames"])
        elif kind == "SaveVideo":
            inputs["filename_prefix"] = "workflows/" + name.split(".")[0]
    return prompt


def frames_of(path):
    with av.open(path) as container:
        stream = container.streams.video[0]
        return sum(1 for _ in container.decode(video=0)), stream.width, stream.height, stream.average_rate


def test_workflows_are_served_as_the_packs_templates(server):
    index = server.get("/api/workflow_templates")
    assert sorted(index[PACK]) == sorted(n[:-len(".json")] for n in NAMES)
    for name in NAMES:
        assert server.get(f"/api/workflow_templates/{PACK}/{name}") == load(name)


# The subgraph blueprints in subgraphs/ and the workflows they are made of (tests/data/make_blueprints.py).
BLUEPRINTS = {"Text to Video (SkyReels-V2 FP8)": NAMES[0], "Image to Video (SkyReels-V2 FP8)": NAMES[1],
              "Long Video (SkyReels-V2 DF FP8)": NAMES[2]}


def load_blueprint(name):
    with open(os.path.join(REPO, "subgraphs", name + ".json"), encoding="utf-8") as f:
        return json.load(f)


def test_blueprints_are_served_as_the_packs_subgraphs(server):
    # The frontend lists what /global_subgraphs gives under Subgraph Blueprints in the node library and the search.
    listed = server.get("/global_subgraphs").items()
    ours = {k: v for k, v in listed if v["info"]["node_pack"] == f"custom_nodes.{PACK}"}
    assert sorted(v["name"] for v in ours.values()) == sorted(BLUEPRINTS)
    for key, entry in ours.items():
        assert json.loads(server.get(f"/global_subgraphs/{key}")["data"]) == load_blueprint(entry["name"])


def wiring(nodes, links):
    """{(from node, its output, to node, its input)} of `links` ([id, from, slot, to, slot] lists) that join two of
    `nodes`, read as the frontend reads them: the input by the link id it holds (a slot number can be stale)."""
    by_id, links = {n["id"]: n for n in nodes}, {link[0]: link for link in links}
    joined = [(links[i["link"]], n["id"], i["name"])
              for n in nodes for i in n.get("inputs", []) if i.get("link") in links]
    return {(a, by_id[a]["outputs"][slot]["name"], b, name) for (_, a, slot, *_), b, name in joined if a in by_id}


def node_values(node):
    return node["type"], node.get("widgets_values", []), node["properties"].get("models")


@pytest.mark.parametrize("name", BLUEPRINTS)
def test_blueprint_is_its_workflow_in_one_node(name):
    # The nodes of the workflow but its outputs (and I2V's Load Image), with the same widget values and links; the
    # widgets promoted onto the blueprint's node hold the same values. After a workflow changes, run
    # tests/data/make_blueprints.py.
    blueprint, workflow = load_blueprint(name), load(BLUEPRINTS[name])
    [node], [sub] = blueprint["nodes"], blueprint["definitions"]["subgraphs"]
    assert (node["type"], sub["name"]) == (sub["id"], name)
    # where the node library puts it, the text it shows, and the loaders' download links (Missing Models)
    assert sub["category"].startswith("Video generation and editing/") and "SkyReels-V2" in sub["description"]
    kept = [n for n in workflow["nodes"] if n["type"] not in ("SaveVideo", "PreviewAny", "MarkdownNote", "LoadImage")]
    assert {n["id"]: node_values(n) for n in sub["nodes"]} == {n["id"]: node_values(n) for n in kept}
    links = [[k["id"], k["origin_id"], k["origin_slot"], k["target_id"], k["target_slot"]] for k in sub["links"]]
    inside = wiring(sub["nodes"], links)
    assert inside == wiring(kept, workflow["links"]) and len(inside) >= 8, inside
    inner, promoted = {n["id"]: n for n in sub["nodes"]}, {}
    for link in (k for k in sub["links"] if k["origin_id"] == sub["inputNode"]["id"]):
        target = inner[link["target_id"]]
        widget = target["inputs"][link["target_slot"]].get("widget")
        if widget:
            promoted[sub["inputs"][link["origin_slot"]]["name"]] = target["widgets_values_named"][widget["name"]]
    assert dict(zip([i["name"] for i in node["inputs"] if i.get("widget")], node["widgets_values"])) == promoted
    assert len(promoted) == len(node["widgets_values"]) >= 9, promoted


def pack_release():
    with open(os.path.join(REPO, "pyproject.toml"), encoding="utf-8") as f:
        text = f.read()
    [(name, version)] = re.findall(r'^\[project\]\nname = "([^"]+)"\nversion = "([^"]+)"', text, re.M)
    [oldest] = re.findall(r'^requires-comfyui = ">=([\d.]+)"', text, re.M)
    [display] = re.findall(r'^DisplayName = "([^"]+)"', text, re.M)
    return name, version, oldest, display


def test_every_node_names_the_pack_and_version_it_needs(server):
    # What ComfyUI-Manager's workflow-metadata.js writes into each node a user adds (a node from custom_nodes gets its
    # pack's registry id and version, one from nodes / comfy_extras / comfy_api_nodes "comfy-core" and a ComfyUI
    # version), and what the frontend's missing-nodes dialog and the Manager's Install Missing Custom Nodes read: the
    # pack is found by its id, not by a registry look-up of each node's name, and a ComfyUI lacking a core node is
    # named as too old. Ours give the oldest ComfyUI the pack loads on, not the one that saved them.
    pack, version, oldest, _ = pack_release()
    info = server.get("/object_info")
    checked = set()
    for name in NAMES + [b + ".json" for b in BLUEPRINTS]:
        workflow = load(name) if name in NAMES else load_blueprint(name[:-len(".json")])
        subgraphs = (workflow.get("definitions") or {}).get("subgraphs", [])
        nodes = workflow["nodes"] + [n for s in subgraphs for n in s["nodes"]]
        for node in nodes:
            if node["type"] not in info:      # the frontend's own nodes (Markdown Note) and the blueprints' subgraph
                assert "cnr_id" not in node["properties"], (name, node["type"])
                continue
            module = info[node["type"]]["python_module"]
            expected = (pack, version) if module == f"custom_nodes.{PACK}" else ("comfy-core", oldest)
            assert module.split(".")[0] in ("custom_nodes", "nodes", "comfy_extras", "comfy_api_nodes"), module
            assert (node["properties"].get("cnr_id"), node["properties"].get("ver")) == expected, (name, node["type"])
            checked.add(node["type"])
    assert len(checked) == 15, checked


def test_workflows_carry_real_model_defaults():
    t2v = {n["type"]: n["widgets_values"] for n in load(NAMES[0])["nodes"]}
    assert t2v["SkyReelsFP8ModelLoader"][0] == "SkyReels-V2-T2V-14B-540P/"
    assert t2v["SkyReelsSampleVideo"][:3] == [960, 544, 97]
    assert t2v["CLIPLoader"][:2] == ["umt5_xxl_fp8_e4m3fn_scaled.safetensors", "wan"]
    assert t2v["VAELoader"] == ["wan_2.1_vae.safetensors"]
    df = {n["type"]: n["widgets_values"] for n in load(NAMES[2])["nodes"]}
    assert df["SkyReelsSampleVideo"][2] == 257 and df["SkyReelsSampleVideo"][10] == "diffusion forcing"
    # SkyReels-V2's README command for a 10 s video: synchronous, so the blueprint's frames take any 4k+1
    assert df["SkyReelsSampleVideo"][11:16] == [97, 17, 0, 1, 20]
    # each its script's negative prompt: generate_video.py's English one, generate_video_df.py's Chinese one (abed76f)
    negative = {name: next(n["widgets_values"][0] for n in load(name)["nodes"] if n.get("title") == "Negative prompt")
                for name in NAMES if name != "skyreels_convert_to_fp8.json"}
    assert {text[:12] for text in negative.values()} == {"Bright tones", "色调艳丽，过曝，静态，细"}, negative
    assert [name for name, text in negative.items() if text.startswith("色调")] == [NAMES[2], NAMES[4]], negative


@pytest.mark.parametrize("name,frames", [(NAMES[0], 9), (NAMES[1], 9), (NAMES[2], 57), (NAMES[4], 57)])
def test_video_workflow_runs_to_a_video_file(server, name, frames):
    entry = server.run(small_prompt(name, server.get("/object_info")))
    err = error_of(entry)
    assert err is None, (err["exception_message"], "".join(err["traceback"][-4:]))
    videos = glob.glob(os.path.join(server.base, "output", "workflows", name.split(".")[0] + "_*.mp4"))
    assert len(videos) == 1, videos
    assert frames_of(videos[0]) == (frames, 32, 32, 16)
    report = "".join(t for out in entry["outputs"].values() for t in out.get("text", []))
    assert report.startswith("Sample Video: ") and f"= {frames} video frames" in report
    assert re.search(r"Linear weights: \d+ float8_e4m3fn", report)   # bf16 release folder converted while loading
    # The test server runs ComfyUI with --cpu (also on a GPU runner), where auto has no 8-bit backend and every
    # call is exact; on a GPU auto would name its backend here with a nonzero count (bench/gpu_check.sh).
    assert re.search(r"attention: auto - 0 calls 8-bit, \d+ exact", report) and " 0 exact" not in report
    if name == NAMES[2]:
        assert "2 window(s)" in report and "(through the VAE)" in report and "ar_step 0, " in report
    if name == NAMES[4]:      # start and end images, and the second window's own prompt
        assert "2 window(s)" in report and ", end image" in report


def test_convert_workflow_writes_the_fp8_file(server):
    entry = server.run(small_prompt(NAMES[3], server.get("/object_info")))
    err = error_of(entry)
    assert err is None, err and err["exception_message"]
    out = os.path.join(server.base, "models", "diffusion_models", "SkyReels-V2-DF-1.3B-540P_fp8_e4m3fn.safetensors")
    assert os.path.isfile(out)
    text = "".join(t for o in entry["outputs"].values() for t in o.get("text", []))
    assert "wrote models/diffusion_models/SkyReels-V2-DF-1.3B-540P_fp8_e4m3fn.safetensors" in text
    # Another model picked in the template: its file is named after it (the template used to carry the DF-1.3B name).
    prompt = small_prompt(NAMES[3], server.get("/object_info"))
    next(n for n in prompt.values() if n["class_type"] == "SkyReelsConvertToFP8")["inputs"]["model_name"] = \
        "SkyReels-V2-T2V-14B-540P/"
    err = error_of(server.run(prompt))
    assert err is None, err and err["exception_message"]
    assert os.path.isfile(out.replace("DF-1.3B", "T2V-14B"))


LOADER_FOLDERS = {"CLIPLoader": "text_encoders", "VAELoader": "vae", "CLIPVisionLoader": "clip_vision"}


def template_downloads():
    """{(file name, folder): download addresses} in the workflow templates installed with the host."""
    import importlib.util
    spec = importlib.util.find_spec("comfyui_workflow_templates_json")
    assert spec, "comfyui-workflow-templates is one of the host's requirements"
    found = {}
    for path in glob.glob(os.path.join(spec.submodule_search_locations[0], "templates", "*.json")):
        with open(path, encoding="utf-8") as f:
            workflow = json.load(f)
        nodes = list(workflow.get("nodes", [])) if isinstance(workflow, dict) else []
        for graph in (workflow.get("definitions") or {}).get("subgraphs", []) if nodes else []:
            nodes += graph.get("nodes", [])
        for node in nodes:
            for model in (node.get("properties") or {}).get("models") or []:
                found.setdefault((model.get("name"), model.get("directory")), set()).add(model.get("url"))
    return found


def test_core_model_files_carry_the_download_comfyuis_own_templates_give():
    known = template_downloads()
    checked = 0
    for name in NAMES:
        for node in load(name)["nodes"]:
            folder = LOADER_FOLDERS.get(node["type"])
            if folder is None:
                continue
            [model] = node["properties"]["models"]
            assert model["name"] == node["widgets_values"][0] and model["directory"] == folder, (name, model)
            assert model["url"] in known.get((model["name"], folder), ()), (name, model)
            checked += 1
    assert checked == 9      # CLIP and VAE in the four video workflows, CLIP Vision in I2V


def test_named_widget_values_agree_with_the_widget_values():
    # The frontend's restore-by-name setting reads widgets_values_named; it must hold what widgets_values holds.
    for name in NAMES:
        for node in load(name)["nodes"]:
            if "widgets_values_named" in node:
                assert list(node["widgets_values_named"].values()) == node["widgets_values"], (name, node["type"])


def test_every_link_names_the_slots_that_hold_it():
    # A link is [id, from node, output slot, to node, input slot, type]; the frontend of 0.33 mends a stale slot
    # number on load, an older one or a script reading the file (ui_to_api) may follow it to the wrong input.
    for name in NAMES:
        workflow = load(name)
        nodes = {n["id"]: n for n in workflow["nodes"]}
        for link_id, a, out, b, into, kind in workflow["links"]:
            assert link_id in (nodes[a]["outputs"][out].get("links") or []), (name, link_id)
            assert nodes[b]["inputs"][into]["link"] == link_id and nodes[b]["inputs"][into]["type"] in (kind, "*"), \
                (name, link_id, nodes[b]["inputs"][into]["name"])


def test_ui_to_api_refuses_values_that_do_not_fit_and_muted_nodes():
    # generate_video_fp8.py sends the shipped workflows through ui_to_api: a host whose node lost a widget (or a
    # workflow from another version) is named, not sent with every later value on the wrong widget; a muted or
    # bypassed node is refused, never run as if active.
    info = {"KSampler": {"input": {"required": {"seed": ["INT", {"control_after_generate": True}],
                                                "steps": ["INT", {}], "model": ["MODEL", {}]}},
                         "input_order": {"required": ["seed", "steps", "model"]}}}

    def workflow(values, mode=0):
        return {"nodes": [{"id": 3, "type": "KSampler", "mode": mode, "widgets_values": values, "inputs": []}],
                "links": []}

    assert ui_to_api(workflow([7, "fixed", 20]), info) == {"3": {"class_type": "KSampler",
                                                                 "inputs": {"seed": 7, "steps": 20}}}
    with pytest.raises(ValueError, match=r"^node 3 \(KSampler\): 4 widget values for 3$"):
        ui_to_api(workflow([7, "fixed", 20, "euler"]), info)
    for mode in (2, 4):     # the frontend's muted and bypassed
        with pytest.raises(ValueError, match=r"^node 3 \(KSampler\) is muted or bypassed; not supported$"):
            ui_to_api(workflow([7, "fixed", 20], mode), info)
