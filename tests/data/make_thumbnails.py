"""Writes workflows/<name>.jpg, the card the template browser shows for each workflow (the frontend asks the host for
/api/workflow_templates/<pack>/<name>.jpg; without one every card showed the same placeholder). There is no video to
show without real weights, so each card names the workflow: its note's heading and the pack's nodes in it, also kept
as the JPEG's comment. Run by hand when a workflow's heading or nodes change (tests/test_workflow_cards.py says when;
tests/host/test_host_browser.py checks every card loads):

    python tests/data/make_thumbnails.py
"""
import glob
import json
import os

from PIL import Image, ImageDraw, ImageFont

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SIZE, MARGIN = 512, 36
NAMES = {"SkyReelsFP8ModelLoader": "Load FP8 SkyReels Model", "SkyReelsPatchSageAttention": "Patch SageAttention",
         "SkyReelsSampleVideo": "Sample Video", "SkyReelsConvertToFP8": "Convert to FP8",
         "SkyReelsTeaCache": "TeaCache (SkyReels-V2)", "SkyReelsParallelConfig": "Parallel Config"}


def heading(workflow):
    """The first line of the workflow's note, without the pack's name: what the workflow makes."""
    note = next(n for n in workflow["nodes"] if n["type"] == "MarkdownNote")["widgets_values"][0]
    title = note.splitlines()[0].lstrip("# ").removeprefix("SkyReels-V2 ")
    return title[0].upper() + title[1:]


def nodes(workflow):
    """The pack's nodes in the workflow, left to right, by their display names."""
    return [NAMES[n["type"]] for n in sorted(workflow["nodes"], key=lambda n: n["pos"][0]) if n["type"] in NAMES]


def text(workflow):
    """What the card shows, as its JPEG comment."""
    return "\n".join([heading(workflow), *nodes(workflow)])


def wrap(draw, text, font, width):
    lines = [""]
    for word in text.split():
        line = f"{lines[-1]} {word}".strip()
        if draw.textlength(line, font=font) <= width or not lines[-1]:
            lines[-1] = line
        else:
            lines.append(word)
    return lines


def card(workflow):
    """Dark, as ComfyUI's cards; the top left stays clear for the browser's "Node graph" badge."""
    image = Image.new("RGB", (SIZE, SIZE), (30, 32, 40))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, SIZE, 10), fill=(64, 132, 214))
    title, body = ImageFont.load_default(size=44), ImageFont.load_default(size=27)
    y = 100
    for line in wrap(draw, heading(workflow), title, SIZE - 2 * MARGIN):
        draw.text((MARGIN, y), line, font=title, fill=(236, 236, 240))
        y += 54
    names = nodes(workflow)
    y = SIZE - MARGIN - 38 * len(names) - 10
    for name in names:
        y += 38
        draw.rectangle((MARGIN, y + 12, MARGIN + 9, y + 21), fill=(64, 132, 214))
        draw.text((MARGIN + 22, y), name, font=body, fill=(190, 194, 206))
    return image


def main():
    for path in sorted(glob.glob(os.path.join(REPO, "workflows", "*.json"))):
        with open(path, encoding="utf-8") as f:
            workflow = json.load(f)
        card(workflow).save(path[:-len(".json")] + ".jpg", quality=88, comment=text(workflow))
        print("wrote", path[:-len(".json")] + ".jpg")


if __name__ == "__main__":
    main()
