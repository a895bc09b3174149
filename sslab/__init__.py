"""The `sslab` command: a thin CLI over pipelines, orchestrator and workloads, which never import it."""
