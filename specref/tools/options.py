"""Command-line spellings of draft trees: `--tree`, `--choices`, `--total-tokens`/`--depth`/`--tree-top-k`, and the
bench's `--trees` list (`default`, `dynamic`, `dynamic:TOTAL:DEPTH:TOP_K`, `static`, `static:CHOICES`, `sampled`,
`sampled:CHOICES`). `sampled` is a static tree whose children are drawn from the head's law at T > 0; `default`
is the device's tree for the temperature (`specref/tree.py::device_tree`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from specref.logits import SamplingParams
from specref.tree import (
    CHAIN1_CHOICES,
    DEFAULT_CHOICES,
    FORK_CHOICES,
    MEDUSA_CHOICES,
    SMALL_CHOICES,
    TreeSpec,
    device_tree,
)

NAMED_CHOICES = {"eagle": DEFAULT_CHOICES, "medusa": MEDUSA_CHOICES, "small": SMALL_CHOICES, "fork": FORK_CHOICES,
                 "chain1": CHAIN1_CHOICES}


def read_choices(value: str | Sequence[Sequence[int]]) -> list[list[int]]:
    """A choices list from a name in NAMED_CHOICES, a JSON file holding one, or the list itself."""
    if not isinstance(value, str):
        return [list(path) for path in value]
    if value in NAMED_CHOICES:
        return NAMED_CHOICES[value]
    path = Path(value)
    if not path.is_file():
        raise ValueError(f"--choices must be one of {sorted(NAMED_CHOICES)} or a JSON file, got {value!r}")
    try:
        return [list(p) for p in json.loads(path.read_text())]
    except (json.JSONDecodeError, TypeError) as e:
        raise ValueError(f"--choices {value}: not a JSON list of paths ({e})") from None


def tree_for(device_type: str, kind: str = "default", choices: str | Sequence[Sequence[int]] = "eagle",
             total_tokens: int | None = None, depth: int | None = None, top_k: int | None = None,
             params: SamplingParams | None = None, *, packed: bool = True) -> TreeSpec:
    """A tree spec from command-line values: kind default (the device's tree for `params`, or a dynamic one when
    any of its sizes is given), dynamic, static or sampled; the dynamic tree's unset sizes come from the
    device's default (`packed` as in `device_tree`)."""
    sizes = (total_tokens, depth, top_k)
    if kind == "default" and all(v is None for v in sizes):
        return device_tree(device_type, params, packed=packed)
    base = device_tree(device_type, packed=packed)

    def pick(value: int | None, default: int) -> int:
        return default if value is None else value

    shape, children = kind, "top"
    if kind == "sampled":  # a static tree whose children are drawn from the head's law
        shape, children = "static", "sampled"
    elif kind == "default":  # with sizes given: the dynamic tree they size
        shape = "dynamic"
    return TreeSpec(shape, read_choices(choices), pick(total_tokens, base.total_tokens), pick(depth, base.depth),
                    pick(top_k, base.top_k), children)


def parse_tree(text: str, device_type: str = "cpu", params: SamplingParams | None = None, *,
               packed: bool = True) -> TreeSpec:
    """`default` (the device's tree for `params`), `dynamic` (the device's dynamic tree),
    `dynamic:TOTAL:DEPTH:TOP_K`, `static`, `static:CHOICES`, `sampled` or `sampled:CHOICES` (CHOICES a name or a
    JSON file), as the bench's --trees takes them."""
    kind, _, rest = text.partition(":")
    if kind in ("static", "sampled"):
        return tree_for(device_type, kind, rest or "eagle")
    if text == "default":
        return device_tree(device_type, params, packed=packed)
    sizes = rest.split(":") if rest else []
    if kind != "dynamic" or len(sizes) not in (0, 3) or not all(v.isdigit() for v in sizes):
        raise ValueError(f"tree {text!r}: expected default, dynamic, dynamic:TOTAL:DEPTH:TOP_K, static[:CHOICES] or "
                         "sampled[:CHOICES]")
    return tree_for(device_type, "dynamic", "eagle", *map(int, sizes), packed=packed)


def trees_at(texts: Sequence[str], device_type: str, params: SamplingParams, *, packed: bool = True) -> list[TreeSpec]:
    """The bench's trees for one temperature: each of `texts` parsed (`default` is the device's tree for
    `params`), a tree that equals an earlier one dropped, and two different trees under one name refused."""
    def shape(tree: TreeSpec) -> tuple:  # what decides the rounds: a static tree's dynamic sizes do not
        if tree.kind == "static":
            return tree.kind, tree.children, tree.choices
        return tree.kind, tree.total_tokens, tree.depth, tree.top_k

    named: dict[str, TreeSpec] = {}
    for text in texts:
        tree = parse_tree(text, device_type, params, packed=packed)
        if shape(named.setdefault(describe(tree), tree)) != shape(tree):
            raise ValueError(f"--trees: two different trees are both {describe(tree)!r}; give one of them only")
    return list(named.values())


def describe(tree: TreeSpec) -> str:
    if tree.kind == "static":
        name = next((k for k, v in NAMED_CHOICES.items() if v == tree.choices), "custom")
        return f"static {name} ({len(tree.choices)} nodes{', sampled children' if tree.children == 'sampled' else ''})"
    return f"dynamic {tree.total_tokens}/{tree.depth}/{tree.top_k}"
