"""What a submitted sweep carries to the cluster: the working directory (small) and sslab's own code.

The working directory travels as the job's runtime_env `working_dir` (the config, local data),
without what is local state or large: .git, virtual environments, caches, MLflow/Optuna files,
checkpoints. sslab's packages travel as `py_modules`, so the cluster runs the code that validated
the config, whether or not the working directory is sslab's repository (inside it, they are left
out of the working directory instead of travelling twice). Ray also honours .gitignore and
.rayignore files; this module counts what would travel the same way, to refuse a directory too
large before uploading anything.
"""
import importlib
import os
from pathlib import Path

# The matcher Ray itself applies to runtime_env excludes and ignore files (vendored in Ray), so that the
# count here agrees with what Ray uploads.
from ray._private.thirdparty.pathspec import PathSpec

from orchestrator.config.secrets import literal_secrets
from orchestrator.jobs.client import JobError

EXCLUDES = [".git", ".env", ".hg", ".venv", "venv", "__pycache__", "*.pyc", ".pytest_cache", ".mypy_cache",
            ".ipynb_checkpoints", "*.egg-info", "mlruns", "mlartifacts", "sslab_runs", "checkpoints", "*.db",
            "*.db-journal", "*.db-wal", "*.db-shm"]
PACKAGES = ("sslab", "orchestrator", "workloads", "pipelines")
# The dashboard takes uploads up to 100 MiB (the zip); more belongs on s3:// or a shared filesystem.
MAX_UPLOAD_BYTES = int(float(os.environ.get("SSLAB_MAX_UPLOAD_MB", 100)) * 1024 * 1024)


def package_dirs() -> list[str]:
    """The folders of sslab's importable packages."""
    return [os.path.dirname(importlib.import_module(name).__file__) for name in PACKAGES
            if importlib.util.find_spec(name) is not None]


def runtime_env(workdir: str, env_vars: dict[str, str]) -> dict:
    """The job's runtime_env. It is shown by the dashboard: a secret among env_vars is refused (secrets
    reach the job from the cluster nodes' own environment, named by ${NAME} references)."""
    secret = literal_secrets(env_vars)
    if secret:
        raise JobError(f"runtime_env env_vars {', '.join(secret)}: a secret would be shown by the dashboard; "
                       f"set it in the environment of the cluster's nodes instead")
    workdir = os.path.abspath(workdir)
    modules = package_dirs()
    inside = ["/" + os.path.relpath(path, workdir) for path in modules if Path(path).is_relative_to(workdir)]
    return {"working_dir": workdir, "excludes": EXCLUDES + inside, "py_modules": modules, "env_vars": env_vars}


def travelling_files(root: str, excludes: list[str]) -> dict[str, int]:
    """{path relative to root: size} of the files Ray would upload: not excluded, nor ignored by a
    .gitignore (unless RAY_RUNTIME_ENV_IGNORE_GITIGNORE=1) or .rayignore of their folder or above."""
    root = os.path.abspath(root)
    use_gitignore = os.environ.get("RAY_RUNTIME_ENV_IGNORE_GITIGNORE", "0") != "1"
    found: dict[str, int] = {}

    def ignores(folder: str) -> list[tuple[str, PathSpec]]:
        specs = []
        for name in ((".gitignore",) if use_gitignore else ()) + (".rayignore",):
            path = os.path.join(folder, name)
            if os.path.isfile(path):
                with open(path) as handle:
                    specs.append((folder, PathSpec.from_lines("gitwildmatch", handle)))
        return specs

    def walk(folder: str, specs: list[tuple[str, PathSpec]]) -> None:
        specs = specs + ignores(folder)
        for entry in os.scandir(folder):
            if any(spec.match_file(os.path.relpath(entry.path, base) + ("/" if entry.is_dir() else ""))
                   for base, spec in specs):
                continue
            if entry.is_dir(follow_symlinks=False):
                walk(entry.path, specs)
            elif entry.is_file():
                found[os.path.relpath(entry.path, root)] = entry.stat().st_size

    walk(root, [(root, PathSpec.from_lines("gitwildmatch", excludes))])
    return found


def check_upload(workdir: str, excludes: list[str], needed: list[str]) -> int:
    """Refuse a working directory whose upload would be too large, or that leaves out a file the sweep
    needs (its config, its data); the number of bytes that travel otherwise."""
    files = travelling_files(workdir, excludes)
    for path in needed:
        folder = path.rstrip("/")
        if path not in files and not any(f.startswith(folder + "/") for f in files):
            raise JobError(f"{path} would not travel to the cluster: it is excluded from the upload of the working "
                           f"directory (sslab leaves out {', '.join(EXCLUDES)}; Ray honours .gitignore and .rayignore)")
    total = sum(files.values())
    if total > MAX_UPLOAD_BYTES:
        tops: dict[str, int] = {}
        for path, size in files.items():
            top = path.split(os.sep)[0]
            tops[top] = tops.get(top, 0) + size
        largest = ", ".join(f"{name} ({size / 2**20:.1f} MiB)" for name, size in
                            sorted(tops.items(), key=lambda item: -item[1])[:5])
        raise JobError(f"the working directory {workdir} would upload {total / 2**20:.1f} MiB to the cluster, more "
                       f"than {MAX_UPLOAD_BYTES / 2**20:.0f} MiB (SSLAB_MAX_UPLOAD_MB). Largest: {largest}. Put large "
                       f"data on s3:// or a shared filesystem, list it in .rayignore, or submit from a smaller directory")
    return total
