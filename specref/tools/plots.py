"""Plots of a benchmark or a γ sweep: tokens/s, τ and speed-up against γ beside what α and c predict, and the
acceptance of each draft position (matplotlib, an optional extra).

The rows are `python -m specref bench`'s (`bench.json`'s "rows"): method, temperature, tokens_per_s,
speedup_vs_specref_ar, and for speculative rows alpha, tau, position_acceptance (the fraction of rounds whose
i-th draft, or i-th tree depth, was accepted) and, for SpS, gamma. Figures are built without pyplot, so
drawing one never changes the backend or the open figures of a notebook that imports specref.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from specref.formats.files import atomic_file, check_output_file
from specref.stats import expected_tau, predicted_speedup

INSTALL = "plots need matplotlib, an optional extra: pip install 'specref[plot]' (or pip install matplotlib)"
SUFFIXES = (".png", ".svg", ".pdf")


def new_figure(**kw: Any) -> Any:
    """A matplotlib Figure (keywords as Figure's), or an ImportError that says how to install matplotlib.
    Examples create theirs first, so a missing matplotlib is reported before any model work."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(INSTALL) from None
    return Figure(**kw)


def save_figure(fig: Any, path: str | Path) -> Path:
    """Write `fig` all or nothing, in the format its suffix names (.png, .svg or .pdf)."""
    path = Path(path)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".").lower(), dpi=100)
    return path


def check_plot_path(path: str | Path) -> Path:
    """Refuse, before any model work, a plot that could not be written: matplotlib missing (ImportError saying
    how to install it), or a path `formats/files.py::check_output_file` refuses (ValueError)."""
    new_figure()
    return check_output_file(path, "--plot", SUFFIXES)


def plot_tokens(ax: Any, rows: Sequence[dict[str, Any]]) -> None:
    """Tokens/s of each row as horizontal bars, Hugging Face's rows grey."""
    ax.barh([r["method"] for r in rows], [r["tokens_per_s"] for r in rows],
            color=["#999" if r["method"].startswith("HF") else "#2a6" for r in rows])
    ax.invert_yaxis()
    ax.set_xlabel("tokens / s")


def plot_gamma_sweep(ax_tau: Any, ax_speed: Any, rows: Sequence[dict[str, Any]], c: float) -> None:
    """Measured τ and speed-up of the SpS rows against γ, beside what each row's own α predicts:
    τ = (1 − α^(γ+1)) / (1 − α) and speed-up = τ / (γc + 1) (`stats.expected_tau`, `stats.predicted_speedup`)."""
    sweep = sorted((r for r in rows if r.get("gamma") and r.get("alpha") is not None), key=lambda r: r["gamma"])
    if not sweep:
        for ax in (ax_tau, ax_speed):
            ax.text(0.5, 0.5, "no SpS rows", ha="center", transform=ax.transAxes)
        return
    gammas = [r["gamma"] for r in sweep]
    ax_tau.plot(gammas, [expected_tau(r["alpha"], r["gamma"]) for r in sweep], "s--", color="#888", mfc="none",
                label="predicted from each row's α")
    ax_tau.plot(gammas, [r["tau"] for r in sweep], "o", color="#2a6", label="measured")
    ax_tau.set(xlabel="γ (drafts per round)", ylabel="τ (tokens per target call)")
    ax_speed.plot(gammas, [predicted_speedup(r["alpha"], r["gamma"], c) for r in sweep], "s--", color="#888",
                  mfc="none", label=f"predicted from α and c = {c:.3f}")
    ax_speed.plot(gammas, [r["speedup_vs_specref_ar"] for r in sweep], "o", color="#2a6", label="measured")
    ax_speed.axhline(1.0, color="#c22", linewidth=0.8)
    ax_speed.set(xlabel="γ (drafts per round)", ylabel="speed-up over specref AR")
    for ax in (ax_tau, ax_speed):
        ax.set_xticks(gammas)
        ax.legend(fontsize=8)


def plot_acceptance(ax: Any, rows: Sequence[dict[str, Any]]) -> None:
    """Per position i, the fraction of rounds whose i-th draft (tree: i-th depth) was accepted, one group of bars
    per row, beside α^i, what i.i.d. acceptance at the row's α would give."""
    shown = [r for r in rows if r.get("position_acceptance")]
    if not shown:
        ax.text(0.5, 0.5, "no speculative rows", ha="center", transform=ax.transAxes)
        return
    width = 0.8 / len(shown)
    for k, r in enumerate(shown):
        acc = r["position_acceptance"]
        xs = [i + 1 + (k - (len(shown) - 1) / 2) * width for i in range(len(acc))]
        ax.bar(xs, acc, width, label=r["method"])
        ax.plot(xs, [r["alpha"] ** (i + 1) for i in range(len(acc))], "_", color="black",
                markersize=max(4.0, 60 * width), markeredgewidth=2)
    ax.set(xlabel="draft position i (tree: depth i); black marks: α^i", ylabel="fraction of rounds accepting it",
           ylim=(0, 1))
    ax.legend(fontsize=7)


PANELS = ("tokens/s", "τ against γ", "speed-up against γ", "acceptance per position")


def speculation_figure(rows: Sequence[dict[str, Any]], c: float, path: str | Path, title: str = "") -> Any:
    """Draw the rows and write them to `path` (.png, .svg or .pdf); return the figure. For each temperature one
    line of panels: tokens/s, τ against γ, speed-up against γ, acceptance per position (of the SpS row with the
    largest γ and of every EAGLE row)."""
    temps = sorted({r["temperature"] for r in rows})
    fig = new_figure(figsize=(24, 5 * len(temps)))
    axes = fig.subplots(len(temps), len(PANELS), squeeze=False)
    for line, temp in zip(axes, temps, strict=True):
        sel = [r for r in rows if r["temperature"] == temp]
        sps_rows = [r for r in sel if r.get("gamma")]
        plot_tokens(line[0], sel)
        plot_gamma_sweep(line[1], line[2], sel, c)
        widest = [max(sps_rows, key=lambda r: r["gamma"])] if sps_rows else []
        plot_acceptance(line[3], widest + [r for r in sel if "EAGLE" in r["method"]])
        for ax, name in zip(line, PANELS, strict=True):
            ax.set_title(f"{name}, T = {temp:g}")
    if title:
        fig.suptitle(title)
    save_figure(fig, path)
    return fig
