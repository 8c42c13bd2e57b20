#!/usr/bin/env python
"""Phase 1 of the JEPA hyperparameter search for DreamerV3 (see README_HYPERPARAMETER_SEARCH.md).

    python search_phase1.py --env dmc --full-steps 1000000 --fidelity-frac 0.15 --n-trials 20 \\
        --eval-every 10000 --eval-episodes 10 --output-dir ./runs/phase1
"""

import sys

from jepa_search.cli import main

if __name__ == "__main__":
    sys.exit(main())
