"""Typed sslab configuration: a run's config plus the optional search block of a sweep."""
from pydantic import model_validator

from orchestrator.config.run import RunConfig
from orchestrator.config.search import SearchConfig
from orchestrator.config.search_checks import check_search


class SSLabConfig(RunConfig):
    search: SearchConfig | None = None

    @model_validator(mode="after")
    def _search_fits_config(self) -> "SSLabConfig":
        if self.search is not None:
            check_search(self)
            if self.search.objective.endswith("linear_top1") and not self.eval.linear_probe:
                raise ValueError(f"search.objective {self.search.objective!r} needs the linear probe, and "
                                 "eval.linear_probe is false: set eval.linear_probe: true or choose another objective")
        return self
