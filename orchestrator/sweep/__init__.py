"""The sweep driver, the Optuna study and its one-writer coordinator actor, the sweep's MLflow record.
Imports config, training, tracking, ray_runtime."""
