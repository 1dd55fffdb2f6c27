"""Writes subgraphs/*.json, the pack's subgraph blueprints, from its workflows, by the real ComfyUI frontend: each
workflow opened in Chromium, its nodes but the outputs converted to one subgraph (Convert to Subgraph), the widgets a
user sets promoted (Promote Widget, as a user does it), and the subgraph node saved as the frontend's Publish Subgraph
saves one. Run by hand when a workflow changes (tests/host/test_host_workflows.py says when they differ):

    COMFYUI_PATH=~/ComfyUI python tests/data/make_blueprints.py
"""
import json
import os
import shutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path[:0] = [REPO, os.path.join(REPO, "tests"), os.path.join(REPO, "tests", "host")]
from comfy_host import find_host  # noqa: E402
from server import Server  # noqa: E402
from test_host_browser import WIDGET_POINT, close_dialogs  # noqa: E402

OUTSIDE = ["SaveVideo", "PreviewAny", "MarkdownNote", "LoadImage"]   # left out: they become the outputs / an input
# name (at most 32 characters: the node search finds no longer name): (workflow, [(node id, widget) promoted
# besides the prompts and seed, which the frontend promotes itself], {input: label}, category, description)
LABELS = {"text": "prompt", "text_1": "negative prompt", "model_name": "model", "clip_name": "text encoder",
          "vae_name": "vae"}
BLUEPRINTS = {
    "Text to Video (SkyReels-V2 FP8)": (
        "skyreels_t2v_fp8_sage", [(7, "width"), (7, "height"), (7, "frames"), (7, "steps"), (1, "model_name"),
                                  (3, "clip_name"), (6, "vae_name")], LABELS,
        "Video generation and editing/Text to video",
        "SkyReels-V2 text to video in FP8 with 8-bit attention: Load FP8 SkyReels Model, Patch SageAttention and "
        "Sample Video (SkyReels-V2's settings: cfg 6, shift 8, UniPC). The report output says what ran."),
    "Image to Video (SkyReels-V2 FP8)": (
        "skyreels_i2v_fp8_sage", [(10, "width"), (10, "height"), (10, "length"), (11, "steps"), (1, "model_name"),
                                  (3, "clip_name"), (6, "vae_name"), (7, "clip_name")],
        {**LABELS, "image": "start image", "length": "frames", "clip_name_1": "clip vision"},
        "Video generation and editing/Image to video",
        "SkyReels-V2 image to video (an I2V model) in FP8 with 8-bit attention, through core WanImageToVideo "
        "(SkyReels-V2's settings: cfg 5, shift 3). The report output says what ran."),
    "Long Video (SkyReels-V2 DF FP8)": (
        "skyreels_df_long_video", [(7, "width"), (7, "height"), (7, "frames"), (7, "steps"), (1, "model_name"),
                                   (3, "clip_name"), (6, "vae_name")], LABELS,
        "Video generation and editing/Text to video",
        "A long SkyReels-V2 video from a Diffusion Forcing model in FP8, made in overlapping windows as SkyReels-V2 "
        "makes it (97-frame windows overlapping by 17, synchronous: its 10 s command). The report output says what "
        "ran."),
}

CONVERT = """async (outside) => { const c = window.app.canvas, g = window.app.graph; c.deselectAll();
  for (const n of g.nodes) if (!outside.includes(n.type)) c.select(n);
  await window.app.extensionManager.command.execute("Comfy.Graph.ConvertToSubgraph");
  const s = g.nodes.find(n => n.isSubgraphNode?.()); c.openSubgraph(s.subgraph, s); return s.id; }"""
# As the frontend's publishSubgraph: the subgraph node alone, its subgraph as the one definition.
PUBLISH = """([id, name, labels, category, description]) => {
  const s = window.app.graph.getNodeById(id);
  for (const slot of [...s.inputs, ...s.subgraph.inputs]) if (labels[slot.name]) slot.label = labels[slot.name];
  s.size[0] = 400;     // as wide as core's blueprints: the title and the file names readable
  const {nodes, subgraphs} = window.app.canvas._serializeItems([s]);
  for (const input of nodes[0].inputs) input.link = null;
  Object.assign(subgraphs[0], {name, category, description});
  // As text, as the frontend saves a file: keys it left undefined are dropped, not written as null
  return JSON.stringify({revision: 0, last_node_id: id, last_link_id: 0, nodes, links: [], version: 0.4,
                         definitions: {subgraphs}});
}"""


def build(page, name, workflow, promote, labels, category, description):
    with open(os.path.join(REPO, "workflows", workflow + ".json"), encoding="utf-8") as f:
        page.evaluate("async (wf) => { await window.app.loadGraphData(wf); }", json.load(f))
    page.wait_for_timeout(1000)
    sub = page.evaluate(CONVERT, OUTSIDE)
    page.wait_for_timeout(500)
    for node, widget in promote:
        x, y = page.evaluate(WIDGET_POINT, [node, widget])
        page.mouse.click(x, y, button="right")
        page.locator(".litecontextmenu .litemenu-entry").filter(has_text=f"Promote Widget: {widget}").first.click()
        page.wait_for_timeout(300)
    page.evaluate("async () => { await window.app.extensionManager.command.execute('Comfy.Graph.ExitSubgraph'); }")
    return json.loads(page.evaluate(PUBLISH, [sub, name, labels, category, description]))


def main():
    from playwright.sync_api import sync_playwright

    base = tempfile.mkdtemp(prefix="skyreels-blueprints-")
    server = Server(find_host(), base).start()
    try:
        with sync_playwright() as p:
            chromium = shutil.which("chromium") or shutil.which("chromium-browser")
            browser = p.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.goto(server.url)
            page.wait_for_function("() => window.app && window.app.graph && "
                                   "Object.keys(LiteGraph.registered_node_types).length > 100", timeout=120_000)
            close_dialogs(page)
            os.makedirs(os.path.join(REPO, "subgraphs"), exist_ok=True)
            for name, spec in BLUEPRINTS.items():
                blueprint = build(page, name, *spec)
                with open(os.path.join(REPO, "subgraphs", name + ".json"), "w", encoding="utf-8") as f:
                    json.dump(blueprint, f, indent=2, ensure_ascii=False)
                    f.write("\n")
                print(f"subgraphs/{name}.json: inputs", [i["name"] for i in blueprint["nodes"][0]["inputs"]])
            browser.close()
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
