"""The MLflow record (runs, params, metrics, status), Ray Train's report callback, figures, compare.
Imports config and MLflow; not training, sweep or the memory bank."""
