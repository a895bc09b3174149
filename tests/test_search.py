"""The `search:` block (orchestrator.config.search) and the Optuna objects it makes (orchestrator.sweep.study)."""
import importlib.util

import optuna
import pytest
import yaml
from optuna.trial import TrialState
from pydantic import ValidationError

from orchestrator.config.loader import ConfigError, load_config
from orchestrator.config.schema import SSLabConfig
from orchestrator.config.search import SearchConfig
from orchestrator.config.search_checks import apply_params, check_search
from orchestrator.sweep.study import (
    exhausted,
    make_pruner,
    make_sampler,
    make_storage,
    open_study,
    recover_interrupted,
    space_size,
    storage_url,
    suggest,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)

BLOCK = """
search:
  objective: downstream/knn_top1
  direction: maximize
  sampler: tpe
  pruner: median
  n_trials: 8
  timeout_minutes: null
  max_concurrent_trials: 2
  storage: null
  study_name: null
  seed: 0
  space:
    workload.temperature: {type: float, low: 0.05, high: 1.0, log: true}
    train.batch_size: {type: categorical, choices: [128, 256]}
    train.lr: {type: float, low: 1e-4, high: 1e-2, log: true}
    workload.loss: {type: categorical, choices: [nt_xent, triplet]}
    workload.margin: {type: float, low: 0.1, high: 2.0}
    model.width: {type: int, low: 8, high: 32, step: 8}
"""


def block(**changes):
    raw = yaml.safe_load(BLOCK)["search"]
    for key, value in changes.items():
        if key == "space_update":
            raw["space"].update(value)
        else:
            raw[key] = value
    return raw


def errors(raw) -> str:
    with pytest.raises(ValidationError) as error:
        SearchConfig.model_validate(raw)
    return "\n".join(f"{'.'.join(map(str, e['loc']))}: {e['msg'].removeprefix('Value error, ')}" for e in error.value.errors())


def base_config(**sections) -> SSLabConfig:
    return SSLabConfig.model_validate({"name": "s", "data": {"uri": "cifar10://root"}, **sections})


def test_the_documented_block_validates():
    search = SearchConfig.model_validate(block())
    assert search.objective == "downstream/knn_top1" and search.direction == "maximize" and search.n_trials == 8
    assert search.space["train.lr"].low == pytest.approx(1e-4)  # YAML reads 1e-4 as a string
    assert search.space["model.width"].values() == [8, 16, 24, 32]
    assert search.space["train.batch_size"].choices == [128, 256]
    assert list(search.space) == ["workload.temperature", "train.batch_size", "train.lr", "workload.loss",
                                  "workload.margin", "model.width"]
    minimal = SearchConfig.model_validate({"timeout_minutes": 5, "space": {"train.lr": {"type": "float", "low": 0.001, "high": 0.1}}})
    assert (minimal.sampler, minimal.pruner, minimal.max_concurrent_trials, minimal.timeout_s) == ("tpe", "median", 1, 300.0)


def test_the_block_nests_in_the_config():
    config = base_config(search=block())
    assert isinstance(config.search, SearchConfig)
    assert base_config().search is None
    check_search(config)


@pytest.mark.parametrize("raw, expected", [
    (block(space_update={"workload.temprature": {"type": "float", "low": 0.1, "high": 1.0}}),
     ["space.workload.temprature: unknown key", "did you mean workload.temperature", "valid keys under workload:",
      "workload.loss", "workload.margin"]),
    (block(space_update={"nothing.here": {"type": "int", "low": 1, "high": 3}}),
     ["space.nothing.here: unknown key", "valid keys in the config:", "train.batch_size", "bank.size"]),
    (block(space_update={"train": {"type": "int", "low": 1, "high": 3}}),
     ["space.train: is a section", "train.epochs"]),
    (block(space_update={"train.lr": {"type": "float", "low": 0.01, "high": 0.001}}),
     ["space.train.lr: ", "low (0.01) must be less than high (0.001)"]),
    (block(space_update={"train.lr": {"type": "float", "low": 0.01, "high": 0.01}}),
     ["space.train.lr: ", "low (0.01) must be less than high (0.01)"]),
    (block(space_update={"workload.margin": {"type": "float", "low": 0.0, "high": 1.0, "log": True}}),
     ["space.workload.margin: ", "low (0.0) must be > 0 with log: true"]),
    (block(space_update={"train.batch_size": {"type": "categorical", "choices": []}}),
     ["space.train.batch_size: ", "choices must be a non-empty list"]),
    (block(sampler="grid"),
     ["space.workload.temperature: sampler grid takes categorical or int dimensions only",
      "space.train.lr: sampler grid", "space.workload.margin: sampler grid"]),
    (block(n_trials=None), ["n_trials / timeout_minutes: set at least one"]),
    (block(space_update={"workload.temperature": {"type": "float", "low": 0.0, "high": 1.0}}),
     ["space.workload.temperature: low (0.0) is not a valid workload.temperature: Input should be greater than 0"]),
    (block(space_update={"workload.temperature": {"type": "float", "low": 0.1, "high": 200.0}}),
     ["space.workload.temperature: high (200.0) is not a valid workload.temperature: Input should be less than or equal to 100"]),
    (block(space_update={"train.batch_size": {"type": "float", "low": 64, "high": 512}}),
     ["space.train.batch_size: train.batch_size is an integer field; use type: int or type: categorical"]),
    (block(space_update={"workload.loss": {"type": "categorical", "choices": ["nt_xent", "simclr"]}}),
     ["space.workload.loss: choice 'simclr' is not a valid workload.loss", "'triplet'"]),
    (block(space_update={"model.width": {"type": "int", "low": 8, "high": 30, "step": 8}}),
     ["space.model.width: ", "must be a multiple of step (8)"]),
    (block(space_update={"model.width": {"type": "int", "low": 8, "high": 32, "step": 0}}),
     ["space.model.width: ", "step (0) must be > 0"]),
    (block(space_update={"model.width": {"type": "int", "low": 8.5, "high": 32}}),
     ["space.model.width: ", "low (8.5) must be a whole number"]),
    (block(space_update={"train.lr": {"type": "float", "low": 0.001, "high": 0.1, "choices": [1]}}),
     ["space.train.lr: ", "choices do not apply to type float"]),
    (block(space_update={"augment.crop_scale": {"type": "categorical", "choices": [[0.2, 1.0]]}}),
     ["space.augment.crop_scale"]),
    (block(space_update={"name": {"type": "categorical", "choices": ["a", "b"]}}), ["space.name: unknown key"]),
    (block(space_update={"workload.loss": {"type": "categorical", "choices": ["nt_xent", "info_nce"]}}),
     ["space.workload.margin: never sampled", "contrastive, triplet, lifted_structured"]),
    (block(objective="knn"), ["objective: ", "'knn' is not a metric sslab records", "downstream/knn_top1"]),
    (block(storage="nosuchdb://host/x"), ["storage: ", "neither journal:PATH nor a database URL"]),
    (block(storage="journal:"), ["storage: ", "journal: needs a file path"]),
    (block(sampler="cmaes", space={"train.lr": {"type": "float", "low": 0.001, "high": 0.1},
                                   "train.batch_size": {"type": "categorical", "choices": [128, 256]}}),
     ["sampler cmaes: needs at least two float or int dimensions"]),
    (block(space={}), ["space: ", "at least 1 item"]),
    (block(typo=1), ["typo: Extra inputs are not permitted"]),
])
def test_a_bad_block_names_the_key(raw, expected):
    message = errors(raw)
    for part in expected:
        assert part in message, f"{part!r} not in:\n{message}"


def test_the_space_is_checked_against_the_whole_config():
    config = base_config(resources={"workers": 3}, train={"batch_size": 192}, bank={"mode": "queue", "negatives": "exact"},
                         workload={"loss": "info_nce"})
    search = SearchConfig.model_validate(block(space={
        "train.batch_size": {"type": "categorical", "choices": [96, 100]},
        "workload.loss": {"type": "categorical", "choices": ["info_nce", "triplet"]},
        "train.warmup_epochs": {"type": "int", "low": 0, "high": 20},
    }))
    with pytest.raises(ValueError) as error:
        check_search(config, search)
    message = str(error.value)
    assert "search.space.train.batch_size: 100 would make the config invalid: train.batch_size (100) must be a multiple of resources.workers (3)" in message
    assert "search.space.workload.loss: 'triplet' would make the config invalid" in message and "bank.negatives 'exact'" in message
    assert "search.space.train.warmup_epochs: 10 would make" in message and "and 8 more invalid values" in message
    assert "96 would" not in message


def test_a_conditional_key_needs_its_fixed_parent_to_use_it():
    search = SearchConfig.model_validate(block(space={"workload.margin": {"type": "float", "low": 0.1, "high": 2.0}}))
    with pytest.raises(ValueError, match=r"search.space.workload.margin: never sampled: .* workload.loss is 'nt_xent' \(fixed\)"):
        check_search(base_config(), search)
    check_search(base_config(workload={"loss": "triplet"}), search)


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_suggest_samples_the_loss_first_then_only_its_parameters(sampler):
    search = SearchConfig.model_validate(block(sampler=sampler, n_trials=60))
    study = optuna.create_study(direction="maximize", sampler=make_sampler(search))
    seen = set()
    for _ in range(60):
        trial = study.ask()
        params = suggest(trial, search)
        assert params == trial.params and list(params)[0] == "workload.loss"
        assert {"train.batch_size", "train.lr", "model.width"} <= set(params)
        if params["workload.loss"] == "triplet":
            assert "workload.margin" in params and "workload.temperature" not in params
            assert 0.1 <= params["workload.margin"] <= 2.0
        else:
            assert "workload.temperature" in params and "workload.margin" not in params
            assert 0.05 <= params["workload.temperature"] <= 1.0
        assert params["model.width"] in (8, 16, 24, 32) and params["train.batch_size"] in (128, 256)
        seen.add(params["workload.loss"])
        study.tell(trial, params.get("workload.margin", 0.0) + params.get("workload.temperature", 0.0))
    assert seen == {"nt_xent", "triplet"}


def test_suggest_reads_a_fixed_loss_from_the_base_config():
    search = SearchConfig.model_validate(block(space={
        "workload.margin": {"type": "float", "low": 0.1, "high": 2.0},
        "workload.temperature": {"type": "float", "low": 0.05, "high": 1.0},
    }))
    study = optuna.create_study()
    assert set(suggest(study.ask(), search, base_config(workload={"loss": "contrastive"}))) == {"workload.margin"}
    assert set(suggest(study.ask(), search, {"workload": {"loss": "info_nce"}})) == {"workload.temperature"}
    assert set(suggest(study.ask(), search, {"workload": {"loss": "npair"}})) == set()
    assert set(suggest(study.ask(), search)) == {"workload.margin", "workload.temperature"}


def test_grid_runs_each_distinct_parameter_set_once():
    conditional = SearchConfig.model_validate(block(sampler="grid", space={
        "workload.loss": {"type": "categorical", "choices": ["nt_xent", "triplet"]},
        "workload.temperature": {"type": "categorical", "choices": [0.1, 0.5]},
        "workload.margin": {"type": "categorical", "choices": [0.5, 1.0, 2.0]},
        "model.width": {"type": "int", "low": 8, "high": 16, "step": 8},
    }))
    assert space_size(conditional) == (2 + 3) * 2
    assert isinstance(make_sampler(conditional), optuna.samplers.BruteForceSampler)
    plain = SearchConfig.model_validate(block(sampler="grid", space={
        "train.batch_size": {"type": "categorical", "choices": [128, 256]},
        "model.width": {"type": "int", "low": 8, "high": 32, "step": 8},
    }))
    assert space_size(plain) == 8 and isinstance(make_sampler(plain), optuna.samplers.GridSampler)
    assert space_size(SearchConfig.model_validate(block())) is None
    for search in (conditional, plain):
        study = optuna.create_study(sampler=make_sampler(search))
        study.optimize(lambda trial: float(len(suggest(trial, search))), n_trials=50)
        sets = [tuple(sorted(t.params.items())) for t in study.trials]
        assert len(sets) == len(set(sets)) == space_size(search) and exhausted(study, search)
        asked = optuna.create_study(sampler=make_sampler(search))  # ask-and-tell: no Study.stop() error at the end
        while not exhausted(asked, search):
            trial = asked.ask()
            asked.tell(trial, float(len(suggest(trial, search))))
        assert len({tuple(sorted(t.params.items())) for t in asked.trials}) == len(asked.trials) == space_size(search)


@pytest.mark.parametrize("name, cls", [("tpe", optuna.samplers.TPESampler), ("random", optuna.samplers.RandomSampler),
                                       ("gp", optuna.samplers.GPSampler), ("cmaes", optuna.samplers.CmaEsSampler)])
def test_samplers(name, cls):
    search = SearchConfig.model_validate(block(sampler=name))
    if name == "cmaes" and importlib.util.find_spec("cmaes") is None:
        with pytest.raises(ImportError, match="pip install cmaes"):
            make_sampler(search)
        return
    assert type(make_sampler(search)) is cls


def test_pruners():
    median = make_pruner(SearchConfig.model_validate(block(pruner="median")))
    assert type(median) is optuna.pruners.MedianPruner
    assert (median._n_startup_trials, median._n_warmup_steps) == (2, 1)
    halving = make_pruner(SearchConfig.model_validate(block(pruner="successive_halving")), epochs=100)
    assert type(halving) is optuna.pruners.SuccessiveHalvingPruner and halving._min_resource == 4
    hyperband = make_pruner(SearchConfig.model_validate(block(pruner="hyperband")), epochs=15)
    assert type(hyperband) is optuna.pruners.HyperbandPruner
    assert (hyperband._min_resource, hyperband._max_resource, hyperband._reduction_factor) == (1, 15, 3)
    assert make_pruner(SearchConfig.model_validate(block(pruner="hyperband")))._max_resource == "auto"
    assert type(make_pruner(SearchConfig.model_validate(block(pruner="none")))) is optuna.pruners.NopPruner


def _run(study, search, n):
    study.optimize(lambda trial: suggest(trial, search)["train.lr"], n_trials=n)


@pytest.mark.parametrize("storage, file", [(None, "optuna.db"), ("sqlite:///runs/study.db", "runs/study.db"),
                                           ("journal:runs/journal.log", "runs/journal.log")])
def test_storages_persist_across_open_study(tmp_path, monkeypatch, storage, file):
    monkeypatch.chdir(tmp_path)
    search = SearchConfig.model_validate(block(storage=storage, sampler="random"))
    url = storage_url(search)
    assert str(tmp_path / file) in url and url.startswith(("sqlite:////", "journal:/"))
    study = open_study(search, "sweep_a")
    assert study.study_name == "sweep_a" and study.direction == optuna.study.StudyDirection.MAXIMIZE
    _run(study, search, 3)
    assert (tmp_path / file).is_file()
    monkeypatch.chdir(tmp_path / ".." if storage is None else "/")  # reopened from elsewhere: the path is absolute
    search_again = SearchConfig.model_validate(block(storage=url, sampler="random"))
    again = open_study(search_again, "sweep_a")
    assert len(again.trials) == 3
    _run(again, search, 2)
    again = open_study(search_again, "sweep_a")
    assert [t.state for t in again.trials] == [TrialState.COMPLETE] * 5
    assert open_study(search_again.model_copy(update={"study_name": "other"}), "sweep_a").trials == []
    with pytest.raises(ValueError, match="was made to maximize downstream/knn_top1; this config asks to minimize"):
        open_study(search_again.model_copy(update={"direction": "minimize"}), "sweep_a")


def test_journal_storage_class(tmp_path):
    search = SearchConfig.model_validate(block(storage=f"journal:{tmp_path}/j.log"))
    storage = make_storage(search)
    assert type(storage).__name__ == "JournalStorage"
    assert type(storage._backend).__name__ == "JournalFileBackend"


def test_recover_interrupted_fails_running_trials_and_retries_them_once(tmp_path):
    search = SearchConfig.model_validate(block(storage=f"journal:{tmp_path}/j.log", sampler="random"))
    study = open_study(search, "s")
    _run(study, search, 2)
    orphan = study.ask()
    params = suggest(orphan, search)  # the driver dies here
    study = open_study(search, "s")
    assert recover_interrupted(study) == [orphan.number]
    assert recover_interrupted(study) == []
    states = [t.state for t in study.trials]
    assert states == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.FAIL, TrialState.WAITING]
    retry = study.ask()
    assert suggest(retry, search) == params and retry.user_attrs["sslab.retry_of"] == orphan.number


def test_apply_params_sets_dotted_keys_without_touching_the_input():
    raw = {"name": "s", "data": {"uri": "cifar10://root"}, "workload": {"loss": "nt_xent", "temperature": 0.2}}
    params = {"workload.loss": "triplet", "workload.margin": 0.7, "train.lr": 0.01, "seed": 3}
    out = apply_params(raw, params)
    assert raw["workload"] == {"loss": "nt_xent", "temperature": 0.2} and "train" not in raw
    config = SSLabConfig.model_validate(out)
    assert (config.workload.loss, config.workload.margin, config.train.lr, config.seed) == ("triplet", 0.7, 0.01, 3)
    with pytest.raises(ValueError, match="cannot set data.uri.x: uri is"):
        apply_params(raw, {"data.uri.x": 1})


def test_a_bad_search_block_fails_loading_at_the_key_line(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text("name: x\ndata:\n  uri: cifar10://root\nsearch:\n  n_trials: 4\n  space:\n"
                    "    train.lr: {type: float, low: 1e-2, high: 1e-4}\n"
                    "    workload.temprature: {type: float, low: 0.05, high: 1.0, log: true}\n")
    with pytest.raises(ConfigError) as error:
        load_config(str(path))
    message = str(error.value)
    assert f"{path}:7:5: search.space.train.lr: Value error, low (0.01) must be less than high (0.0001)" in message
    assert f"{path}:8:5: search.space.workload.temprature: Value error, unknown key (did you mean workload.temperature" in message
