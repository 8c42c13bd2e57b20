"""What SheepRL's launcher reads from an algorithm's `utils` module: the metrics it may aggregate and the models it
may register (`sheeprl.cli.run_algorithm` drops every configured metric not listed here)."""

from sheeprl.algos.dreamer_v3.utils import AGGREGATOR_KEYS as DREAMER_V3_AGGREGATOR_KEYS
from sheeprl.algos.dreamer_v3.utils import MODELS_TO_REGISTER as DREAMER_V3_MODELS

JEPA_AGGREGATOR_KEYS = {
    "Loss/jepa_loss",
    "JEPA/cosine",
    "JEPA/target_std",
    "Grads/encoder_jepa_over_recon",
}
AGGREGATOR_KEYS = DREAMER_V3_AGGREGATOR_KEYS | JEPA_AGGREGATOR_KEYS
MODELS_TO_REGISTER = DREAMER_V3_MODELS | {"jepa"}
