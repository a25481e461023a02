"""Every example runs offline in its quick mode, prints what it shows, and writes the picture it promises."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
PICTURES = {"sps_rounds.py": "sps_rounds.svg", "trees_side_by_side.py": "trees.svg"}


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.py")))
def test_example_runs_in_quick_mode(name, tmp_path):
    res = subprocess.run([sys.executable, str(EXAMPLES / name)], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300, env={**os.environ, "SPECREF_QUICK": "1"})
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip()
    if name in PICTURES:
        svg = ET.parse(tmp_path / PICTURES[name]).getroot()  # well-formed, and draws something
        assert svg.tag.endswith("svg") and len(list(svg.iter())) > 5
