"""The Optuna search over the JEPA hyperparameters of DreamerV3-JEPA."""
