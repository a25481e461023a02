"""The conformance kit (`specref.conformance`) itself: exact, calibrated, powerful, and with teeth.

* its law is the brute-force law, its distribution functions are SciPy's;
* calibration: samples drawn from the exact law give uniform p-values, and specref's modes pass;
* power: a sampler at total variation 0.05 from the law is flagged at N = 20,000, as `detectable_tv` says;
* teeth: every mutation the suite re-injects into a real decoding loop, and lossy samplers written here
  (Medusa's typical acceptance, a verifier that ignores top-p, a residual taken from p), are flagged.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from scipy import stats

import specref.eagle_decode
import specref.sps
from specref._sampler import SeededCoin, chain_law, verify_chain, verify_tree
from specref.conformance import check_greedy, check_sampler, detectable_tv, exact_law
from specref.conformance.engines import hf_sampler, specref_sampler
from specref.conformance.law import next_token_logits
from specref.conformance.stats import chi2_sf, critical_value, ncx2_cdf, noncentrality_for_power
from specref.eagle import random_head
from specref.formats.hf import to_transformers
from specref.logits import SamplingParams, process_logits

N = 20_000
L = 3
PROMPT = [3, 1, 4, 1, 3]
T1 = SamplingParams(1.0)


@pytest.fixture(scope="module")
def law(pair):
    return exact_law(pair[0], PROMPT, L, T1)


def law_sampler(law: dict[tuple, float]):
    """Draws continuations from `law` itself: the ideal lossless sampler."""
    cells = sorted(law)
    probs = np.array([law[c] for c in cells])

    def sample(prompt, n, seed):
        idx = np.random.default_rng(seed).choice(len(cells), size=n, p=probs / probs.sum())
        return [list(cells[i]) for i in idx]

    return sample


def test_distribution_functions_match_scipy():
    for df in (1, 4, 15, 63, 511):
        for x in (0.5 * df, df, 2 * df + 30):
            assert math.isclose(chi2_sf(x, df), stats.chi2.sf(x, df), rel_tol=1e-9, abs_tol=1e-300)
            for lam in (0.0, 10.0, 150.0):
                assert math.isclose(ncx2_cdf(x, df, lam), stats.ncx2.cdf(x, df, lam) if lam else stats.chi2.cdf(x, df),
                                    rel_tol=1e-7, abs_tol=1e-12)
        assert math.isclose(critical_value(df, 1e-6), stats.chi2.isf(1e-6, df), rel_tol=1e-9)
    # lossless.md's table: the noncentrality for power 0.99 at alpha 1e-6
    for df, lam in ((1, 52), (4, 62), (9, 72), (15, 81), (31, 98)):
        assert abs(noncentrality_for_power(df, 1e-6, 0.99) - lam) < 1
    assert detectable_tv(20_000, 63, 1e-6) == pytest.approx(math.sqrt(noncentrality_for_power(63, 1e-6, 0.99) / 8e4))


def test_exact_law_prunes_to_the_support_and_matches_brute_force(pair):
    target = pair[0]
    params = SamplingParams(0.8, top_k=3)
    law = exact_law(target, PROMPT, L, params, batch=5)  # small batches: the chunking must not matter
    assert len(law) == 3**L and math.isclose(sum(law.values()), 1.0, abs_tol=1e-12)
    logits = next_token_logits(target)
    for seq in itertools.islice(itertools.product(range(8), repeat=L), 0, None, 7):
        prob = 1.0
        for t in range(L):
            p = process_logits(logits(torch.tensor([PROMPT + list(seq[:t])])).double(), params)[0]
            prob *= float(p[seq[t]])
        assert math.isclose(law.get(seq, 0.0), prob, rel_tol=1e-12, abs_tol=1e-300)
    with pytest.raises(ValueError, match="bound the support with top_k"):
        exact_law(target, PROMPT, 4, T1, max_prefixes=100)
    with pytest.raises(ValueError, match="prompt is empty"):
        exact_law(target, [], 2, T1)


def test_ideal_sampler_p_values_are_uniform(law):
    """Calibration: 200 runs of N = 2,000 from the law itself; about 5% of p-values fall below 0.05 (binomial
    99.99% bounds: 1 to 25 of 200) and none below the kit's alpha."""
    sampler = law_sampler(law)
    reports = [check_sampler(sampler, None, PROMPT, L, law=law, n=2_000, seed=s) for s in range(200)]
    assert all(r.passed for r in reports)
    small = sum(r.p_value < 0.05 for r in reports)
    assert 1 <= small <= 25, f"{small} of 200 p-values below 0.05"
    assert all(r.impossible == 0 and r.cells == len(law) for r in reports)


def test_a_sampler_at_tv_005_is_flagged_at_the_documented_n(law):
    """Power: mixing in a uniform law over the support moves the law by TV exactly 0.05, spread over every cell
    (the hardest kind of deviation for the test); N = 20,000 detects it, as `detectable_tv` promises."""
    uniform = 1 / len(law)
    spread = 0.5 * sum(abs(uniform - p) for p in law.values())
    eps = 0.05 / spread
    shifted = {c: (1 - eps) * p + eps * uniform for c, p in law.items()}
    assert 0.5 * sum(abs(shifted[c] - law[c]) for c in law) == pytest.approx(0.05)
    for seed in range(3):
        r = check_sampler(law_sampler(shifted), None, PROMPT, L, law=law, n=N, seed=seed)
        assert not r.passed and r.detectable_tv <= 0.05, r.summary()


@pytest.mark.parametrize("mode", ["ar", "sps", "eagle"])
def test_specref_modes_pass(pair, law, mode):
    target, draft = pair
    head = random_head("eagle3", target, seed=5, scale=3.0)
    r = check_sampler(specref_sampler(mode, target, L, T1, draft=draft, head=head, gamma=3), target, PROMPT, L,
                      law=law, n=N, seed=1, name=mode)
    assert r.passed and r.n == N and r.cells == len(law), r.summary()
    g = check_greedy(specref_sampler(mode, target, L, SamplingParams(0.0), draft=draft, head=head), target,
                     PROMPT, L, n=3)
    assert g.passed and len(g.expected) == L, g.summary()


def flagged(sampler, target, params=T1) -> None:
    r = check_sampler(sampler, target, PROMPT, L, params, n=N, seed=2)
    assert not r.passed, f"not flagged: {r.summary()}"


def test_the_suite_mutations_in_real_loops_are_flagged(pair, monkeypatch):
    """The bugs test_mutations.py re-injects into specref's loops, each flagged by the kit alone."""
    target, draft = pair
    sps_run = specref_sampler("sps", target, L, T1, draft=draft, gamma=1)
    with monkeypatch.context() as m:  # the bonus drawn from row gamma - 1
        m.setattr(specref.sps, "verify_chain", functools.partial(verify_chain, flaw="bonus_row_off"))
        flagged(sps_run, target)
    head = random_head("eagle3", target, seed=5, scale=3.0)
    with monkeypatch.context() as m:  # a leaf's bonus drawn from its parent's row
        m.setattr(specref.eagle_decode, "verify_tree", functools.partial(verify_tree, flaw="bonus_row_off"))
        flagged(specref_sampler("eagle", target, L, T1, head=head), target)
    with monkeypatch.context() as m:  # argmax drafts verified against their softmax instead of a one-hot q
        m.setattr(specref.sps, "propose", lambda logits, params, greedy, gen: (
            logits.argmax(-1), process_logits(logits, params)))
        flagged(specref_sampler("sps", target, L, T1, draft=draft, gamma=3), target)
    with monkeypatch.context() as m:  # every draw reseeded: rounds repeat their uniforms
        sample = specref.sps.sample
        m.setattr(specref.sps, "sample", lambda probs, gen: sample(probs, gen.manual_seed(0)))
        m.setattr(specref.sps, "verify_chain", lambda p, q, x, coin, **kw: verify_chain(p, q, x, SeededCoin(0), **kw))
        flagged(sps_run, target)


def test_a_greedy_mutation_is_flagged_by_the_greedy_check(pair, monkeypatch):
    target = pair[0]
    monkeypatch.setattr(specref.sps, "verify_chain", functools.partial(verify_chain, flaw="bonus_row_off"))
    g = check_greedy(specref_sampler("sps", target, 6, SamplingParams(0.0), draft=target, gamma=2), target,
                     PROMPT, 6, n=2)
    assert not g.passed and g.differ == 2, g.summary()


def test_non_strict_acceptance_is_beyond_any_sampling_test():
    """`u * q <= p` differs from `u * q < p` only when the uniform is exactly 0 (probability 2**-53 per
    decision): no N reaches it, which is why the suite checks it with the exact law (test_mutations.py)."""
    p, q, x = np.array([[0.0, 0.5, 0.5], [0.2, 0.3, 0.5]]), np.array([[0.5, 0.25, 0.25]]), np.array([0])
    exact, flawed = (dict(((a, t), w) for a, t, _, w in chain_law(p, q, x, flaw=f)) for f in (None, "non_strict"))
    tv = 0.5 * sum(abs(exact.get(k, 0.0) - flawed.get(k, 0.0)) for k in exact.keys() | flawed.keys())
    assert 0 < tv <= 2.0**-52


class NextToken:
    """p(. | context) of a model under `params`, each context computed once (tiny vocabularies only)."""

    def __init__(self, model, params: SamplingParams) -> None:
        self.logits, self.params, self.rows = next_token_logits(model), params, {}

    def __call__(self, context: tuple) -> np.ndarray:
        if context not in self.rows:
            logits = self.logits(torch.tensor([list(context)]))
            self.rows[context] = process_logits(logits.double(), self.params)[0].numpy()
        return self.rows[context]


def chain_sampler(target, draft, params, *, gamma=2, accept=None, residual=None, target_params=None):
    """A plain-Python SpS round by round (Leviathan et al. 2023) with a replaceable acceptance rule and
    residual; with neither replaced it is lossless, and the test below checks that it passes."""
    p_of, q_of = NextToken(target, target_params or params), NextToken(draft, params)
    accept = accept or (lambda p, q, x, rng: rng.random() * q[x] < p[x])
    residual = residual or (lambda p, q: np.maximum(p - q, 0) if (p > q).any() else p)

    def sample(prompt, n, seed):
        rng, out = np.random.default_rng(seed), []
        for _ in range(n):
            s = list(prompt)
            while len(s) < len(prompt) + L:
                drafts, qs = [], []
                for _ in range(gamma):
                    qs.append(q_of(tuple(s + drafts)))
                    drafts.append(int(rng.choice(8, p=qs[-1])))
                for i, x in enumerate(drafts):
                    p = p_of(tuple(s + drafts[:i]))
                    if not accept(p, qs[i], x, rng):
                        r = residual(p, qs[i])
                        s += [*drafts[:i], int(rng.choice(8, p=r / r.sum()))]
                        break
                else:
                    s += [*drafts, int(rng.choice(8, p=p_of(tuple(s + drafts))))]
            out.append(s[len(prompt):])
        return out

    return sample


def tree_sampler(target, draft, params, *, kind: int, k: int, flaw: str | None = None):
    """One-level trees of k children per round, drafted by `kind` (0 top-k, 1 i.i.d., 2 without replacement)
    from the draft's law and verified by the Rust verifier (with `flaw`), batched over the samples."""
    p_of, q_of = NextToken(target, params), NextToken(draft, params)

    def children(q, rng):
        if kind == 0:
            return list(np.argsort(-q, kind="stable")[:k])
        if kind == 1:
            return list(rng.choice(8, size=k, p=q))
        out, w = [], q.copy()
        for _ in range(k):  # sequential draws without replacement: the order the verifier assumes
            out.append(int(rng.choice(8, p=w / w.sum())))
            w[out[-1]] = 0
        return out

    def sample(prompt, n, seed):
        rng, coin, seqs = np.random.default_rng(seed), SeededCoin(seed), [list(prompt) for _ in range(n)]
        while active := [s for s in seqs if len(s) < len(prompt) + L]:
            tokens, p, q = [], [], []
            for s in active:
                q0 = q_of(tuple(s))
                xs = children(q0, rng)
                tokens.append([0, *xs])
                p.append([p_of(tuple(s)), *(p_of((*s, x)) for x in xs)])
                q.append([q0, *([np.full(8, 1 / 8)] * k)])
            b = len(active)
            parents = np.tile(np.array([-1] + [0] * k), (b, 1))
            kinds = np.tile(np.array([kind] + [0] * k), (b, 1))
            path, length, nxt, _ = verify_tree(parents, np.array(tokens), kinds, np.array(p), np.array(q), coin,
                                               flaw=flaw)
            for i, (s, row) in enumerate(zip(active, tokens, strict=True)):
                if length[i] == 2:  # a child accepted: its token, then the bonus drawn from its row
                    s.append(row[int(path[i, 1])])
                s.append(int(nxt[i]))
        return [s[len(prompt):] for s in seqs]

    return sample


# The toy samplers are lossless as written (first two cases); each flaw or lossy rule must be flagged.
TOP_P = SamplingParams(1.0, top_p=0.8)


def typical(p, q, x, rng):
    """Medusa's typical acceptance (Cai et al. 2024): accept x iff p(x) > min(0.09, 0.3 exp(-H(p)))."""
    entropy = -float(np.sum(p[p > 0] * np.log(p[p > 0])))
    return p[x] > min(0.09, 0.3 * math.exp(-entropy))


TOY = {
    "chain, correct": (lambda t, d: chain_sampler(t, d, T1), T1, True),
    "chain, top-p, correct": (lambda t, d: chain_sampler(t, d, TOP_P), TOP_P, True),
    "tree iid, correct": (lambda t, d: tree_sampler(t, d, T1, kind=1, k=5), T1, True),
    "tree without replacement, correct": (lambda t, d: tree_sampler(t, d, T1, kind=2, k=3), T1, True),
    "tree top-k, correct": (lambda t, d: tree_sampler(t, d, T1, kind=0, k=2), T1, True),
    "topk_with_ratio": (lambda t, d: tree_sampler(t, d, T1, kind=0, k=2, flaw="topk_with_ratio"), T1, False),
    "sorted_siblings": (lambda t, d: tree_sampler(t, d, T1, kind=1, k=3, flaw="sorted_siblings"), T1, False),
    "no_renorm": (lambda t, d: tree_sampler(t, d, T1, kind=2, k=3, flaw="no_renorm"), T1, False),
    "skip_dup_update": (lambda t, d: tree_sampler(t, d, T1, kind=1, k=5, flaw="skip_dup_update"), T1, False),
    "typical acceptance": (lambda t, d: chain_sampler(t, d, T1, accept=typical), T1, False),
    "verifier ignores top-p": (lambda t, d: chain_sampler(t, d, TOP_P, target_params=T1), TOP_P, False),
    "residual from p": (lambda t, d: chain_sampler(t, d, T1, residual=lambda p, q: p), T1, False),
}


@pytest.mark.parametrize("name", list(TOY))
def test_toy_samplers_pass_and_their_flaws_are_flagged(pair, name):
    make, params, lossless = TOY[name]
    target, draft = pair
    r = check_sampler(make(target, draft), target, PROMPT, L, params, n=N, seed=3, name=name)
    assert r.passed == lossless, r.summary()


def test_bad_samplers_and_arguments_are_refused(pair, law):
    target = pair[0]
    short = lambda prompt, n, seed: [[1, 2]] * n  # noqa: E731
    with pytest.raises(ValueError, match="continuation of 2 tokens"):
        check_sampler(short, target, PROMPT, L, law=law, n=10)
    with pytest.raises(ValueError, match="returned 1 continuations"):
        check_sampler(lambda prompt, n, seed: [[1, 2, 3]], target, PROMPT, L, law=law, n=10)
    with pytest.raises(ValueError, match="alpha"):
        check_sampler(law_sampler(law), target, PROMPT, L, law=law, n=10, alpha=0)
    r = check_sampler(lambda prompt, n, seed: [[7, 7, 7, 0]] * n, target, PROMPT, L, law={(1, 2, 3): 1.0}, n=10)
    assert r.impossible == 10 and r.verdict == "FAIL" and r.worst[0].tokens in {(7, 7, 7), (1, 2, 3)}


@pytest.fixture(scope="module")
def hf_pair(pair):
    return to_transformers(pair[0]), to_transformers(pair[1])


@pytest.mark.parametrize("mode", ["sample", "assisted", "prompt_lookup"])
def test_transformers_generation_through_the_kit(pair, hf_pair, mode):
    """Hugging Face generation on the same weights: its law is the same, and (README, `python -m specref
    conformance`) it passes; N is kept small here because assisted generation runs one sequence at a time."""
    hf_target, hf_draft = hf_pair
    n = N if mode == "sample" else 1_500
    law, own = exact_law(hf_target, PROMPT, L, T1), exact_law(pair[0], PROMPT, L, T1)
    # transformers computes RMSNorm and rotary angles in float32 even for float64 weights
    assert law.keys() == own.keys() and max(abs(law[c] - own[c]) for c in law) < 1e-5
    r = check_sampler(hf_sampler(hf_target, L, T1, mode=mode, assistant=hf_draft), hf_target, PROMPT, L, T1,
                      law=law, n=n, seed=4)
    assert r.passed, r.summary()
    g = check_greedy(hf_sampler(hf_target, L, SamplingParams(0.0), mode=mode, assistant=hf_draft), hf_target,
                     PROMPT, L, n=2)
    assert g.passed, g.summary()


def test_cli_refuses_bad_arguments_before_any_work(tmp_path):
    from specref.tools.cli import CLI

    for kwargs, needle in (({"suites": "tiny,bogus"}, "--suites"), ({"alpha": 2.0}, "--alpha"), ({"n": 0}, "n"),
                           ({"length": 0}, "length"), ({"out": str(tmp_path)}, "is a directory"),
                           ({"out": str(tmp_path / "missing" / "c.json")}, "directory does not exist")):
        with pytest.raises(ValueError, match=needle):
            CLI().conformance(**kwargs)


def test_cli_runs_the_tiny_suite_and_writes_every_report(tmp_path):
    out = tmp_path / "conformance.json"
    res = subprocess.run([sys.executable, "-m", "specref", "conformance", str(out), "--suites", "tiny", "--n", "300"],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    rows = json.loads(out.read_text())["rows"]
    modes = [(r["engine"], r["mode"]) for r in rows]
    assert len(rows) == 12 and set(modes) == {("specref", "ar"), ("specref", "sps gamma=3"), ("specref", "eagle"),
                                              ("transformers", "sample"), ("transformers", "assisted"),
                                              ("transformers", "prompt_lookup")}
    assert all(r["passed"] for r in rows), [r for r in rows if not r["passed"]]
    assert sum(line.startswith("tiny ") for line in res.stdout.splitlines()) == 12


def test_chunks_of_runs_with_neighbouring_seeds_draw_different_samples(law):
    """Chunk i of a run is not chunk i - 1 of the run seeded one higher; the first chunk keeps the run's seed."""
    seeds: dict[int, list[int]] = {0: [], 1: []}
    for run, used in seeds.items():
        check_sampler(lambda p, n, s, used=used: used.append(s) or law_sampler(law)(p, n, s), None, PROMPT, L,
                      law=law, n=100, seed=run, chunk=30)
    assert seeds[0][0] == 0 and seeds[1][0] == 1 and len(set(seeds[0] + seeds[1])) == 8
    assert all(0 <= s < 2**32 for s in seeds[0] + seeds[1])


def test_degenerate_runs_are_refused_or_marked(law):
    with pytest.raises(ValueError, match="chunk"):
        check_sampler(law_sampler(law), None, PROMPT, L, law=law, n=100, chunk=-1)
    r = check_sampler(law_sampler(law), None, PROMPT, L, law=law, n=3)  # every cell expected < 5 times: one pool
    assert r.df == 0 and r.detectable_tv == math.inf
