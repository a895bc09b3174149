"""Secrets out of the record: redaction of URLs and credential keys, ${NAME} references, and the refusal
of secrets written out in what a submitted sweep carries. The e2e greps are in test_stack.py (a local
sweep on the production stack) and test_cluster_sweep.py (a submitted one)."""
import os

import pytest
import yaml
from conftest import ROOT, SAMPLE
from mlflow.tracking import MlflowClient

from orchestrator.config.loader import ConfigError, load_config
from orchestrator.config.secrets import (
    MASK,
    expand_env,
    is_credential_key,
    literal_secrets,
    override_secret,
    redact,
    redact_text,
)
from orchestrator.jobs.client import TOKEN_SOURCES, JobError
from orchestrator.jobs.submit import refuse_literal_secrets
from orchestrator.jobs.upload import runtime_env
from orchestrator.tracking.record import Tracker, config_yaml, run_params

SECRET = "s3cr3t-unit-Zq9"


@pytest.mark.parametrize("text, expected", [
    (f"postgresql://sslab:{SECRET}@db:5432/optuna", "postgresql://sslab:***@db:5432/optuna"),
    (f"mysql+pymysql://u:{SECRET}@10.0.0.1/optuna?charset=utf8", "mysql+pymysql://u:***@10.0.0.1/optuna?charset=utf8"),
    (f"http://alice:{SECRET}@mlflow:5000", "http://alice:***@mlflow:5000"),
    (f"https://alice:{SECRET}@mlflow.example.org/api", "https://alice:***@mlflow.example.org/api"),
    (f"http://key:{SECRET}@minio:9000/bucket", "http://key:***@minio:9000/bucket"),
    (f"redis://:{SECRET}@cache:6379/0", "redis://:***@cache:6379/0"),  # a password without a user
    (f"postgresql://u:{SECRET}@with@at@db/x", "postgresql://u:***@db/x"),  # '@' in it: up to the last one
    (f"error: could not reach 'postgresql://u:{SECRET}@db/x' (timeout) and http://a:{SECRET}@m:1/ either",
     "error: could not reach 'postgresql://u:***@db/x' (timeout) and http://a:***@m:1/ either"),
])
def test_url_passwords_are_masked_whatever_the_scheme(text, expected):
    assert redact_text(text) == expected and SECRET not in redact_text(text)


@pytest.mark.parametrize("text", [
    "postgresql://sslab@127.0.0.1:5432/optuna",  # no password
    "http://127.0.0.1:8080/path@v2",  # a port and an '@' in the path: no userinfo
    "postgresql://u:${SSLAB_DB_PASSWORD}@db/x",  # a reference: the name, not the secret
    "postgresql://u:***@db/x",  # already masked
    "s3://bucket/prefix/file.parquet", "sqlite:////shared/optuna.db", "journal:/shared/optuna.log",
])
def test_urls_without_a_literal_password_are_left_alone(text):
    assert redact_text(text) == text


@pytest.mark.parametrize("text, expected", [
    (f"--set x.password={SECRET}", "--set x.password=***"),
    (f"AWS_SECRET_ACCESS_KEY={SECRET} AWS_DEFAULT_REGION=us-east-1", "AWS_SECRET_ACCESS_KEY=*** AWS_DEFAULT_REGION=us-east-1"),
    (f"{{'password': '{SECRET}', 'user': 'bob'}}", "{'password': '***', 'user': 'bob'}"),
    (f'{{"api_key": "{SECRET}", "n": 3}}', '{"api_key": "***", "n": 3}'),
    (f"Settings(db_passwd='{SECRET}')", "Settings(db_passwd='***')"),
    (f"GET /x?token={SECRET}&page=2", "GET /x?token=***&page=2"),
    (f"Authorization: Bearer {SECRET}", "Authorization: Bearer ***"),
    (f"RAY_AUTH_TOKEN={SECRET}", "RAY_AUTH_TOKEN=***"),
])
def test_credential_named_assignments_in_free_text_are_masked(text, expected):
    assert redact_text(text) == expected


@pytest.mark.parametrize("text", [
    # what sslab's own messages say about credentials must survive: modes, paths, placeholders, references
    f"Ray token authentication: the cluster requires a token: set RAY_AUTH_MODE=token and supply it: {TOKEN_SOURCES}",
    "AWS_SHARED_CREDENTIALS_FILE=/home/u/.aws/credentials", "author=Ada", "--set search.storage=${SSLAB_OPTUNA_DB}",
    "password=${DB_PASSWORD}", "secret_name=sslab-db", "train.epochs=3 workload.temperature=0.2",
    "the server wants Basic authentication or a Bearer token",
])
def test_harmless_text_is_unchanged(text):
    assert redact_text(text) == text


def test_credential_keys():
    for key in ("password", "DB_PASSWORD", "passwd", "aws_secret_access_key", "AWS_ACCESS_KEY_ID", "api_key", "apiKey",
                "RAY_AUTH_TOKEN", "Authorization", "credentials", "private_key", "oauth"):
        assert is_credential_key(key), key
    for key in ("storage", "uri", "author", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", "AWS_SHARED_CREDENTIALS_FILE",
                "batch_size", "temperature", "s3_endpoint_url"):
        assert not is_credential_key(key), key


def test_nested_dicts_lose_their_secrets_and_the_original_is_untouched():
    tree = {"search": {"storage": f"postgresql://u:{SECRET}@db/x", "n_trials": 4},
            "tracking": {"uri": f"http://a:{SECRET}@m:5000", "experiment": None},
            "cloud": {"aws_secret_access_key": SECRET, "region": "eu", "password": None,
                      "credentials": {"user": "bob", "key": SECRET}, "hosts": [f"http://x:{SECRET}@h", "plain"]}}
    out = redact(tree)
    assert SECRET not in repr(out) and SECRET in repr(tree)
    assert out["search"] == {"storage": "postgresql://u:***@db/x", "n_trials": 4}
    assert out["cloud"]["aws_secret_access_key"] == MASK and out["cloud"]["region"] == "eu"
    assert out["cloud"]["password"] is None and out["cloud"]["credentials"] == {"user": MASK, "key": MASK}
    assert out["cloud"]["hosts"] == ["http://x:***@h", "plain"] and out["tracking"]["experiment"] is None


def test_references_expand_from_the_environment():
    env = {"DB": f"postgresql://u:{SECRET}@db/x", "PW": SECRET, "N": "3"}
    raw = {"search": {"storage": "${DB}"}, "a": ["x-${PW}-y", 2], "b": "$${PW} stays", "train": {"epochs": "${N}"}}
    assert expand_env(raw, env) == {"search": {"storage": env["DB"]}, "a": [f"x-{SECRET}-y", 2], "b": "${PW} stays",
                                    "train": {"epochs": "3"}}


def sweep_config(tmp_path, storage: str = "sqlite:///optuna.db") -> str:
    config = yaml.safe_load(open(f"{ROOT}/examples/cifar10_sweep.yaml"))
    config["data"]["uri"] = SAMPLE
    config["search"]["storage"] = storage
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return str(path)


def test_the_loader_expands_references_in_the_file_and_in_overrides(tmp_path, monkeypatch):
    monkeypatch.setenv("SSLAB_TEST_DB", f"postgresql://u:{SECRET}@db/x")
    monkeypatch.setenv("SSLAB_TEST_EPOCHS", "2")
    config = load_config(sweep_config(tmp_path, "${SSLAB_TEST_DB}"), ["train.epochs=${SSLAB_TEST_EPOCHS}"])
    assert config.search.storage == f"postgresql://u:{SECRET}@db/x" and config.train.epochs == 2


def test_an_unset_variable_is_an_error_naming_the_key_and_the_variable(tmp_path, monkeypatch):
    monkeypatch.delenv("SSLAB_TEST_UNSET", raising=False)
    path = sweep_config(tmp_path, "${SSLAB_TEST_UNSET}")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    line = next(i for i, text in enumerate(open(path), 1) if "SSLAB_TEST_UNSET" in text)
    assert f"{path}:{line}:" in str(error.value) and "search.storage" in str(error.value)
    assert "SSLAB_TEST_UNSET, which is not set" in str(error.value)
    with pytest.raises(ConfigError, match=r"^--set: model.backbone: \$\{SSLAB_TEST_UNSET\}"):
        load_config(sweep_config(tmp_path), ["model.backbone=${SSLAB_TEST_UNSET}"])


def test_a_refused_value_is_quoted_without_its_password(tmp_path):
    with pytest.raises(ConfigError) as error:  # not a database SQLAlchemy knows: the validator quotes the value
        load_config(sweep_config(tmp_path), [f"search.storage=nosuchdb://u:{SECRET}@db/x"])
    assert "search.storage" in str(error.value) and "nosuchdb://u:***@db/x" in str(error.value)
    assert SECRET not in str(error.value)


def test_literal_secrets_are_found_and_references_are_not():
    raw = {"search": {"storage": f"postgresql://u:{SECRET}@db/x"}, "tracking": {"uri": "http://a:${PW}@m:5000"},
           "x": {"api_token": SECRET, "password": "${PW}", "items": ["ok", f"http://u:{SECRET}@h/"]}}
    assert literal_secrets(raw) == ["search.storage", "x.api_token", "x.items.1"]
    assert override_secret(f"search.storage=postgresql://u:{SECRET}@db/x") == "search.storage"
    assert override_secret(f"x.password={SECRET}") == "x.password"
    for harmless in ("search.storage=${SSLAB_OPTUNA_DB}", "tracking.uri=http://a:${PW}@m:5000", "train.epochs=3",
                     "x.password=${PW}", "search.storage=postgresql://sslab@db/x"):
        assert override_secret(harmless) is None, harmless


def test_a_submission_with_a_secret_written_out_is_refused_without_showing_it(tmp_path, capsys):
    from sslab.cli import main

    path = sweep_config(tmp_path, f"postgresql://u:{SECRET}@db/x")  # in the file that would travel
    with pytest.raises(ConfigError) as error:
        refuse_literal_secrets(path, [f"tracking.uri=http://a:{SECRET}@m:5000", "train.epochs=1"])
    message = str(error.value)
    assert SECRET not in message and message.startswith("not submitted: --set tracking.uri: holds a secret written out")
    assert "--set 'tracking.uri=${SSLAB_TRACKING_URI}'" in message and "set SSLAB_TRACKING_URI on the cluster" in message
    assert f"{path}: search.storage: holds a secret written out" in message and "${SSLAB_SEARCH_STORAGE}" in message
    refuse_literal_secrets(sweep_config(tmp_path, "${SSLAB_OPTUNA_DB}"), ["search.storage=${SSLAB_OPTUNA_DB}"])

    # the command: exit 2, before any cluster is asked (none listens at this address), the secret never printed
    os.environ["SSLAB_TEST_DB"] = f"postgresql://u:{SECRET}@db/x"
    try:
        code = main(["sweep", sweep_config(tmp_path, "${SSLAB_TEST_DB}"), "--address", "http://127.0.0.1:9",
                     "--set", f"search.storage=postgresql://u:{SECRET}@127.0.0.1/x"])
    finally:
        del os.environ["SSLAB_TEST_DB"]
    err = capsys.readouterr().err
    assert code == 2 and "--set search.storage: holds a secret written out" in err and SECRET not in err, err
    assert "cannot reach" not in err


def test_the_runtime_env_refuses_a_secret(tmp_path):
    assert runtime_env(str(tmp_path), {"RAY_JOB_STOP_WAIT_TIME_S": "120"})["env_vars"] == {"RAY_JOB_STOP_WAIT_TIME_S": "120"}
    with pytest.raises(JobError, match="AWS_SECRET_ACCESS_KEY") as error:
        runtime_env(str(tmp_path), {"AWS_SECRET_ACCESS_KEY": SECRET})
    assert SECRET not in str(error.value)


def test_validate_and_error_messages_print_no_secret(tmp_path, capsys, monkeypatch):
    from sslab.cli import main

    monkeypatch.setenv("SSLAB_TEST_DB", f"postgresql://u:{SECRET}@db/x")
    assert main(["validate", sweep_config(tmp_path, "${SSLAB_TEST_DB}")]) == 0
    out = capsys.readouterr().out
    assert "storage: postgresql://u:***@db/x" in out and SECRET not in out
    assert main(["validate", sweep_config(tmp_path), "--set", f"search.storage=nosuchdb://u:{SECRET}@db/x"]) == 2
    err = capsys.readouterr().err
    assert "sslab validate: error:" in err and "nosuchdb://u:***@db/x" in err and SECRET not in err


def test_the_record_of_a_run_holds_no_secret(tmp_path, monkeypatch):
    """Params, tags, config.yaml and a failure's sslab.error and error.txt, in a real (SQLite) MLflow store."""
    monkeypatch.chdir(tmp_path)
    storage = f"postgresql://sslab:{SECRET}@db.internal:5432/optuna"
    config = load_config(sweep_config(tmp_path, storage), [f"data.s3_endpoint_url=http://key:{SECRET}@minio:9000"])
    params = run_params(config)
    assert params["search.storage"] == "postgresql://sslab:***@db.internal:5432/optuna"
    assert params["data.s3_endpoint_url"] == "http://key:***@minio:9000" and SECRET not in repr(params)
    assert SECRET not in config_yaml(config) and "postgresql://sslab:***@db.internal" in config_yaml(config)

    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", "secrets")
    run_id = tracker.start_run(config, kind="sweep", tags={"sslab.where": storage})
    try:
        raise RuntimeError(f"could not connect to {storage}: password={SECRET} refused")
    except RuntimeError as error:
        tracker.fail(run_id, error)
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run = client.get_run(run_id)
    assert run.info.status == "FAILED" and run.data.params["search.storage"].endswith(":***@db.internal:5432/optuna")
    assert run.data.tags["sslab.error"] == ("RuntimeError: could not connect to postgresql://sslab:***@db.internal:5432/"
                                            "optuna: password=*** refused")
    assert run.data.tags["sslab.where"] == "postgresql://sslab:***@db.internal:5432/optuna"
    folder = client.download_artifacts(run_id, "", str(tmp_path / "artifacts"))
    texts = {name: open(os.path.join(folder, name)).read() for name in sorted(os.listdir(folder))}
    assert sorted(texts) == ["config.yaml", "error.txt"]
    assert "password=*** refused" in texts["error.txt"] and "Traceback" in texts["error.txt"]
    assert not [name for name, text in texts.items() if SECRET in text]
    assert SECRET not in repr(run.data.params) + repr(run.data.tags)
