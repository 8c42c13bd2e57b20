"""DreamerV3 with a JEPA auxiliary loss, as a SheepRL algorithm (`algo=dreamer_v3_jepa`)."""
