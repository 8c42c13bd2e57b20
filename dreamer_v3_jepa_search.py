#!/usr/bin/env python
"""DreamerV3-JEPA trained in this process with an evaluation hook: the training side of the search.

As a library, this is the API the search uses (`compose_config`, `run`, `EvalResult`, `run_trial`):

    from dreamer_v3_jepa_search import compose_config, run
    result = run(compose_config(["algo.total_steps=20000"]), hook=lambda ev: ev.mean > 500)  # True stops

As a command, it trains one configuration and prints every evaluation (SheepRL overrides as arguments):

    python dreamer_v3_jepa_search.py algo.jepa_coef=3.0 algo.total_steps=20000 algo.eval.every=5000
"""

import sys

from jepa_dreamer.dreamer_v3_jepa import TrainResult
from jepa_dreamer.evaluate import EvalHook, EvalResult
from jepa_dreamer.runner import compose_config, run
from jepa_search.trial import run_trial

__all__ = ["EvalHook", "EvalResult", "TrainResult", "compose_config", "run", "run_trial"]


def _print_evaluation(result: EvalResult) -> bool:
    print(f"evaluation {result.index} at step {result.policy_step}: {result.mean:.2f} ± {result.std:.2f}", flush=True)
    return False


if __name__ == "__main__":
    summary = run(compose_config(sys.argv[1:]), _print_evaluation)
    print(f"{summary.policy_steps} policy steps, {summary.gradient_steps} gradient steps, {summary.seconds:.0f}s")
