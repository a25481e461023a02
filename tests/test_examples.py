"""Every example runs offline in its quick mode, prints what it shows, and writes the picture it promises."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
PICTURES = {"one_round_by_hand.py": "rejection.png", "lossless_histogram.py": "lossless_histogram.png",
            "sps_rounds.py": "sps_rounds.svg", "gamma_sweep.py": "gamma_sweep.png",
            "trees_side_by_side.py": "trees.svg", "eagle_convert.py": "eagle_acceptance.png",
            "gpt2_pair.py": "gpt2_rounds.svg"}


def test_every_example_promises_a_picture():
    assert sorted(PICTURES) == sorted(p.name for p in EXAMPLES.glob("*.py"))


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.py")))
def test_example_runs_in_quick_mode(name, tmp_path):
    res = subprocess.run([sys.executable, str(EXAMPLES / name)], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300, env={**os.environ, "SPECREF_QUICK": "1"})
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip()
    picture = tmp_path / PICTURES[name]
    if picture.suffix == ".svg":
        svg = ET.parse(picture).getroot()  # well-formed, and draws something
        assert svg.tag.endswith("svg") and len(list(svg.iter())) > 5
    else:
        assert picture.read_bytes().startswith(b"\x89PNG") and picture.stat().st_size > 10_000
