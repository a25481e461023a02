"""The conformance kit: specref as the oracle that tells whether a speculative sampler is lossless.

    from specref.conformance import check_sampler, exact_law
    report = check_sampler(my_sampler, target, prompt_ids=[1, 2, 3], length=3,
                           params=SamplingParams(1.0, top_k=4), n=20_000)
    print(report.summary())  # verdict, TV, G-test p, impossible samples, the smallest TV this N detects

`law.py` enumerates the target's exact autoregressive law, `stats.py` holds the G-test and its power,
`kit.py` draws and judges, `engines.py` wraps specref's modes and Hugging Face generation as samplers.
"""

from specref.conformance.kit import ALPHA, Cell, GreedyReport, Report, Sampler, check_greedy, check_sampler
from specref.conformance.law import exact_law, greedy_continuation
from specref.conformance.stats import detectable_tv

__all__ = ["ALPHA", "Cell", "GreedyReport", "Report", "Sampler", "check_greedy", "check_sampler", "detectable_tv",
           "exact_law", "greedy_continuation"]
