"""deploy/: every file runs or validates as written (deploy/README.md says how each is used)."""
import fcntl
import os
import re
import shlex
import shutil
import subprocess
import time
import tomllib

import pytest
import yaml
from conftest import BIN, ROOT

DEPLOY = os.path.join(ROOT, "deploy")
CRONTAB = os.path.join(DEPLOY, "cron", "sslab.crontab")
WORKFLOW = os.path.join(DEPLOY, "ci", "sslab-nightly.yml")
COMPOSE = os.path.join(DEPLOY, "compose", "docker-compose.yml")
KUBERAY = os.path.join(DEPLOY, "kuberay")
LOCKED = 75  # flock -E in the crontab line


def pinned_ray() -> str:
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as handle:
        dependencies = tomllib.load(handle)["project"]["dependencies"]
    [ray] = [d for d in dependencies if re.match(r"ray\b", d)]
    match = re.search(r"==([\w.]+)", ray)
    assert match, f"pyproject.toml must pin ray exactly (the deploy images use that version): {ray}"
    return match.group(1)


# ---- cron ------------------------------------------------------------------------------------

def crontab() -> tuple[dict[str, str], str, str]:
    """The crontab's variables, its one job's schedule and its command as cron hands it to the shell:
    an unescaped % would end the command (none here), \\% becomes %."""
    variables, commands, schedules = {}, [], []
    for line in open(CRONTAB).read().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if re.match(r"^[A-Z_]+=", line):
            name, value = line.split("=", 1)
            variables[name] = value
        else:
            fields = line.split(None, 5)
            assert len(fields) == 6, f"not a crontab job line: {line}"
            commands.append(fields[5])
            schedules.append(" ".join(fields[:5]))
    [command], [schedule] = commands, schedules
    assert not re.search(r"(?<!\\)%", command), "an unescaped % would end the command in cron"
    return variables, schedule, command.replace("\\%", "%")


def test_crontab_line_runs_as_written_with_flock_and_a_log_file(tmp_path):
    variables, _, command = crontab()
    assert "flock -n" in command and '>> "$SSLAB_LOGS/' in command and command.endswith("2>&1")
    # the same line, with the pipeline swapped for a harmless sslab command and the paths for temp ones
    harmless = command.replace('sslab pipeline run "$SSLAB_PIPELINE"', 'sslab validate "$SSLAB_PIPELINE"')
    assert harmless.count("sslab validate") == 1
    env = {**variables, "PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(tmp_path), "SSLAB_HOME": ROOT,
           "SSLAB_LOGS": str(tmp_path / "logs"), "SSLAB_LOCK": str(tmp_path / "nightly.lock"),
           "SSLAB_PIPELINE": "examples/quickstart.yaml"}
    os.makedirs(env["SSLAB_LOGS"])
    shell = variables["SHELL"]

    # while another run holds the lock (flock(2), as flock(1) takes it), the tick exits at once and runs nothing
    with open(env["SSLAB_LOCK"], "w") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)
        started = time.monotonic()
        busy = subprocess.run([shell, "-c", harmless], env=env, capture_output=True, text=True, timeout=60)
        assert busy.returncode == LOCKED and time.monotonic() - started < 5, busy
    [log] = os.listdir(env["SSLAB_LOGS"])
    assert re.fullmatch(r"nightly-\d{4}-\d{2}-\d{2}\.log", log)
    assert open(tmp_path / "logs" / log).read() == ""

    # the lock free: the command runs, and its output lands in the day's log file
    done = subprocess.run([shell, "-c", harmless], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, open(tmp_path / "logs" / log).read()
    assert done.stdout == "" and done.stderr == ""
    assert "name: quickstart" in open(tmp_path / "logs" / log).read()
    assert os.listdir(env["SSLAB_LOGS"]) == [log]


# ---- GitHub Actions --------------------------------------------------------------------------

def check_jsonschema(schema: str, path: str) -> subprocess.CompletedProcess:
    return subprocess.run([os.path.join(BIN, "check-jsonschema"), "--builtin-schema", schema, path],
                          capture_output=True, text=True, timeout=120)


def test_workflow_passes_the_github_workflow_schema_and_runs_one_at_a_time(tmp_path):
    out = check_jsonschema("vendor.github-workflows", WORKFLOW)
    assert out.returncode == 0, out.stdout + out.stderr
    workflow = yaml.safe_load(open(WORKFLOW))
    triggers = workflow[True]  # YAML 1.1 reads the key `on` as true
    assert triggers["schedule"][0]["cron"] == crontab()[1]  # the same nightly tick as the crontab's
    assert "workflow_dispatch" in triggers
    assert workflow["concurrency"]["group"] and workflow["concurrency"]["cancel-in-progress"] is False
    runs = [step["run"] for step in workflow["jobs"]["pipeline"]["steps"] if "run" in step]
    assert any(r.startswith("sslab pipeline run pipelines/nightly.yaml") for r in runs)
    # the schema bites: a workflow without jobs is refused
    broken = tmp_path / "broken.yml"
    broken.write_text(yaml.safe_dump({k if k is not True else "on": v for k, v in workflow.items() if k != "jobs"}))
    assert check_jsonschema("vendor.github-workflows", str(broken)).returncode == 1


# ---- docker compose --------------------------------------------------------------------------

COMPOSE_ENV = {"POSTGRES_PASSWORD": "not-a-secret", "MINIO_ROOT_USER": "sslab", "MINIO_ROOT_PASSWORD": "not-a-secret",
               "RAY_AUTH_TOKEN": "not-a-secret-token"}


def test_compose_file_passes_the_compose_spec_schema():
    out = check_jsonschema("vendor.compose-spec", COMPOSE)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.skipif(shutil.which("docker-compose") is None,
                    reason="docker-compose is not installed (.ci/run installs Debian's docker-compose)")
def test_compose_file_passes_docker_compose_config_and_publishes_on_loopback_only():
    env = {**os.environ, **COMPOSE_ENV}
    out = subprocess.run(["docker-compose", "-f", COMPOSE, "config"], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    config = yaml.safe_load(out.stdout)
    assert {"postgres", "minio", "mlflow", "ray-head", "ray-worker"} <= set(config["services"])
    published = [p for s in config["services"].values() for p in s.get("ports", [])]
    assert published and all(str(p).startswith("127.0.0.1:") for p in published), published
    assert "postgres" not in [s for s, v in config["services"].items() if v.get("ports")]
    mlflow = config["services"]["mlflow"]["command"]
    assert "--backend-store-uri postgresql://" in mlflow and "--artifacts-destination s3://" in mlflow
    assert "not-a-secret" not in mlflow  # the password reaches libpq as PGPASSWORD, never in the URL
    for ray_node in ("ray-head", "ray-worker"):  # the Jobs API runs code: token auth on every node
        assert config["services"][ray_node]["environment"]["RAY_AUTH_MODE"] == "token"
    image = config["services"]["ray-head"]["image"]
    assert image.endswith(f"ray-{pinned_ray()}")
    # without the passwords the file refuses to start rather than run with empty ones
    bare = {k: v for k, v in env.items() if k not in COMPOSE_ENV}
    refused = subprocess.run(["docker-compose", "-f", COMPOSE, "config"], env=bare, capture_output=True, text=True,
                             timeout=120, cwd="/")
    assert refused.returncode != 0 and "POSTGRES_PASSWORD" in refused.stderr


# ---- KubeRay and Kubernetes ------------------------------------------------------------------

def manifests() -> list[tuple[str, dict]]:
    """Every document of deploy/kuberay, with the RayJob templates kept in ConfigMaps."""
    found = []
    for name in sorted(os.listdir(KUBERAY)):
        for doc in yaml.safe_load_all(open(os.path.join(KUBERAY, name))):
            found.append((name, doc))
            if doc["kind"] == "ConfigMap":
                found += [(f"{name}:{key}", yaml.safe_load(text)) for key, text in doc["data"].items()]
    return found


def ray_jobs() -> list[tuple[str, dict]]:
    """(file, RayJob spec) of every RayJob: on its own, in a RayCronJob, in a ConfigMap."""
    specs = []
    for name, doc in manifests():
        if doc["kind"] == "RayJob":
            specs.append((name, doc["spec"]))
        elif doc["kind"] == "RayCronJob":
            specs.append((name, doc["spec"]["jobTemplate"]))
    return specs


def test_core_kubernetes_kinds_pass_kubernetes_validate():
    import kubernetes_validate

    core = [(name, doc) for name, doc in manifests() if not doc["apiVersion"].startswith("ray.io/")]
    assert {doc["kind"] for _, doc in core} >= {"CronJob", "ConfigMap", "Role", "RoleBinding", "ServiceAccount",
                                                  "NetworkPolicy"}
    for name, doc in core:
        kubernetes_validate.validate(doc, "1.33.0", strict=True)
    [cronjob] = [doc for _, doc in core if doc["kind"] == "CronJob"]
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    cronjob["spec"]["concurrencypolicy"] = cronjob["spec"].pop("concurrencyPolicy")  # the validator bites: a typo
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(cronjob, "1.33.0", strict=True)


def test_kuberay_kinds_are_the_expected_ones_on_the_pinned_ray():
    ray_version = pinned_ray()
    import ray

    assert ray.__version__ == ray_version, "the installed Ray is not the one pyproject.toml pins"
    kinds = {doc["kind"]: doc for _, doc in manifests() if doc["apiVersion"] == "ray.io/v1"}
    assert {"RayCluster", "RayJob", "RayCronJob"} <= set(kinds)
    assert kinds["RayCluster"]["spec"]["rayVersion"] == ray_version
    assert kinds["RayCluster"]["spec"]["headGroupSpec"]["serviceType"] == "ClusterIP"
    images = re.findall(r"image:\s*(\S+)", "".join(open(os.path.join(KUBERAY, n)).read() for n in os.listdir(KUBERAY)))
    sslab_images = [i for i in images if "sslab" in i]
    assert sslab_images and all(i.endswith(f":ray-{ray_version}") for i in sslab_images), images
    dockerfile = open(os.path.join(DEPLOY, "docker", "Dockerfile")).read()
    assert re.search(rf"^FROM rayproject/ray:{re.escape(ray_version)}-py311", dockerfile, re.M)
    assert "COPY --chown=ray:users . /home/ray/sslab" in dockerfile
    assert "RayCronJob" in open(os.path.join(KUBERAY, "raycronjob-pipeline.yaml")).read().split("apiVersion")[0]


def entrypoints() -> list:
    return [pytest.param(spec, id=f"{name}:{shlex.split(spec['entrypoint'])[1]}") for name, spec in ray_jobs()]


@pytest.mark.parametrize("spec", entrypoints())
def test_kuberay_entrypoint_parses_with_sslab_and_names_files_of_the_repository(spec):
    from sslab.cli import build_parser

    words = shlex.split(spec["entrypoint"])
    assert words[0] == "sslab"
    parser = build_parser()
    [commands] = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    if words[1] not in commands.choices:
        pytest.skip(f"`sslab {words[1]}` is not in sslab/cli.py yet (issue 12's pipeline command)")
    assert yaml.safe_load(spec["runtimeEnvYAML"]) == {"working_dir": "/home/ray/sslab"}  # the repository in the image
    args = parser.parse_args(words[1:])
    named = [v for v in vars(args).values() if isinstance(v, str) and v.endswith((".yaml", ".yml"))]
    assert named, f"no file named in {spec['entrypoint']}"
    for path in named:
        assert os.path.isfile(os.path.join(ROOT, path)), f"{path} is not in the repository"
    from orchestrator.jobs.cluster_check import check_cluster_storage

    if words[1] == "sweep":
        from orchestrator.config.loader import load_config

        config = load_config(os.path.join(ROOT, args.config), args.set)  # every --set names a real key
    else:
        from pipelines.plan import make_plan

        config = make_plan(os.path.join(ROOT, args.pipeline), args.set).config
    # every store is one the cluster's nodes reach (this raises otherwise); a local path is only the
    # repository's own data, which travels with working_dir to every node
    notes = check_cluster_storage(config)
    assert all(f"'{ROOT}/examples/data/" in note for note in notes), notes


def test_every_schedule_fires_at_the_pipelines_own_tick():
    """The run key is the pipeline's latest schedule tick at or before now: a cron line firing before that
    tick would run the previous day's key again (a no-op) and never today's."""
    nightly = os.path.join(ROOT, "pipelines", "nightly.yaml")
    if not os.path.exists(nightly):
        pytest.skip("pipelines/nightly.yaml is not there yet (issue 12's pipeline)")
    tick = yaml.safe_load(open(nightly))["schedule"]
    schedules = {"crontab": crontab()[1], "workflow": yaml.safe_load(open(WORKFLOW))[True]["schedule"][0]["cron"]}
    schedules.update({name: doc["spec"]["schedule"] for name, doc in manifests() if "schedule" in doc.get("spec", {})})
    assert len(schedules) == 4 and set(schedules.values()) == {tick}, schedules


# ---- safe defaults -----------------------------------------------------------------------------

def test_no_test_example_or_benchmark_binds_wider_than_loopback():
    """Every server a test, an example or a benchmark starts listens on 127.0.0.1 (deploy/ alone binds
    wider, and deploy/README.md's table says what protects each)."""
    wide = re.compile(r"0\.0\.0\.0|host\s*=\s*['\"]?(::|\*)['\"]?[,)\s]")
    found = []
    for folder in ("tests", "examples", "bench", "orchestrator", "pipelines", "sslab"):
        for base, _, files in os.walk(os.path.join(ROOT, folder)):
            for name in files:
                if name.endswith((".py", ".yaml", ".yml", ".sh")) and name != "test_deploy.py":
                    text = open(os.path.join(base, name), errors="replace").read()
                    found += [f"{name}: {m.group(0)}" for m in wide.finditer(text)]
    assert not found, found
    readme = open(os.path.join(DEPLOY, "README.md")).read()
    for server in ("Jobs API", "MLflow tracking server", "Ray GCS"):
        [row] = [line for line in readme.splitlines() if line.startswith("| ") and server in line.split("|")[1]]
        assert "token" in row or "basic-auth" in row, row
    assert "remote code execution" in readme
