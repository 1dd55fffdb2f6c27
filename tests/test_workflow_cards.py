"""Each workflow's card in workflows/ (tests/data/make_thumbnails.py) still shows that workflow's heading and nodes."""
import glob
import json
import os
import sys

import pytest
from PIL import Image, ImageChops

from comfy_host import REPO

sys.path.insert(0, os.path.join(REPO, "tests", "data"))
from make_thumbnails import card  # noqa: E402


def changed(a, b):
    """The share of pixels that differ by more than a quarter of the range: text moved or changed. JPEG's rounding
    moves none that far (0 of 262,144 pixels on each card); "FP8" changed to "FP16" in a heading moves 0.27%."""
    diff = ImageChops.difference(a.convert("L"), b.convert("L")).point(lambda v: 255 if v > 64 else 0)
    return sum(diff.histogram()[255:]) / (a.width * a.height)


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(REPO, "workflows", "*.json"))), ids=os.path.basename)
def test_card_matches_its_workflow(path):
    with open(path, encoding="utf-8") as f:
        workflow = json.load(f)
    shipped = Image.open(path[:-len(".json")] + ".jpg")
    assert shipped.size == (512, 512)
    assert changed(card(workflow), shipped) < 0.002, "run tests/data/make_thumbnails.py"
