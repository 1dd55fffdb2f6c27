"""The pack in the real ComfyUI frontend, in Debian's Chromium (headless, driven by Playwright): the nodes in the
node library under their names, every shipped workflow opened from the template browser without a missing-node
or widget error, and the T2V workflow queued with the Run button until its video shows in the page; each subgraph
blueprint (subgraphs/) added from the node search and run the same way. Also: every file against the frontend's
workflow schema, the missing-nodes panel of a user without the pack, the workflows in Nodes 2.0 and in App Mode.

Substituted at the smallest boundary, as in test_host_workflows.py: in the opened T2V graph the two CLIP Text
Encode nodes become TestWanConditioning (the host's CLIPLoader builds a full-size umt5-xxl whatever the file
holds), and the size is made small. The screenshot of the finished run is kept in $TEST_ARTIFACTS (default
test-artifacts/ in the repository).
"""
import contextlib
import json
import os
import re
import shutil

import pytest

from comfy_host import REPO
from server import PACK

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
NAMES = ["Load FP8 SkyReels Model", "Convert to FP8", "Patch SageAttention", "Sample Video", "TeaCache (SkyReels-V2)"]
WORKFLOWS = ["skyreels_t2v_fp8_sage", "skyreels_i2v_fp8_sage", "skyreels_df_long_video", "skyreels_convert_to_fp8",
             "skyreels_df_start_end_frames"]
OLD_WORKFLOWS = os.path.join(REPO, "tests", "data", "workflows_before_dynamic_mode")
ARTIFACTS = os.environ.get("TEST_ARTIFACTS", os.path.join(REPO, "test-artifacts"))

# In `graph`, each CLIP Text Encode replaced by the test conditioning node and each CLIP Vision Encode by the test
# vision output, wired to the same inputs, and their loaders dropped.
TEST_ENCODERS = """const toTestNodes = (graph) => {
  let seed = 1;
  for (const old of graph.nodes.filter(n => n.type === "CLIPTextEncode" || n.type === "CLIPVisionEncode")) {
    const node = LiteGraph.createNode(old.type === "CLIPTextEncode" ? "TestWanConditioning" : "TestClipVisionOutput");
    graph.add(node);
    node.pos = [old.pos[0], old.pos[1]];
    node.widgets.find(w => w.name === "seed").value = seed++;
    if (old.type === "CLIPTextEncode") node.widgets.find(w => w.name === "tokens").value = 8;
    for (const id of [...(old.outputs[0].links || [])]) {
      const link = graph.links.get ? graph.links.get(id) : graph.links[id];
      node.connect(0, graph.getNodeById(link.target_id), link.target_slot);
    }
    graph.remove(old);
  }
  for (const n of graph.nodes.filter(n => n.type === "CLIPLoader" || n.type === "CLIPVisionLoader")) graph.remove(n);
};
"""
# The test encoders in the workflow, and the run made small (every other widget keeps the workflow's value).
SUBSTITUTE = """() => {
  const graph = window.app.graph;
  """ + TEST_ENCODERS + """  toTestNodes(graph);
  const sample = graph.nodes.find(n => n.type === "SkyReelsSampleVideo");
  const set = (name, value) => { sample.widgets.find(w => w.name === name).value = value; };
  set("width", 32); set("height", 32); set("frames", 9); set("steps", 2);
  const control = sample.widgets.find(w => w.name === "control_after_generate");
  if (control) control.value = "fixed";
  graph.setDirtyCanvas(true, true);
  return graph.nodes.map(n => n.type);
}"""


@pytest.fixture(scope="module")
def page(server):
    if CHROMIUM is None:
        pytest.fail("Chromium not found: install Debian's chromium (.ci/run does) to run the browser test")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (.ci/run does)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.errors = []
        page.on("pageerror", lambda e: page.errors.append(str(e)))
        page.goto(server.url)
        page.wait_for_function("() => window.app && window.app.graph && window.LiteGraph && "
                               "Object.keys(LiteGraph.registered_node_types).length > 100", timeout=120_000)
        yield page
        browser.close()


def close_dialogs(page):
    """Close what the frontend opens by itself (the template browser on a first visit)."""
    for _ in range(5):
        page.wait_for_timeout(800)
        if page.locator('[role="dialog"]').filter(visible=True).count() == 0:
            return
        page.keyboard.press("Escape")
    os.makedirs(ARTIFACTS, exist_ok=True)
    page.screenshot(path=os.path.join(ARTIFACTS, "dialog_left_open.png"))


def set_setting(page, key, value):
    """A frontend setting, as its Settings dialog sets it."""
    page.evaluate("async ([k, v]) => { await window.app.extensionManager.setting.set(k, v); }", [key, value])


def open_template(page, name):
    """Templates in the sidebar -> this pack's entry under Extensions -> the workflow's card, as a user does."""
    close_dialogs(page)
    page.locator('button[aria-label="Templates"]').filter(visible=True).first.click()
    page.get_by_text("ComfyUI-SkyReels", exact=False).first.click()
    page.get_by_test_id(f"template-workflow-{name}").click()
    page.wait_for_function(f"() => window.app.graph.nodes.length > 0 && "
                           f"document.title.includes('{name[:12]}')", timeout=30_000)
    page.wait_for_timeout(1000)


def test_nodes_are_in_the_node_library(page):
    close_dialogs(page)
    page.locator('button[aria-label="Node Library (n)"]').filter(visible=True).first.click()
    page.wait_for_timeout(1000)
    os.makedirs(ARTIFACTS, exist_ok=True)
    page.screenshot(path=os.path.join(ARTIFACTS, "node_library.png"))
    search = page.get_by_placeholder(re.compile(r"^Search( Nodes)?\.\.\.$")).filter(visible=True).first    # 1.58: "Nodes"
    for name in NAMES:
        search.fill(name)
        page.wait_for_timeout(800)
        assert page.get_by_text(name, exact=True).filter(visible=True).count() >= 1, name


# What a user may type for each node in the node search box (the nodes' search_aliases): none of these found the
# node by its name alone ("diffusion forcing" found nothing; "wan 2.1 fp8" and "multi gpu" only core's nodes).
ALIASES = {"wan 2.1 fp8": "Load FP8 SkyReels Model", "diffusion forcing": "Sample Video",
           "int8 attention": "Patch SageAttention", "multi gpu": "Parallel Config",
           "skip model calls": "TeaCache (SkyReels-V2)", "fp8 quantization": "Convert to FP8"}


def test_node_search_finds_each_node_by_what_users_call_it(page):
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    close_dialogs(page)
    found = {}
    for query in ALIASES:
        page.evaluate("async () => { await window.app.extensionManager.command.execute("
                      "'Workspace.SearchBox.Toggle'); }")
        page.get_by_placeholder("Add a node...").filter(visible=True).first.fill(query)
        with contextlib.suppress(PlaywrightTimeout):    # the results update as the search runs; give it time
            page.wait_for_function("""(name) => [...document.querySelectorAll('[role="option"]')].slice(0, 3)
              .some(o => o.innerText.split("\\n")[0] === name)""", arg=ALIASES[query], timeout=10_000)
        found[query] = [text.split("\n")[0] for text in page.get_by_role("option").all_inner_texts()[:3]]
        page.keyboard.press("Escape")
        page.wait_for_timeout(300)
    assert {q: ALIASES[q] for q in ALIASES if ALIASES[q] in found[q]} == ALIASES, found


@pytest.mark.parametrize("name", WORKFLOWS)
def test_workflow_opens_without_missing_nodes_or_widget_errors(page, name):
    open_template(page, name)
    types = page.evaluate("() => window.app.graph.nodes.map(n => n.type)")
    missing = page.evaluate("() => window.app.graph.nodes.filter(n => n.has_errors || "
                            "!LiteGraph.registered_node_types[n.type]).map(n => n.type)")
    assert missing == [], missing
    assert any(t.startswith("SkyReels") for t in types)
    assert page.get_by_text("errors found", exact=False).count() == 0
    assert page.get_by_text("missing", exact=False).filter(visible=True).count() == 0
    assert page.errors == [], page.errors


def test_every_file_fits_the_frontends_workflow_schema(page):
    # Settings > Validate workflows: the frontend checks a workflow on load against its schema (a node's cnr_id and
    # ver among it) and its links, and says what failed in an alert ("Invalid workflow against zod schema", "Workflow
    # Links Fixed"). Every shipped workflow and blueprint loads with it on and raises none; the first file is a copy
    # of one with a slot_index the schema refuses (null, as this repository's start/end workflow once held), to show
    # that the check ran.
    close_dialogs(page)
    files = [os.path.join(REPO, "workflows", n + ".json") for n in WORKFLOWS] + sorted(
        os.path.join(REPO, "subgraphs", n) for n in os.listdir(os.path.join(REPO, "subgraphs")))
    with open(files[0], encoding="utf-8") as f:
        refused = json.load(f)
    refused["nodes"][0]["outputs"][0]["slot_index"] = None
    set_setting(page, "Comfy.Validation.Workflows", True)
    said = {}
    try:
        for path in ["refused"] + files:
            if path == "refused":
                workflow = refused
            else:
                with open(path, encoding="utf-8") as f:
                    workflow = json.load(f)
            page.evaluate("async (w) => { await window.app.loadGraphData(w); }", workflow)   # it alerts before it ends
            page.wait_for_timeout(500)
            said[os.path.basename(path)] = page.locator(".p-toast-message").filter(visible=True).all_inner_texts()
            page.evaluate("() => document.querySelectorAll('.p-toast-close-button').forEach(b => b.click())")
    finally:
        set_setting(page, "Comfy.Validation.Workflows", False)
    assert [t for t in said.pop("refused") if "Invalid workflow against zod schema" in t and "slot_index" in t], said
    assert said == {os.path.basename(p): [] for p in files}, said
    assert page.errors == [], page.errors


def test_template_browser_shows_each_workflows_own_card(page):
    """The template browser asks the host for workflows/<name>.jpg (tests/data/make_thumbnails.py writes them);
    without them every card of the pack showed the same placeholder."""
    close_dialogs(page)
    page.locator('button[aria-label="Templates"]').filter(visible=True).first.click()
    try:
        check_cards(page)
    finally:                             # the next test starts with no dialog open
        page.keyboard.press("Escape")
        page.locator('[role="dialog"]').filter(visible=True).first.wait_for(state="hidden", timeout=10_000)


def check_cards(page):
    page.get_by_text("ComfyUI-SkyReels", exact=False).first.click()
    cards = """(names) => names.map(n => {
      const i = document.querySelector(`[data-testid="template-workflow-${n}"] img`);
      return i && i.complete ? [i.src.endsWith("/default-template.png"), i.naturalWidth] : null; })"""
    page.wait_for_function(f"(names) => ({cards})(names).every(c => c)", arg=WORKFLOWS, timeout=30_000)
    assert page.evaluate(cards, WORKFLOWS) == [[False, 512]] * len(WORKFLOWS)    # the placeholder: True, 224
    served = page.evaluate("""async ([pack, names]) => Promise.all(names.map(async n => {
      const r = await fetch(`/api/workflow_templates/${pack}/${n}.jpg`);
      return [r.status, r.headers.get("content-type")]; }))""", [PACK, WORKFLOWS])
    assert served == [[200, "image/jpeg"]] * len(WORKFLOWS), served


def test_t2v_workflow_runs_from_the_run_button(page):
    open_template(page, "skyreels_t2v_fp8_sage")
    types = page.evaluate(SUBSTITUTE)
    assert "CLIPLoader" not in types and types.count("TestWanConditioning") == 2
    page.get_by_role("button", name="Run", exact=True).first.click()
    # Done when the Save Video node shows the saved video and the report reaches its Preview as Text node.
    page.wait_for_function("() => { const o = window.app.nodeOutputs || {}; return Object.values(o).some(v => "
                           "(v.images || v.video || []).some(i => String(i.filename).endsWith('.mp4'))); }",
                           timeout=300_000)
    page.wait_for_selector("video", timeout=60_000)
    page.wait_for_timeout(1000)
    os.makedirs(ARTIFACTS, exist_ok=True)
    page.screenshot(path=os.path.join(ARTIFACTS, "t2v_workflow_finished.png"))
    # The report, as the Preview as Text node's textarea shows it.
    shown = page.evaluate("() => [...document.querySelectorAll('textarea')].map(t => t.value)"
                          ".filter(v => v.startsWith('Sample Video:'))")
    assert len(shown) == 1 and "standard, unipc 2 steps" in shown[0] and "= 9 video frames" in shown[0], shown
    assert page.errors == [], page.errors


# Open each workflow as the frontend opens a file, then read Sample Video's widgets, the input slots left without a
# widget, and the prompt the Run button would queue.
OPEN_AND_READ = """async (workflows) => {
  const out = [];
  for (const workflow of workflows) {
    await window.app.loadGraphData(workflow);
    const s = window.app.graph.nodes.find(n => n.type === "SkyReelsSampleVideo");
    out.push({widgets: s.widgets.map(w => [w.name, w.value]),
              stray: s.inputs.filter(i => i.widget && !s.widgets.some(w => w.name === i.widget.name)).map(i => i.name),
              prompt: (await window.app.graphToPrompt()).output});
  }
  return out;
}"""


@pytest.mark.parametrize("name,by_name", [("skyreels_t2v_fp8_sage", False), ("skyreels_df_start_end_frames", False),
                                          ("skyreels_df_start_end_frames", True)])
def test_workflows_saved_before_mode_was_a_dynamic_combo_open_as_before(page, name, by_name):
    # Sample Video's DF widgets now sit under `mode`, a dynamic combo ("mode.ar_step"). A workflow saved before holds
    # them under their old names. It must open to the same widgets, with no stray input slot, and queue the same
    # prompt as the shipped workflow saved since; also with the frontend's experimental restore-by-name setting.
    with open(os.path.join(OLD_WORKFLOWS, name + ".json"), encoding="utf-8") as f:
        old = json.load(f)
    with open(os.path.join(REPO, "workflows", name + ".json"), encoding="utf-8") as f:
        new = json.load(f)
    page.evaluate(f"() => {{ LiteGraph.namedValuesRestore = {str(by_name).lower()}; }}")
    try:
        opened_old, opened_new = page.evaluate(OPEN_AND_READ, [old, new])
    finally:
        page.evaluate("() => { LiteGraph.namedValuesRestore = false; }")
    # Since then the shipped workflows also connect Sample Video's fps output to Create Video's fps (the same 24)
    fps = [next(n["inputs"] for n in o["prompt"].values() if n["class_type"] == "CreateVideo") for o in (opened_old,
                                                                                                       opened_new)]
    assert (fps[0].pop("fps"), fps[1].pop("fps")[1]) == (24, 3)
    assert opened_old["stray"] == [] and opened_old == opened_new
    sample = next(n["inputs"] for n in opened_old["prompt"].values() if n["class_type"] == "SkyReelsSampleVideo")
    if sample["mode"] == "standard":
        assert not [k for k in sample if k.startswith("mode.") or k == "ar_step"], sample
    else:   # the saved values, not the widgets' defaults (addnoise_condition 0)
        assert (sample["mode.base_num_frames"], sample["mode.addnoise_condition"]) == (97, 20), sample
    assert page.errors == [], page.errors


def test_df_widgets_show_in_df_mode_only(page):
    open_template(page, "skyreels_df_long_video")
    names = page.evaluate("""() => {
      const s = window.app.graph.nodes.find(n => n.type === "SkyReelsSampleVideo");
      const mode = s.widgets.find(w => w.name === "mode");
      const seen = [s.widgets.map(w => w.name)];
      mode.value = "standard";
      seen.push(s.widgets.map(w => w.name));
      mode.value = "diffusion forcing";
      seen.push(s.widgets.map(w => [w.name, w.value]));
      return seen;
    }""")
    df = ["mode.base_num_frames", "mode.overlap_history", "mode.ar_step", "mode.causal_block_size",
          "mode.addnoise_condition", "mode.causal_attention"]
    assert names[0][names[0].index("mode") + 1:] == df + ["noise"]      # noise stays last
    assert names[1][-2:] == ["mode", "noise"] and not set(df) & set(names[1])
    assert dict(names[2])["mode.ar_step"] == 0     # back in DF mode: the widgets' defaults


def test_an_old_workflows_linked_df_input_keeps_its_link(page):
    # A DF widget turned into an input and fed by another node, saved before mode was a dynamic combo: the link
    # moves to the widget's new slot ("mode.ar_step"), where the frontend alone would drop it.
    with open(os.path.join(OLD_WORKFLOWS, "skyreels_df_start_end_frames.json"), encoding="utf-8") as f:
        old = json.load(f)
    sample = next(n for n in old["nodes"] if n["type"] == "SkyReelsSampleVideo")
    slot = next(i for i, s in enumerate(sample["inputs"]) if s["name"] == "ar_step")
    link = max(l[0] for l in old["links"]) + 1
    old["nodes"].append({"id": 99, "type": "PrimitiveInt", "pos": [0, 0], "size": [200, 80], "flags": {},
                         "order": 0, "mode": 0, "inputs": [],
                         "outputs": [{"name": "INT", "type": "INT", "links": [link]}], "properties": {},
                         "widgets_values": [2, "fixed"]})
    old["links"].append([link, 99, 0, sample["id"], slot, "INT"])
    sample["inputs"][slot]["link"] = link
    opened = page.evaluate(OPEN_AND_READ, [old])[0]
    inputs = opened["prompt"][str(sample["id"])]["inputs"]
    # on ar_step's new slot and no other (frontend 1.58 puts the saved link on another old slot before the pack's
    # clean-up runs: there it reached overlap_history)
    assert [k for k, v in inputs.items() if v == ["99", 0]] == ["mode.ar_step"] and "ar_step" not in inputs, inputs
    assert opened["stray"] == [] and page.errors == [], (opened["stray"], page.errors)


def test_a_missing_vae_is_offered_for_download_where_comfy_org_keeps_it(page, server):
    # The loaders of ComfyUI's Wan 2.1 files carry their download in the workflow, as ComfyUI's own templates do:
    # with the file gone, the frontend's Missing Models panel offers Download, which asks for Comfy-Org's address.
    # Without that entry the panel only names the file (checked by hand on the workflows before it).
    vae = os.path.join(server.base, "models", "vae", "wan_2.1_vae.safetensors")
    asked = []
    page.context.route("https://huggingface.co/**",
                       lambda route: (asked.append(route.request.url), route.fulfill(status=200, body=b"")))
    refresh = "async () => { await window.app.refreshMissingModels({silent: false, reloadDefs: true}); }"
    os.rename(vae, vae + ".away")
    try:
        open_template(page, "skyreels_t2v_fp8_sage")
        page.evaluate(refresh)
        page.get_by_text("View details").first.click()
        page.get_by_role("button", name="Download wan_2.1_vae.safetensors").click()
        page.wait_for_timeout(2000)
    finally:
        os.rename(vae + ".away", vae)
        page.context.unroute("https://huggingface.co/**")
        page.evaluate(refresh)
        close_dialogs(page)
    url = "https://huggingface.co/Comfy-Org/Wan_2.1_ComfyUI_repackaged/resolve/main/split_files/vae/wan_2.1_vae.safetensors"
    assert url in asked, asked


# Sample Video into a subgraph (Comfy.Graph.ConvertToSubgraph), `mode` and `mode.ar_step` promoted from its widgets'
# context menu inside, ar_step changed on the subgraph node: the prompt holds the same values as before the
# conversion but that one, and a save and reopen keeps them all.
WIDGET_POINT = """([id, name]) => {
  const c = window.app.canvas, n = c.graph.getNodeById(id);
  c.ds.scale = 1; c.ds.offset[0] = -n.pos[0] + 300; c.ds.offset[1] = -n.pos[1] + 100; c.setDirty(true, true);
  c.draw(true, true);
  const w = n.widgets.find(w => w.name === name);
  const p = c.ds.convertOffsetToCanvas([n.pos[0] + n.size[0] / 2, n.pos[1] + w.last_y + (w.computedHeight ?? 20) / 2]);
  const r = c.canvas.getBoundingClientRect();
  return [r.left + p[0], r.top + p[1]];
}"""
SAMPLE_PROMPT = """async () => Object.values((await window.app.graphToPrompt()).output)
  .find(n => n.class_type === "SkyReelsSampleVideo").inputs"""


def test_noise_comes_back_from_a_saved_workflow_in_either_mode(page):
    # `noise` is Sample Video's last widget, after the DF widgets that `mode` adds or removes: a saved workflow
    # gives it back, with the DF values, and the Run button queues it.
    open_template(page, "skyreels_df_long_video")
    reopened = page.evaluate("""async () => {
      const out = [];
      for (const mode of ["diffusion forcing", "standard"]) {
        let s = window.app.graph.nodes.find(n => n.type === "SkyReelsSampleVideo");
        s.widgets.find(w => w.name === "mode").value = mode;
        s.widgets.find(w => w.name === "noise").value = "gpu (SkyReels-V2)";
        const ar = s.widgets.find(w => w.name === "mode.ar_step");
        if (ar) ar.value = 3;
        await window.app.loadGraphData(window.app.graph.serialize());
        s = window.app.graph.nodes.find(n => n.type === "SkyReelsSampleVideo");
        const inputs = Object.values((await window.app.graphToPrompt()).output)
          .find(n => n.class_type === "SkyReelsSampleVideo").inputs;
        out.push([Object.fromEntries(s.widgets.map(w => [w.name, w.value])), inputs]);
      }
      return out;
    }""")
    (df, df_prompt), (standard, standard_prompt) = reopened
    assert (df["mode"], df["mode.ar_step"], df["mode.base_num_frames"], df["noise"]) == (
        "diffusion forcing", 3, 97, "gpu (SkyReels-V2)"), df
    assert (df_prompt["noise"], df_prompt["mode.ar_step"]) == ("gpu (SkyReels-V2)", 3), df_prompt
    assert (standard["mode"], standard["noise"], standard_prompt["noise"]) == (
        "standard", "gpu (SkyReels-V2)", "gpu (SkyReels-V2)"), (standard, standard_prompt)
    assert not [k for k in standard if k.startswith("mode.")], standard
    assert page.errors == [], page.errors


def test_sample_video_in_a_subgraph_with_promoted_df_widgets(page):
    open_template(page, "skyreels_df_long_video")
    page.evaluate(SUBSTITUTE)
    before = page.evaluate(SAMPLE_PROMPT)
    sub = page.evaluate("""async () => { const c = window.app.canvas; c.deselectAll();
      c.select(window.app.graph.nodes.find(n => n.type === "SkyReelsSampleVideo"));
      await window.app.extensionManager.command.execute("Comfy.Graph.ConvertToSubgraph");
      const s = window.app.graph.nodes.find(n => n.isSubgraphNode?.());
      c.openSubgraph(s.subgraph, s); return s.id; }""")
    page.wait_for_timeout(500)
    inner = page.evaluate("() => window.app.canvas.graph.nodes.find(n => n.type === 'SkyReelsSampleVideo').id")
    for name in ("mode", "mode.ar_step"):
        x, y = page.evaluate(WIDGET_POINT, [inner, name])
        page.mouse.click(x, y, button="right")
        page.locator(".litecontextmenu .litemenu-entry").filter(has_text="Promote Widget").first.click()
        page.wait_for_timeout(300)
    page.evaluate("async () => { await window.app.extensionManager.command.execute('Comfy.Graph.ExitSubgraph'); }")
    page.wait_for_timeout(500)
    outer = page.evaluate("""(id) => { const s = window.app.graph.getNodeById(id);
      s.widgets.find(w => w.name === "mode.ar_step").value = 3; return s.widgets.map(w => w.name); }""", sub)
    assert {"mode", "mode.ar_step"} <= set(outer), outer
    promoted = page.evaluate(SAMPLE_PROMPT)
    assert promoted == {**before, "mode.ar_step": 3}, (before, promoted)
    # saved and reopened as a workflow file is, through JSON (Playwright's own transfer of the object is not JSON:
    # with frontend 1.58 the graph reopened from it lacked the node)
    saved = page.evaluate("() => JSON.stringify(window.app.graph.serialize())")
    page.evaluate("async (wf) => { await window.app.loadGraphData(JSON.parse(wf)); }", saved)
    assert page.evaluate(SAMPLE_PROMPT) == promoted
    assert page.errors == [], page.errors


def test_node_info_shows_the_help_page_with_every_widget(page):
    # The frontend's Info tab lists only a node's top-level inputs; the help page in nodes/web/docs/ also describes
    # the DF widgets under `mode`. It must name every input, with the default its schema gives where it states one.
    open_template(page, "skyreels_df_long_video")
    info = page.evaluate("async () => (await (await fetch('/object_info/SkyReelsSampleVideo')).json())"
                         ".SkyReelsSampleVideo")
    inputs = {**info["input"]["required"], **info["input"]["optional"]}
    df = next(o for o in inputs["mode"][1]["options"] if o["key"] == "diffusion forcing")["inputs"]
    inputs.update({**df["required"], **df.get("optional", {})})
    with open(os.path.join(REPO, "nodes", "web", "docs", "SkyReelsSampleVideo.md"), encoding="utf-8") as f:
        text = f.read()
    for name, (_, options) in [(k, v if len(v) > 1 else (v[0], {})) for k, v in inputs.items()]:
        assert f"**{name}**" in text, name
        stated = re.search(rf"\*\*{name}\*\* \(([^)]+)\)", text)
        if stated and "default" in options:
            default, said = options["default"], stated.group(1)
            assert (said == {True: "on", False: "off"}[default] if isinstance(default, bool) else
                    float(said) == default if isinstance(default, (int, float)) else
                    str(default).startswith(said)), (name, said, default)
    page.evaluate("() => { const c = window.app.canvas; c.deselectAll(); "
                  "c.selectNode(window.app.graph.nodes.find(n => n.type === 'SkyReelsSampleVideo')); "
                  "window.app.graph.setDirtyCanvas(true, true); }")
    page.locator('button[aria-label="Node Info"]').filter(visible=True).first.click()
    page.get_by_text("SkyReels-V2's settings as widgets").wait_for(timeout=30_000)
    assert page.get_by_text("addnoise_condition", exact=True).filter(visible=True).count() >= 1
    assert page.errors == [], page.errors


FACE = ["seed", "width", "height", "frames", "steps", "model", "text encoder", "vae"]
BLUEPRINTS = {    # name: the labels of its inputs
    "Text to Video (SkyReels-V2 FP8)": ["prompt", "negative prompt", *FACE],
    "Image to Video (SkyReels-V2 FP8)": ["start image", "prompt", "negative prompt", *FACE, "clip vision"],
    "Long Video (SkyReels-V2 DF FP8)": ["prompt", "negative prompt", *FACE],
}


def add_blueprint(page, name):
    """A new workflow, and the blueprint added as a user adds a node: picked in the node search box by its name, then
    placed with a click on the canvas (until then it follows the mouse, a ghost); returns the subgraph node's id."""
    close_dialogs(page)
    page.evaluate("async () => { const run = window.app.extensionManager.command.execute; "
                  "await run('Comfy.NewBlankWorkflow'); await run('Workspace.SearchBox.Toggle'); }")
    page.get_by_placeholder("Add a node...").filter(visible=True).first.fill(name)
    page.get_by_role("option").filter(has_text=name).first.click(timeout=10_000)
    page.wait_for_function("() => window.app.graph.nodes.some(n => n.flags.ghost)", timeout=30_000)
    box = page.evaluate("() => { const r = window.app.canvas.canvas.getBoundingClientRect(); "
                        "return [r.left + r.width / 2, r.top + r.height / 2]; }")
    page.wait_for_timeout(300)
    page.mouse.move(*box, steps=5)
    page.wait_for_timeout(300)
    page.mouse.click(*box)
    page.wait_for_function("() => window.app.graph.nodes.some(n => n.isSubgraphNode?.() && !n.flags.ghost)",
                           timeout=30_000)
    return page.evaluate("() => window.app.graph.nodes.find(n => n.isSubgraphNode?.()).id")


@pytest.mark.parametrize("name", BLUEPRINTS)
def test_blueprint_adds_from_the_search_box_without_missing_nodes(page, name):
    sub = add_blueprint(page, name)
    found = page.evaluate("""(id) => { const s = window.app.graph.getNodeById(id);
      return {title: s.title, inputs: s.inputs.map(i => i.label || i.name), outputs: s.outputs.map(o => o.name),
              missing: s.subgraph.nodes.filter(n => n.has_errors || !LiteGraph.registered_node_types[n.type])
                .map(n => n.type)}; }""", sub)
    page.evaluate("async () => { await window.app.extensionManager.command.execute('Comfy.Canvas.FitView'); }")
    page.wait_for_timeout(500)
    os.makedirs(ARTIFACTS, exist_ok=True)
    page.screenshot(path=os.path.join(ARTIFACTS, f"blueprint_{name.split()[0].lower()}_added.png"))
    assert found == {"title": name, "inputs": BLUEPRINTS[name], "outputs": ["report", "VIDEO"], "missing": []}, found
    assert page.errors == [], page.errors


# Inside the blueprint's subgraph, the test encoders (as SUBSTITUTE does in a workflow); outside, Save Video and
# Preview as Text on its outputs, a Load Image on an image input, and its promoted widgets made small.
BLUEPRINT_RUN = """([id, sizes]) => {
  const graph = window.app.graph, s = graph.getNodeById(id), inner = s.subgraph;
  """ + TEST_ENCODERS + """  toTestNodes(inner);
  s.pos = [500, 100];
  const add = (kind, output, slot) => { const n = LiteGraph.createNode(kind); graph.add(n);
    n.pos = [s.pos[0] + 500, s.pos[1] + 200 * slot]; s.connect(output, n, 0); return n; };
  add("SaveVideo", 1, 0).widgets[0].value = "blueprint/video";
  add("PreviewAny", 0, 1);
  const image = s.inputs.findIndex(i => i.type === "IMAGE");
  if (image >= 0) { const load = LiteGraph.createNode("LoadImage"); graph.add(load);
    load.widgets[0].value = "example.png"; load.pos = [s.pos[0] - 400, s.pos[1]]; load.connect(0, s, image); }
  for (const [name, value] of Object.entries(sizes)) { const w = s.widgets.find(w => w.name === name);
    if (w) w.value = value; }
  graph.setDirtyCanvas(true, true);
  return inner.nodes.map(n => n.type);
}"""


@pytest.mark.parametrize("name", BLUEPRINTS)
def test_blueprint_runs_from_the_run_button(page, name):
    # The long video's causal blocks of 5 latent frames need 17 frames (5 latent frames), made in one window.
    frames = 17 if name.startswith("Long") else 9
    sub = add_blueprint(page, name)
    inner = page.evaluate(BLUEPRINT_RUN, [sub, {"width": 32, "height": 32, "frames": frames, "length": frames,
                                                "steps": 2}])
    assert "CLIPLoader" not in inner and inner.count("TestWanConditioning") == 2, inner
    queued = page.evaluate("async () => Object.values((await window.app.graphToPrompt()).output)")
    sample = next(n["inputs"] for n in queued if n["class_type"] == "SkyReelsSampleVideo")
    assert sample["steps"] == 2, sample
    page.get_by_role("button", name="Run", exact=True).first.click()
    page.wait_for_function("() => { const o = window.app.nodeOutputs || {}; return Object.values(o).some(v => "
                           "(v.images || v.video || []).some(i => String(i.filename).endsWith('.mp4'))); }",
                           timeout=300_000)
    page.evaluate("async () => { await window.app.extensionManager.command.execute('Comfy.Canvas.FitView'); }")
    page.wait_for_timeout(1000)
    os.makedirs(ARTIFACTS, exist_ok=True)
    page.screenshot(path=os.path.join(ARTIFACTS, f"blueprint_{name.split()[0].lower()}_finished.png"))
    shown = page.evaluate("() => [...document.querySelectorAll('textarea')].map(t => t.value)"
                          ".filter(v => v.startsWith('Sample Video:'))")
    assert len(shown) == 1 and "unipc 2 steps" in shown[0] and f"= {frames} video frames" in shown[0], shown
    assert page.errors == [], page.errors


def test_a_workflow_opened_without_the_pack_names_the_pack_to_install(page):
    # A user without this pack (or with a ComfyUI that lacks a core node) opens a shared workflow. The frontend's
    # errors panel groups the missing nodes by the cnr_id each node carries, with no look-up in the registry (none is
    # reachable here), and names the ComfyUI version a missing core node needs. Simulated by renaming one node of
    # ours and one core node to types this ComfyUI lacks. Without cnr_id both were listed under "Unknown pack".
    from test_host_workflows import pack_release
    pack, _, oldest, shown_name = pack_release()
    close_dialogs(page)
    with open(os.path.join(REPO, "workflows", "skyreels_t2v_fp8_sage.json"), encoding="utf-8") as f:
        workflow = json.load(f)
    for node in workflow["nodes"]:
        node["type"] += "Missing" if node["type"] in ("CreateVideo", "SkyReelsSampleVideo") else ""
    page.evaluate("async (w) => { await window.app.loadGraphData(w); }", workflow)
    page.get_by_text("View details").filter(visible=True).first.click()
    try:
        page.get_by_text("Missing Node Packs").filter(visible=True).first.wait_for(timeout=30_000)
        page.wait_for_timeout(1000)     # the packs are listed once the workflow's packs are read
        os.makedirs(ARTIFACTS, exist_ok=True)
        page.screenshot(path=os.path.join(ARTIFACTS, "missing_pack_named.png"))
        text = page.locator("body").inner_text()
    finally:        # the errors panel stays open over the next test's template browser otherwise
        set_setting(page, "Comfy.RightSidePanel.IsOpen", False)
    assert "Missing Node Packs" in text and "Unknown pack" not in text, text[-3000:]
    # the registry id, or the registry's name for it where api.comfy.org answers (pyproject's DisplayName)
    assert re.search(rf"^({re.escape(pack)}|{re.escape(shown_name)})$", text, re.M), text[-3000:]
    assert f"Core nodes from version {oldest}:CreateVideoMissing" in text.replace("\n", ""), text[-3000:]
    assert page.errors == [], page.errors


def test_nodes_2_0_shows_every_workflow_and_the_df_widgets_in_df_mode_only(page):
    # Settings > Modern Node Design (Nodes 2.0): the frontend draws each node as HTML instead of on the canvas. Every
    # shipped workflow opens with each of its nodes drawn, and Sample Video's mode, picked from its dropdown as a user
    # does, shows the DF widgets in DF mode only and queues no DF value in standard mode.
    close_dialogs(page)
    set_setting(page, "Comfy.VueNodes.Enabled", True)
    try:
        for name in WORKFLOWS:
            open_template(page, name)
            ids = page.evaluate("() => window.app.graph.nodes.map(n => String(n.id))")
            drawn = page.evaluate("() => [...document.querySelectorAll('[data-node-id]')].map(e => e.dataset.nodeId)")
            assert sorted(drawn) == sorted(ids), (name, drawn, ids)
        sample = page.evaluate("() => window.app.graph.nodes.find(n => n.type === 'SkyReelsSampleVideo').id")
        node = page.locator(f'[data-node-id="{sample}"]')
        seen = []
        for mode in ("standard", "diffusion forcing"):
            node.get_by_role("combobox", name="mode").click()
            page.get_by_role("option", name=mode, exact=True).click()
            shows = "ar_step" if mode == "diffusion forcing" else None
            page.wait_for_function("([id, shows]) => [...document.querySelectorAll(`[data-node-id='${id}'] "
                                   "[data-testid='widget-layout-field-label']`)].some(e => e.innerText === 'ar_step')"
                                   " === (shows !== null)", arg=[sample, shows], timeout=10_000)
            labels = node.get_by_test_id("widget-layout-field-label").all_inner_texts()
            queued = page.evaluate("async () => Object.values((await window.app.graphToPrompt()).output)"
                                   ".find(n => n.class_type === 'SkyReelsSampleVideo').inputs")
            seen.append((labels[labels.index("mode"):], sorted(k for k in queued if k.split(".")[0] == "mode")))
    finally:
        set_setting(page, "Comfy.VueNodes.Enabled", False)
    df = ["base_num_frames", "overlap_history", "ar_step", "causal_block_size", "addnoise_condition",
          "causal_attention"]
    assert seen == [(["mode", "noise"], ["mode"]),
                    (["mode", *df, "noise"], ["mode", *sorted("mode." + d for d in df)])], seen
    assert page.errors == [], page.errors


# App Mode (the App / Graph switch; the Comfy.ToggleLinear command): each workflow's extra.linearData names the
# widgets the app shows, as ComfyUI's own templates do; the labels are the slots' labels where a name is ambiguous.
APP_INPUTS = {
    "skyreels_t2v_fp8_sage": ["prompt", "negative prompt", "width", "height", "frames", "seed", "steps", "model_name"],
    "skyreels_i2v_fp8_sage": ["start image", "prompt", "negative prompt", "width", "height", "frames", "seed", "steps",
                              "model_name"],
    "skyreels_df_long_video": ["prompt", "negative prompt", "width", "height", "frames", "seed", "steps",
                               "model_name"],
    "skyreels_convert_to_fp8": ["model_name", "output_name", "fp8_type"],
    "skyreels_df_start_end_frames": ["start image", "end image", "prompt", "prompt of window 2", "negative prompt",
                                     "width", "height", "frames", "seed", "steps", "model_name"],
}
APP_MODE = "async () => { await window.app.extensionManager.command.execute('Comfy.ToggleLinear'); }"
# The .mp4 files of the finished prompts in the host's history
HISTORY = """async () => Object.values(await (await fetch('/api/history')).json()).flatMap(h =>
  Object.values(h.outputs || {}).flatMap(o => (o.images || o.video || []).map(i => i.filename)))
  .filter(f => String(f).endsWith('.mp4'))"""


def app_inputs(page):
    page.evaluate(APP_MODE)
    page.wait_for_selector('[data-testid="app-mode-widget-item"]', timeout=30_000)
    close_dialogs(page)         # the frontend's welcome to App Mode, on the first visit
    return page.locator('[data-testid="app-mode-widget-item"] [data-testid="builder-widget-label"]').all_inner_texts()


@pytest.mark.parametrize("name", WORKFLOWS)
def test_app_mode_shows_each_workflows_inputs(page, name):
    open_template(page, name)
    try:
        shown = app_inputs(page)
    finally:
        page.evaluate(APP_MODE)
    assert shown == APP_INPUTS[name], shown
    assert page.errors == [], page.errors


def test_t2v_workflow_runs_in_app_mode(page):
    # Made small and given the test encoders in the graph, as in test_t2v_workflow_runs_from_the_run_button; then, in
    # App Mode, the seed typed into its field as a user does, the app's Run button, and the video in its outputs.
    open_template(page, "skyreels_t2v_fp8_sage")
    page.evaluate(SUBSTITUTE)
    try:
        shown = app_inputs(page)
        field = page.locator('[data-testid="app-mode-widget-item"][data-widget-key$=":7:seed"] input').first
        field.fill("7")
        field.press("Tab")
        queued = page.evaluate("async () => Object.values((await window.app.graphToPrompt()).output)"
                               ".find(n => n.class_type === 'SkyReelsSampleVideo').inputs")
        before = page.evaluate(HISTORY)
        page.get_by_role("button", name="Run", exact=True).filter(visible=True).first.click()
        for _ in range(300):
            made = [f for f in page.evaluate(HISTORY) if f not in before]
            if made:
                break
            page.wait_for_timeout(1000)
        assert len(made) == 1, made
        # the app's output area shows the new video's size and file ("32 x 32 | <file>" under it); earlier tests
        # made other files of the same prefix
        info = page.get_by_text(made[0]).filter(visible=True)
        info.first.wait_for(timeout=60_000)
        caption = info.first.inner_text()
        page.wait_for_timeout(1000)
        os.makedirs(ARTIFACTS, exist_ok=True)
        page.screenshot(path=os.path.join(ARTIFACTS, "t2v_app_mode_finished.png"))
    finally:
        page.evaluate(APP_MODE)
    # The prompts' nodes were replaced by the test encoders, so the app no longer lists them.
    assert shown == APP_INPUTS["skyreels_t2v_fp8_sage"][2:], shown
    assert (queued["seed"], queued["frames"], queued["steps"]) == (7, 9, 2), queued
    assert re.match(r"32 [x×] 32 \| ", caption), caption
    assert page.errors == [], page.errors
