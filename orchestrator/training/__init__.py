"""One Ray Train run: the driver, the per-worker loop, train state, learners, evaluation, the final report.
Imports config, tracking, memory_bank, ray_runtime and workloads."""
