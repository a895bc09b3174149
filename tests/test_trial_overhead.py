"""A trial's fixed cost: what a Ray Train worker imports before its first step, and the timeline
that bench/trial_overhead.py reads."""
import json
import os
import subprocess
import sys

from conftest import ROOT

from orchestrator.training import timeline

# Imported where they are used (the data readers by the decoding task, the final report's figures on
# rank 0 at the end, torchvision by a ResNet): seconds of imports that a worker's first step never needs.
# (pyarrow is not among them: ray.train imports it, through pandas.)
NOT_AT_START = ("torchvision", "sklearn", "matplotlib", "PIL", "mlflow", "optuna")


def test_the_worker_module_imports_none_of_the_heavy_libraries_it_does_not_need_to_start():
    code = ("import sys, json, orchestrator.training.worker; "
            f"print(json.dumps([name for name in {NOT_AT_START!r} if name in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_timeline_marks_only_when_asked_and_the_first_step_once(tmp_path, monkeypatch):
    path = tmp_path / "timeline.jsonl"
    monkeypatch.delenv(timeline.ENV, raising=False)
    timeline.mark("nowhere")
    assert not timeline.enabled() and not path.exists()
    monkeypatch.setenv(timeline.ENV, str(path))
    calls = []
    step = timeline.first_call(lambda index, loss: calls.append(index), "first_step", run="r")
    for index in range(3):
        step(index, 0.0)
    memory = timeline.MemoryPeaks()
    block = bytearray(32 * 2**20)  # 32 MiB touched: the private peak sees it
    peaks = memory.stop()
    del block
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["phase"] for line in lines] == ["first_step"] and lines[0]["run"] == "r"
    assert lines[0]["pid"] == os.getpid() and calls == [0, 1, 2]
    assert peaks["peak_private"] >= 32 * 2**20 and peaks["peak_VmRSS"] >= peaks["peak_private"]
    assert 0 < timeline.process_started() <= lines[0]["t"]
