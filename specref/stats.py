"""What a decoding run reports: the counts behind speculative decoding's speed-up.

alpha = accepted / tried drafts, the per-position acceptance rate (a round tries drafts until the first
rejection, so drafts after it are proposed but never tried; in a tree, a depth counts as tried once its
children meet the test); tau = emitted tokens per verification round (tokens per target call for one
sequence). `expected_tau` and `predicted_speedup` say what alpha buys under i.i.d. acceptance.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple


class Round(NamedTuple):
    """One verification round of the first sequence, as pictures show it (`trace=` of the SpS and EAGLE loops).

    Chains: `tokens` are the drafts x_1..x_gamma. Trees: `tokens` are the nodes' tokens (node 0 the root),
    `parents` the parent array, `p` each node's target probability given its parent's context. `path` holds the
    accepted node indices (chains: 1..accepted; trees: from the root), `token` the correction or bonus."""

    tokens: list[int]
    path: list[int]
    token: int
    parents: list[int] | None = None
    p: list[float] | None = None


Trace = Callable[[Round], None]


def expected_tau(alpha: float, gamma: int) -> float:
    """E[tokens per round] = (1 - alpha^(gamma+1)) / (1 - alpha) when each of gamma drafts is accepted
    independently with probability alpha (Leviathan et al. 2023, arXiv 2211.17192, §3): the accepted prefix
    plus one token."""
    return gamma + 1 if alpha >= 1 else (1 - alpha ** (gamma + 1)) / (1 - alpha)


def predicted_speedup(alpha: float, gamma: int, c: float) -> float:
    """Wall-time speed-up over autoregressive decoding, E[tau] / (gamma c + 1): a round costs gamma draft steps
    (c target steps each) and one target step, and yields E[tau] tokens (Leviathan et al. 2023, §3)."""
    return expected_tau(alpha, gamma) / (gamma * c + 1)


def position_acceptance(accept_hist: Sequence[int]) -> list[float]:
    """Fraction of rounds whose i-th draft (i = 1..gamma; trees: i-th depth) was accepted, from the counts of
    rounds that accepted exactly n drafts."""
    total = sum(accept_hist)
    return [sum(accept_hist[i:]) / total for i in range(1, len(accept_hist))] if total else []


@dataclass
class Stats:
    new_tokens: int = 0
    target_calls: int = 0  # target forwards while decoding; the prompt prefill is not counted
    draft_calls: int = 0
    rounds: int = 0  # verification rounds summed over sequences (= target_calls for one sequence)
    proposed: int = 0
    tried: int = 0  # drafts that met the acceptance test: accepted ones plus one rejection per early stop
    accepted: int = 0
    accept_hist: list[int] = field(default_factory=list)  # [n] = rounds that accepted exactly n drafts
    residual_fallbacks: int = 0  # rejections whose residual max(p - q, 0) had no mass (p used instead)
    tree_nodes: int = 0  # draft-tree nodes verified, summed over rounds and sequences (root excluded)
    wall_time: float = 0.0  # seconds, prefill included

    @property
    def tau(self) -> float:
        return self.new_tokens / self.rounds if self.rounds else 0.0

    @property
    def alpha(self) -> float:
        return self.accepted / self.tried if self.tried else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.wall_time if self.wall_time > 0 else 0.0

    @property
    def tree_size(self) -> float:
        """Draft nodes verified per round (0 without trees)."""
        return self.tree_nodes / self.rounds if self.rounds else 0.0

    @property
    def position_acceptance(self) -> list[float]:
        return position_acceptance(self.accept_hist)

    def record_round(self, proposed_per_row: int, accepted: list[int]) -> None:
        """Book one verification round of len(accepted) sequences that each proposed `proposed_per_row`."""
        if len(self.accept_hist) < proposed_per_row + 1:
            self.accept_hist += [0] * (proposed_per_row + 1 - len(self.accept_hist))
        self.rounds += len(accepted)
        self.proposed += proposed_per_row * len(accepted)
        self.tried += sum(min(n + 1, proposed_per_row) for n in accepted)
        self.accepted += sum(accepted)
        for n in accepted:
            self.accept_hist[n] += 1

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "tau": self.tau, "alpha": self.alpha, "tokens_per_s": self.tokens_per_s,
                "position_acceptance": self.position_acceptance, "tree_size": self.tree_size}

    def summary(self) -> str:
        line = (f"{self.new_tokens} tokens in {self.wall_time:.2f} s ({self.tokens_per_s:.1f} tok/s), "
                f"{self.target_calls} target calls, tau {self.tau:.2f}")
        if self.tree_nodes:
            line += (f", tree {self.tree_size:.0f} nodes, alpha {self.alpha:.3f} per depth "
                     f"({self.accepted} drafts accepted)")
        elif self.proposed:
            line += (f", alpha {self.alpha:.3f} ({self.accepted} of {self.tried} tried drafts accepted), "
                     f"{self.draft_calls} draft calls")
        return line


@dataclass
class Generation:
    token_ids: list[list[int]]  # new tokens of each sample, prompt excluded
    stats: Stats
