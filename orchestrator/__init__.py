"""The control plane: config, the Ray Train driver and worker, sweeps on Optuna, Ray jobs, the memory
bank service, the MLflow record. Imports workloads, Ray, Optuna, MLflow; never sslab or pipelines."""
