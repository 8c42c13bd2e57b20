"""Hydra plugin that makes `exp=dreamer_v3_jepa` and `algo=dreamer_v3_jepa` visible to SheepRL's CLI.

Hydra imports this module in every Hydra application, so it stays light: it acts only in SheepRL's applications
(the `sheeprl` command, or a composition of SheepRL's configs), where it adds this project's configs and imports the
algorithm, which registers it with SheepRL's `run_algorithm`.
"""

import sys

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin


def _is_sheeprl_app(search_path: ConfigSearchPath) -> bool:
    # The `sheeprl` command names its configs `pkg://sheeprl/configs`, `initialize_config_module`
    # `pkg://sheeprl.configs`; a Phase 2 file run with --config-path reaches them through its hydra.searchpath
    in_path = any(p.path.replace("/", ".").startswith("pkg:..sheeprl.configs") for p in search_path.get_path())
    return in_path or "sheeprl.cli" in sys.modules


class JepaDreamerSearchPathPlugin(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        if _is_sheeprl_app(search_path):
            import jepa_dreamer.dreamer_v3_jepa  # noqa: F401  (registers the algorithm with SheepRL)

            search_path.append(provider="jepa-dreamer", path="pkg://jepa_dreamer.configs")
