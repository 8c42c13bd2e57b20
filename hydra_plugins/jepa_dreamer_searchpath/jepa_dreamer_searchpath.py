"""Hydra plugin that makes `exp=dreamer_v3_jepa` and `algo=dreamer_v3_jepa` visible to SheepRL's CLI.

Hydra imports this module in every Hydra application, so it stays light: the algorithm (which imports torch and
SheepRL) is imported only when the application is SheepRL's, where `run_algorithm` looks it up in the registry.
"""

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin


class JepaDreamerSearchPathPlugin(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        # SheepRL's CLI names its configs `pkg://sheeprl/configs`, `initialize_config_module` `pkg://sheeprl.configs`
        if any(p.path.replace("/", ".").startswith("pkg:..sheeprl.configs") for p in search_path.get_path()):
            import jepa_dreamer.dreamer_v3_jepa  # noqa: F401  (registers the algorithm with SheepRL)

            search_path.append(provider="jepa-dreamer", path="pkg://jepa_dreamer.configs")
