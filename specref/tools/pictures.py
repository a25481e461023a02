"""Pictures of speculative decoding: a round in the terminal or as SVG, and a draft tree as SVG.

`show_round` colours one round of the first sequence (`stats.Round`, from the loops' `trace=`): accepted drafts
green, the rejected draft red and struck through, the emitted correction yellow or bonus blue; drafts after
the rejection, never tried, grey. `rounds_svg` draws the same as SVG lines, and `tree_svg` a draft tree left to
right, the target's probability of each node's token on its edge and the accepted path highlighted. All are
plain text: no dependency. `token_text` says how a token reads in them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from html import escape
from typing import Any

from specref.stats import Round


def token_text(tokenizer: Any) -> Callable[[int], str]:
    """How the pictures show a token: its text with escapes visible (a newline reads \\n), or its id when there
    is no tokenizer."""
    if tokenizer is None:
        return str
    return lambda token: repr(tokenizer.decode([token]))[1:-1]


GREEN, RED, YELLOW, BLUE, GREY, STRIKE, RESET = ("\033[32m", "\033[31m", "\033[33m", "\033[34m", "\033[90m", "\033[9m",
                                                 "\033[0m")


def pieces(r: Round) -> list[tuple[str, int]]:
    """A round's tokens in order, each with its part: accepted, rejected, untried, then correction or bonus."""
    if r.parents is not None:  # a tree: the accepted path, then the token (the other nodes are not shown)
        out = [("accepted", r.tokens[i]) for i in r.path[1:]]
        leaf = not any(parent == r.path[-1] for parent in r.parents)
        return [*out, ("bonus" if leaf else "correction", r.token)]
    n = len(r.path)
    out = [("accepted", x) for x in r.tokens[:n]]
    if n < len(r.tokens):
        out += [("rejected", r.tokens[n])] + [("untried", x) for x in r.tokens[n + 1:]]
    return [*out, ("bonus" if n == len(r.tokens) else "correction", r.token)]


TERMINAL = {"accepted": GREEN, "rejected": RED + STRIKE, "untried": GREY, "correction": YELLOW, "bonus": BLUE}
SVG = {"accepted": "#2a2", "rejected": "#c22", "untried": "#999", "correction": "#b80", "bonus": "#22c"}


def show_round(r: Round, text: Callable[[int], str] = str) -> str:
    """One round as a coloured terminal line."""
    parts = pieces(r)
    accepted = sum(kind == "accepted" for kind, _ in parts)
    shown = " ".join(f"{TERMINAL[kind]}{text(t)}{RESET}" for kind, t in parts)
    return f"[{accepted} accepted + {parts[-1][0]}] {shown}"


def rounds_svg(rounds: Sequence[Round], text: Callable[[int], str] = str) -> str:
    """Rounds as SVG lines, coloured as `show_round` colours the terminal."""
    lines = []
    for k, r in enumerate(rounds):
        y, x = 20 + 18 * k, 80
        lines.append(f'<text x="6" y="{y}" fill="#555">round {k + 1}</text>')
        for kind, t in pieces(r):
            word = text(t)
            strike = ' text-decoration="line-through"' if kind == "rejected" else ""
            lines.append(f'<text x="{x}" y="{y}" fill="{SVG[kind]}"{strike} xml:space="preserve">{escape(word)}</text>')
            x += 8 * len(word) + 10
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="900" height="{30 + 18 * len(rounds)}" '
            f'font-family="monospace" font-size="13">{"".join(lines)}</svg>\n')


def tree_svg(rounds: Sequence[Round], text: Callable[[int], str] = str, titles: Sequence[str] = ()) -> str:
    """Draft trees side by side as one SVG: nodes left to right by depth, edges labelled with p, the accepted
    path (and the emitted token after it) in green."""
    gap, panels, height = 40, [], 0
    for k, r in enumerate(rounds):
        if r.parents is None or r.p is None:
            raise ValueError("tree_svg draws trees: rounds from the EAGLE loop's trace")
        body, w, h = one_tree(r, text)
        title = escape(titles[k]) if k < len(titles) else ""
        panels.append((body, w, h + 30, title))
        height = max(height, h + 30)
    x, parts = 0, []
    for body, w, _, title in panels:
        parts.append(f'<g transform="translate({x},0)"><text x="10" y="18" font-weight="bold">{title}</text>'
                     f'<g transform="translate(0,30)">{body}</g></g>')
        x += w + gap
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{x}" height="{height}" font-family="monospace" '
            f'font-size="12">{"".join(parts)}</svg>\n')


def one_tree(r: Round, text: Callable[[int], str]) -> tuple[str, int, int]:
    """The SVG body of one tree and its width and height."""
    parents, n = r.parents or [], len(r.tokens)
    children = [[c for c in range(n) if parents[c] == i] for i in range(n)]
    depth = [0] * n
    for i in range(1, n):
        depth[i] = depth[parents[i]] + 1
    rows: dict[int, int] = {}

    def place(node: int) -> None:  # leaves take rows top to bottom; a parent sits level with its first child
        for c in children[node]:
            place(c)
        rows[node] = rows[children[node][0]] if children[node] else sum(not children[i] for i in rows)

    place(0)
    on_path = set(r.path)
    col, row = 130, 28
    xy = {i: (10 + depth[i] * col, 10 + rows[i] * row) for i in range(n)}
    last = r.path[-1]
    bottom = max(rows.values()) + 1  # the emitted token gets a row of its own: it is no drafted node
    emitted = (10 + (depth[last] + 1) * col, 10 + bottom * row)
    parts = []
    for i in range(1, n):
        (x0, y0), (x1, y1) = xy[parents[i]], xy[i]
        good = i in on_path
        parts.append(f'<line x1="{x0 + 90}" y1="{y0 + 10}" x2="{x1}" y2="{y1 + 10}" '
                     f'stroke="{"#2a2" if good else "#999"}" stroke-width="{3 if good else 1}"/>'
                     f'<text x="{x1 - 34}" y="{y1 + 8}" fill="#555" font-size="10">{r.p[i]:.2f}</text>')
    parts.append(f'<line x1="{xy[last][0] + 90}" y1="{xy[last][1] + 10}" x2="{emitted[0]}" y2="{emitted[1] + 10}" '
                 f'stroke="#2a2" stroke-width="3" stroke-dasharray="4"/>')
    for i in range(n):
        x, y = xy[i]
        fill = "#cfc" if i in on_path else "#eee"
        label = "root " + text(r.tokens[0]) if i == 0 else text(r.tokens[i])
        parts.append(f'<rect x="{x}" y="{y}" width="90" height="20" rx="4" fill="{fill}" stroke="#666"/>'
                     f'<text x="{x + 4}" y="{y + 14}">{escape(label[:12])}</text>')
    parts.append(f'<rect x="{emitted[0]}" y="{emitted[1]}" width="90" height="20" rx="4" fill="#ffd" stroke="#2a2"/>'
                 f'<text x="{emitted[0] + 4}" y="{emitted[1] + 14}">{escape(text(r.token)[:12])}</text>'
                 f'<text x="{emitted[0] + 94}" y="{emitted[1] + 14}" fill="#2a2">emitted</text>')
    return "".join(parts), 10 + (max(depth) + 2) * col, 20 + (bottom + 1) * row
