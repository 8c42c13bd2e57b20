"""A search worker whose trials use the scripted trainer: `python -m tests.scripted_worker <search_phase1 args>`.

The real settings, storage, study, stages (search, confirmation, signals) and trial files, in a separate process, so
that several of them can share a study (SQLite or PostgreSQL) or be killed in the tests without training models.
"""

import functools
import sys

from jepa_search.parser import build_parser
from jepa_search.progress import printer
from jepa_search.search import run_stages
from jepa_search.study import check_resumable, open_study
from jepa_search.validate import settings_from_args
from jepa_search.workers import registered
from tests.helpers import scripted_trainer

if __name__ == "__main__":
    settings = settings_from_args(build_parser().parse_args(sys.argv[1:]))
    check_resumable(settings)  # the command line's check of the storage, before the study is opened
    settings.output_dir.mkdir(parents=True, exist_ok=True)
    study = open_study(settings)
    trainer = functools.partial(scripted_trainer, seconds_per_eval=0.2)
    with registered(settings):
        code = run_stages(study, settings, printer(), trainer)
    sys.exit(code)
