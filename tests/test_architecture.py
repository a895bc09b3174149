"""The house's rules as tests: the import contracts of pyproject.toml (import-linter), no import
cycle between modules, no module over 400 lines."""
import os
import subprocess
import sys

import grimp
from conftest import ROOT

PACKAGES = ("sslab", "pipelines", "orchestrator", "workloads")
MAX_LINES = 400


def test_import_contracts_hold():
    """A violation fails with import-linter's own report (e.g. `import ray` in a workloads module)."""
    lint = os.path.join(os.path.dirname(sys.executable), "lint-imports")
    result = subprocess.run([lint, "--config", os.path.join(ROOT, "pyproject.toml")], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_no_module_imports_itself_through_others():
    """grimp's graph includes imports made inside functions, so none can hide a cycle."""
    graph = grimp.build_graph(*PACKAGES)
    ours = {m for m in graph.modules if m.split(".")[0] in PACKAGES}
    cycles = [chain for m in sorted(ours) for imported in graph.find_modules_directly_imported_by(m)
              if imported in ours and imported != m
              and (chain := graph.find_shortest_chain(importer=imported, imported=m))]
    assert not cycles, f"import cycles: {cycles[:5]}"


def test_no_module_is_over_400_lines():
    long = []
    for package in (*PACKAGES, "bench"):
        for folder, _, files in os.walk(os.path.join(ROOT, package)):
            for name in files:
                if name.endswith(".py"):
                    with open(os.path.join(folder, name)) as handle:
                        lines = sum(1 for _ in handle)
                    if lines > MAX_LINES:
                        long.append(f"{os.path.relpath(os.path.join(folder, name), ROOT)} ({lines} lines)")
    assert not long, f"split these along their responsibilities: {long}"
