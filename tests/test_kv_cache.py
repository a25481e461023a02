"""The KV cache after appends, rollbacks and path gathers gives the same logits as a no-cache recompute."""

from __future__ import annotations

import torch
from conftest import tiny_draft, tiny_target
from hypothesis import given, settings
from hypothesis import strategies as st

from specref import SamplingParams, generate_sps

TOL = 1e-5  # fp64: real differences are ~1e-15


def recompute(model, context: list[int], new: torch.Tensor, new_pos: torch.Tensor) -> torch.Tensor:
    ids = torch.tensor(context + new.tolist())[None]
    pos = torch.cat([torch.arange(len(context)), new_pos])[None]
    return model(ids, pos).logits[0, len(context) :]


@torch.inference_mode()
def test_target_logits_after_long_generation_equal_recompute():
    """Record every cached target forward of a long SpS run with many rejections, then recompute each one
    without a cache from the final sequence (committed tokens never change, so the context a call saw is
    a prefix of it)."""
    target, draft = tiny_target(16, seed=31), tiny_draft(16, seed=32)
    calls = []
    forward = target.forward

    def recording(ids, pos, cache=None, mask=None, **kw):
        out = forward(ids, pos, cache, mask, **kw)
        if cache is not None and out.logits is not None:
            calls.append((ids.clone(), pos.clone(), out.logits.clone()))
        return out

    target.forward = recording
    out = generate_sps(target, draft, [1, 2, 3], gamma=4, max_new_tokens=60, params=SamplingParams(1.0),
                       seed=3, num_samples=3)
    del target.forward
    assert out.stats.accepted < 0.6 * out.stats.proposed  # many rejections, so many rollbacks
    final = [[1, 2, 3, *row] for row in out.token_ids]
    assert len(calls) > 15
    for ids, pos, logits in calls:
        for b, seq in enumerate(final):
            start = int(pos[b, 0])
            if start >= len(seq):  # a sequence already finished: its inputs are stale
                continue
            ref = recompute(target, seq[:start], ids[b], pos[b])
            torch.testing.assert_close(logits[b], ref, atol=TOL, rtol=0)


@settings(max_examples=30, deadline=None, derandomize=True)
@given(st.data())
def test_cache_operations_match_recompute(data):
    """Random appends (chains and trees), rollbacks and path gathers on a ragged batch of 2."""
    model = tiny_target(12, seed=41)
    cache = model.new_cache(2, 64)
    seqs: list[list[int]] = [[], []]  # tokens committed in each cache row, in order
    with torch.inference_mode():
        for _ in range(data.draw(st.integers(1, 6))):
            q = data.draw(st.integers(1, 5))
            new = torch.tensor(data.draw(st.lists(st.lists(st.integers(0, 11), min_size=q, max_size=q),
                                                  min_size=2, max_size=2)))
            # a random tree over the new tokens: parent[i] < i (or -1: child of the committed context)
            parents = [data.draw(st.integers(-1, i - 1)) for i in range(q)]
            mask = torch.eye(q, dtype=torch.bool)
            depth = [0] * q
            for i, par in enumerate(parents):
                if par >= 0:
                    mask[i] |= mask[par]
                    depth[i] = depth[par] + 1
            start = cache.lengths.clone()
            pos = start[:, None] + torch.tensor(depth)
            logits = model(new, pos, cache, mask[None]).logits
            for b in range(2):  # each node attends to the committed context plus its ancestors
                for i in range(q):
                    path = [j for j in range(q) if mask[i, j]]
                    ref = recompute(model, seqs[b], new[b, path], pos[b, path])[-1]
                    torch.testing.assert_close(logits[b, i], ref, atol=TOL, rtol=0)
            # keep a root-to-node path per row (a chain keeps a prefix), with ragged lengths
            ends = [data.draw(st.integers(-1, q - 1)) for _ in range(2)]
            paths = [[j for j in range(q) if e >= 0 and mask[e, j]] for e in ends]
            width = max(1, *(len(p) for p in paths))
            rows = torch.tensor([[int(start[b]) + j for j in p] + [int(start[b])] * (width - len(p))
                                 for b, p in enumerate(paths)])
            cache.keep(start + torch.tensor([len(p) for p in paths]), start=start, rows=rows)
            for b, p in enumerate(paths):
                seqs[b] += new[b, p].tolist()
        # a final chain step sees exactly the kept tokens
        probe = torch.tensor([[1], [2]])
        pos = cache.lengths[:, None].clone()
        logits = model(probe, pos, cache).logits
        for b in range(2):
            ref = recompute(model, seqs[b], probe[b], pos[b])
            torch.testing.assert_close(logits[b], ref, atol=TOL, rtol=0)
