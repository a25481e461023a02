"""The speed-up formulas the plots draw, the plots themselves, and a clear message when matplotlib is missing."""

from __future__ import annotations

import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from specref.stats import Stats, expected_tau, position_acceptance, predicted_speedup
from specref.tools.cli import main
from specref.tools.plots import INSTALL, PANELS, check_plot_path, new_figure, speculation_figure


@given(st.floats(0.0, 0.999), st.integers(1, 12))
def test_expected_tau_is_the_mean_round_length_under_iid_acceptance(alpha, gamma):
    """A round accepts exactly k < gamma drafts w.p. alpha^k (1 - alpha), all gamma w.p. alpha^gamma; it emits
    k + 1 tokens. The closed form must be that mean."""
    law = [alpha**k * (1 - alpha) for k in range(gamma)] + [alpha**gamma]
    assert expected_tau(alpha, gamma) == pytest.approx(sum((k + 1) * pk for k, pk in enumerate(law)), rel=1e-9)


def test_predicted_speedup_divides_by_the_round_cost():
    assert expected_tau(1.0, 4) == 5 and predicted_speedup(1.0, 4, 0.25) == pytest.approx(2.5)
    assert predicted_speedup(0.0, 3, 0.1) == pytest.approx(1 / 1.3)  # every draft rejected: pure overhead
    assert predicted_speedup(0.6, 2, 0.0) == pytest.approx(1 + 0.6 + 0.36)


def test_position_acceptance_counts_rounds_reaching_each_draft():
    s = Stats()
    s.record_round(3, [0, 1, 3, 3])  # four rounds: 0, 1, 3 and 3 drafts accepted
    assert s.position_acceptance == position_acceptance([1, 1, 0, 2]) == [0.75, 0.5, 0.5]
    assert position_acceptance([]) == [] and position_acceptance([0, 0]) == []
    assert s.alpha == pytest.approx(7 / 9)  # tried: 1 + 2 + 3 + 3


ROWS = [{"method": "HF AR", "temperature": 0.0, "tokens_per_s": 10.0, "speedup_vs_specref_ar": 0.5},
        {"method": "specref AR", "temperature": 0.0, "tokens_per_s": 20.0, "speedup_vs_specref_ar": 1.0},
        *({"method": f"specref SpS gamma={g}", "gamma": g, "temperature": 0.0, "tokens_per_s": 20.0 + g,
           "speedup_vs_specref_ar": 1 + g / 20, "alpha": 0.5, "tau": expected_tau(0.5, g),
           "position_acceptance": [0.5**i for i in range(1, g + 1)]} for g in (1, 2, 3)),
        {"method": "specref EAGLE dynamic 6/3/4", "temperature": 0.0, "tokens_per_s": 30.0,
         "speedup_vs_specref_ar": 1.5, "alpha": 0.6, "tau": 1.9, "position_acceptance": [0.7, 0.3, 0.05]}]


@pytest.mark.parametrize("suffix, magic", [(".png", b"\x89PNG"), (".svg", b"<?xml"), (".pdf", b"%PDF")])
def test_speculation_figure_writes_the_picture(tmp_path, suffix, magic):
    import matplotlib

    backend = matplotlib.get_backend()
    rows = ROWS + [{**r, "temperature": 1.0} for r in ROWS]  # one line of panels per temperature
    path = tmp_path / f"bench{suffix}"
    fig = speculation_figure(rows, 0.08, path, "a title")
    assert path.read_bytes().startswith(magic) and path.stat().st_size > 10_000
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # written atomically: no temporary left
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == [f"{name}, T = {t}" for t in ("0", "1") for name in PANELS]
    sweep = fig.axes[2].lines  # speed-up against gamma: predicted, measured, the line at 1
    assert list(sweep[0].get_ydata()) == pytest.approx([predicted_speedup(0.5, g, 0.08) for g in (1, 2, 3)])
    assert list(sweep[1].get_ydata()) == pytest.approx([1.05, 1.1, 1.15])
    bars = [b.get_height() for b in fig.axes[3].patches]  # the widest SpS row, then EAGLE's
    assert bars == pytest.approx([0.5, 0.25, 0.125, 0.7, 0.3, 0.05])
    assert matplotlib.get_backend() == backend  # no pyplot: a notebook's backend is left alone


def test_a_figure_without_sps_rows_says_so(tmp_path):
    eagle_only = [r for r in ROWS if "gamma" not in r]
    fig = speculation_figure(eagle_only, 0.08, tmp_path / "eagle.png")
    assert [t.get_text() for t in fig.axes[1].texts] == ["no SpS rows"]
    assert len(fig.axes[3].patches) == 3  # the EAGLE row's depths still drawn
    one = speculation_figure([ROWS[1], ROWS[2]], 0.08, tmp_path / "one.png")  # AR and a single gamma
    assert list(one.axes[1].lines[1].get_ydata()) == pytest.approx([1.5])


def test_a_plot_that_cannot_be_written_is_refused_first(tmp_path):
    with pytest.raises(ValueError, match=r"\.png, \.svg or \.pdf"):
        check_plot_path(tmp_path / "bench.txt")
    with pytest.raises(ValueError, match="directory does not exist"):
        check_plot_path(tmp_path / "missing" / "bench.png")


def test_without_matplotlib_the_message_says_how_to_install_it(monkeypatch, capsys, tmp_path):
    for name in ("matplotlib", "matplotlib.figure"):  # what an environment without it imports
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match=r"pip install 'specref\[plot\]'"):
        new_figure()
    with pytest.raises(SystemExit) as e:
        main(["bench", str(tmp_path / "out"), "--plot", str(tmp_path / "bench.png")])
    assert e.value.code == 2 and INSTALL in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused before any model work
