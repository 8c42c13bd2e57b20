#!/usr/bin/env python
"""One trial in a child process (`search_phase1.py --isolation subprocess`), for crash isolation.

    python train_wrapper.py --trial-config trial_3/trial_spec.json --out trial_3

It runs the same `run_trial` as the in-process search and writes the same files; it reaches the Optuna trial through
the shared storage (URL from $JEPA_SEARCH_STORAGE, else the spec's), so reporting and pruning work as in-process.
Exit code 0 when the trial completed or was pruned (see results.json), 1 when it failed, 75 when the database stayed
out of reach past --storage-timeout.
"""

import argparse
import dataclasses
import os
import sys
from pathlib import Path

import optuna

from jepa_search.progress import printer
from jepa_search.record import live_trial
from jepa_search.settings import STORAGE_ENV
from jepa_search.storage import EXIT_STORAGE, PatientStorage, StorageUnavailable
from jepa_search.study import make_pruner
from jepa_search.trial import TrialSpec, run_trial


def main() -> int:
    parser = argparse.ArgumentParser(description="Run one search trial from its spec file.")
    parser.add_argument("--trial-config", required=True, help="the trial_spec.json written by the search")
    parser.add_argument("--out", required=True, help="the trial folder (results.json, history.csv, training.log)")
    args = parser.parse_args()
    spec = dataclasses.replace(TrialSpec.load(Path(args.trial_config)), trial_dir=args.out)
    pruner = make_pruner(spec.pruner, spec.grace_evaluations, spec.n_evaluations)
    # A database outage is ridden out as in the search's own process (jepa_search/storage.py)
    storage = PatientStorage(os.environ.get(STORAGE_ENV, spec.storage), spec.storage_timeout)
    study = optuna.load_study(study_name=spec.study_name, storage=storage, pruner=pruner)
    try:
        run_trial(spec, live_trial(study, spec.number), printer())
    except StorageUnavailable as e:
        print(f"train_wrapper.py: error: {e}", file=sys.stderr)
        return EXIT_STORAGE
    except Exception:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
