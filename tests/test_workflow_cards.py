"""Each workflow's card in workflows/ (tests/data/make_thumbnails.py) still shows that workflow's heading and nodes:
the card's JPEG comment holds the text drawn on it (its pixels depend on Pillow's font renderer, so are not compared)."""
import glob
import json
import os
import re
import sys

import pytest
from PIL import Image

from comfy_host import REPO

sys.path.insert(0, os.path.join(REPO, "tests", "data"))
from make_thumbnails import NAMES, text  # noqa: E402


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(REPO, "workflows", "*.json"))), ids=os.path.basename)
def test_card_matches_its_workflow(path):
    with open(path, encoding="utf-8") as f:
        workflow = json.load(f)
    card = Image.open(path[:-len(".json")] + ".jpg")
    assert card.size == (512, 512)
    assert card.info.get("comment", b"").decode() == text(workflow), "run tests/data/make_thumbnails.py"


def test_cards_name_the_nodes_as_the_nodes_name_themselves():
    schemas = "".join(open(p, encoding="utf-8").read() for p in glob.glob(os.path.join(REPO, "nodes", "*.py")))
    shown = set(re.findall(r'display_name="([^"]+)",\s+category="SkyReels-V2"', schemas))
    assert len(shown) == 6 and set(NAMES.values()) == shown, shown
