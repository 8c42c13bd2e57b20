#!/usr/bin/env python
"""Phase 1 of the JEPA hyperparameter search for DreamerV3 (see README_HYPERPARAMETER_SEARCH.md).

    python search_phase1.py --env dmc --full-steps 1000000 --fidelity-frac 0.15 --n-trials 20 \\
        --eval-every 10000 --eval-episodes 10 --output-dir ./runs/phase1
"""

import sys

if __name__ == "__main__":
    # Imported here: the fork server of the environment processes imports this file again (as `__mp_main__`) and
    # needs none of the search
    from jepa_search.cli import main

    sys.exit(main())
