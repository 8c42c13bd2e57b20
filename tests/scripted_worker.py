"""A search worker whose trials use the scripted trainer: `python -m tests.scripted_worker <search_phase1 args>`.

The real CLI, settings, storage, study and trial files, in a separate process, so that several of them can share a
study (SQLite or PostgreSQL) in the tests without training models.
"""

import functools
import sys

from jepa_search.cli import _printer, run_search
from jepa_search.objective import Objective
from jepa_search.settings import build_parser, settings_from_args
from jepa_search.study import open_study
from tests.helpers import scripted_trainer

if __name__ == "__main__":
    settings = settings_from_args(build_parser().parse_args(sys.argv[1:]))
    settings.output_dir.mkdir(parents=True, exist_ok=True)
    study = open_study(settings)
    trainer = functools.partial(scripted_trainer, seconds_per_eval=0.2)
    sys.exit(run_search(study, settings, Objective(settings, _printer(), trainer=trainer)))
