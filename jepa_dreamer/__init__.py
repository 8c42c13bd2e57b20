"""DreamerV3 with a JEPA auxiliary loss, as a SheepRL algorithm (`algo=dreamer_v3_jepa`).

The training loop reports to the `jepa_dreamer` logger at INFO: a caller decides where the lines go (the search
writes them to each trial's `training.log`, the `sheeprl` command to the console).
"""

import logging

_log = logging.getLogger(__name__)
_log.setLevel(logging.INFO)
# Not up to the root logger: a dependency that configures it (absl does, when dm_control logs) would print every
# training line in the search's terminal
_log.propagate = False
