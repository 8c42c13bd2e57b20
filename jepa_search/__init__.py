"""The Optuna search over the JEPA hyperparameters of DreamerV3-JEPA.

A trial's own lines go to the `jepa_search` logger at INFO, which the trial writes into its `training.log`.
"""

import logging

_log = logging.getLogger(__name__)
_log.setLevel(logging.INFO)
# Not up to the root logger: a dependency that configures it (absl does, when dm_control logs) would print every
# training line in the search's terminal
_log.propagate = False
