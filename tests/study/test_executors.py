"""Parallel study execution: the local executor and submitit's local/debug clusters, on toy notebooks."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from histlib import study
from histlib.study import executors
from histlib.study.run import _past_durations
from histlib.study.steps import state_path

TOY_STUDY = """name: toy
stages: [data]
base: {name: a, source: src, prepare: {PATCH: 1}}
targets:
  - {name: b, source: src, prepare: {PATCH: 2}}
  - {name: c, source: src, prepare: {PATCH: 3}}
  - {name: d, source: src, prepare: {PATCH: 4}}
"""


def _project(tmp_path: Path, sleep: float = 2.0, fail_patch: int | None = None) -> Path:
    """A project whose data notebook writes OUT_DIR/done.json after ``sleep`` s (and fails for ``fail_patch``)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "histlib"\n')
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    body = (f"import time\ntime.sleep({sleep})\n"
            + (f"assert PATCH != {fail_patch}, 'patch {fail_patch} refused'\n" if fail_patch else "")
            + "from histlib import runs\nruns.write_json(runs.project_path(OUT_DIR) / 'done.json', {'patch': PATCH})")
    nb.cells = [nbformat.v4.new_markdown_cell("Toy. `papermill 01_data_prep.ipynb out.ipynb`"),
                nbformat.v4.new_code_cell('DATASET = "x"\nOUT_DIR = "out"\nSOURCE_DIR = None\nPATCH = 8',
                                          metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell(body)]
    (tmp_path / "notebooks").mkdir(exist_ok=True)
    (tmp_path / "src").mkdir(exist_ok=True)  # the source must exist when the plan is checked
    nbformat.write(nb, str(tmp_path / "notebooks" / "01_data_prep.ipynb"))
    (tmp_path / "studies").mkdir(exist_ok=True)
    (tmp_path / "studies" / "toy.yaml").write_text(TOY_STUDY)
    return tmp_path


def _outputs(root: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted((root / "data" / "prepared").glob("*/done.json"))}


@pytest.mark.slow
def test_local_executor_matches_sequential_and_is_faster(tmp_path, monkeypatch):
    import shutil

    root = _project(tmp_path, sleep=15.0)
    monkeypatch.chdir(root)
    t0 = time.time()
    rows_seq = study.run_study("studies/toy.yaml")
    t_seq = time.time() - t0
    out_seq = _outputs(root)
    shutil.rmtree(root / "results")
    shutil.rmtree(root / "data")
    t0 = time.time()
    rows_par = study.run_study("studies/toy.yaml", executor="local", jobs=2)
    t_par = time.time() - t0
    assert [r["status"] for r in rows_par] == ["finished"] * 4
    assert [r["hash"] for r in rows_par] == [r["hash"] for r in rows_seq]  # the same steps, the same hashes
    assert _outputs(root) == out_seq == {n: {"patch": p} for n, p in zip("abcd", (1, 2, 3, 4))}
    print(f"sequential {t_seq:.1f} s, local --jobs 2 {t_par:.1f} s")
    assert t_par < 0.8 * t_seq
    assert (root / "results" / "toy" / "index.html").is_file()
    # a second run skips everything
    assert all(r["status"].startswith("skipped") for r in study.run_study("studies/toy.yaml", executor="local",
                                                                         jobs=2))


@pytest.mark.slow
def test_failing_step_leaves_independent_steps_finished(tmp_path, monkeypatch):
    root = _project(tmp_path, sleep=0.5, fail_patch=3)
    monkeypatch.chdir(root)
    rows = {r["step"]: r for r in study.run_study("studies/toy.yaml", executor="local", jobs=2)}
    assert rows["01_data_prep__c"]["status"] == "failed" and "patch 3 refused" in rows["01_data_prep__c"]["error"]
    assert {rows[f"01_data_prep__{n}"]["status"] for n in "abd"} == {"finished"}
    assert (root / "results/toy/notebooks/01_data_prep__c.failed.html").is_file()
    # the CLI says how many failed; a re-run retries only that step
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    out = subprocess.run([sys.executable, "-m", "histlib", "study", "run", "studies/toy.yaml", "--executor", "local",
                          "--jobs", "2"], cwd=root, env=env, capture_output=True, text=True)
    assert out.returncode == 1 and "1 failed" in out.stdout and "01_data_prep__c" in out.stderr
    assert out.stdout.count("skipped") == 0 or "3 skipped as finished" in out.stdout


@pytest.mark.slow
def test_killed_study_resumes_the_unfinished_steps(tmp_path, monkeypatch):
    root = _project(tmp_path, sleep=6.0)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    cmd = [sys.executable, "-m", "histlib", "study", "run", "studies/toy.yaml", "--executor", "local", "--jobs", "2"]
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    state = root / "results/toy/notebooks/.state"
    deadline = time.time() + 120
    while time.time() < deadline and not list(state.glob("*.json")):
        time.sleep(0.5)
    time.sleep(2)
    os.killpg(proc.pid, signal.SIGKILL)  # the runner and its step processes, mid-step
    proc.wait()
    assert not (root / "data/prepared/a/done.json").exists()
    monkeypatch.chdir(root)
    rows = study.run_study("studies/toy.yaml", executor="local", jobs=2)
    assert [r["status"] for r in rows] == ["finished"] * 4
    assert len(_outputs(root)) == 4


@pytest.mark.slow
@pytest.mark.parametrize("cluster", ["debug", "local"])
def test_submitit_clusters_run_the_study(tmp_path, monkeypatch, cluster):
    root = _project(tmp_path, sleep=0.5)
    monkeypatch.chdir(root)
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[2]))
    rows = study.run_study("studies/toy.yaml", executor="slurm", cluster=cluster, jobs=2)
    assert [r["status"] for r in rows] == ["finished"] * 4
    assert _outputs(root) == {n: {"patch": p} for n, p in zip("abcd", (1, 2, 3, 4))}


def test_bad_executor_settings_are_refused_before_anything_runs(tmp_path, monkeypatch):
    root = _project(tmp_path, sleep=0)
    monkeypatch.chdir(root)
    for kwargs, match in (({"executor": "magic"}, "expected one of"), ({"executor": "local", "jobs": 0}, "--jobs 0"),
                          ({"executor": "slurm"}, "sbatch")):
        if kwargs.get("executor") == "slurm":
            monkeypatch.setattr(executors.shutil, "which", lambda name: None)
        with pytest.raises(study.StudyError, match=match):
            study.run_study("studies/toy.yaml", **kwargs)
    assert not (root / "results").exists()
    (root / "studies" / "toy.yaml").write_text(TOY_STUDY + "resources: {finetune: {memory: 12}}\n")
    with pytest.raises(study.StudyError, match="'memory' cannot be requested"):
        study.run_study("studies/toy.yaml")
    (root / "studies" / "toy.yaml").write_text(TOY_STUDY + "resources: {slurm: {partitoin: gpu}}\n")
    with pytest.raises(study.StudyError, match="did you mean 'partition'"):
        study.run_study("studies/toy.yaml")


def test_stage_resources_layering():
    res = executors.check_resources({"default": {"gpus": 1, "cpus": 8}, "data": {"gpus": 0}}, list(study.STAGES))
    assert executors.stage_resources(res, "data") == {"gpus": 0, "cpus": 8}
    assert executors.stage_resources(res, "finetune") == {"gpus": 1, "cpus": 8}
    assert executors.stage_resources({}, "analysis") == {"gpus": 0}


def test_step_processes_compute_the_runner_s_hashes(monkeypatch):
    """What a step process is given (study file, results root) must give every step the hash the runner gave it:
    otherwise each step would find its own earlier outputs "changed" and move them aside."""
    seen = {}

    def fake_schedule(steps, rows, *, backend, **kwargs):
        seen["runner"] = {s.name: s.hash for s in steps}
        child = study.load_study(backend.study_file, backend.results_root)
        child_steps = study.plan(child)
        study.hash_steps(child_steps)
        seen["child"] = {s.name: s.hash for s in child_steps}
        seen["params"] = {s.name: s.params for s in child_steps}
        return rows

    import shutil

    from histlib import runs

    monkeypatch.setattr(executors, "schedule", fake_schedule)
    results = "results/.pytest-step-hashes"  # relative, as users give it (an absolute root hid the bug)
    try:
        study.run_study("studies/demo.yaml", executor="local", jobs=2, force=True, results_root=results)
    finally:
        shutil.rmtree(runs.project_path(results), ignore_errors=True)
    assert any("RUN_DIR" in p or "RUN_ROOT" in p for p in seen["params"].values())  # paths under the results root
    assert seen["child"] == seen["runner"]


def test_eta_uses_durations_of_earlier_invocations_and_running_time():
    import io
    from types import SimpleNamespace

    class Backend:
        jobs = 1

        def can_start(self, res, running):
            return running < self.jobs

        def start(self, step, res):
            return SimpleNamespace(step=step, started=time.time() - 40.0, polls=0)

        def poll(self, job):
            job.polls += 1
            return job.polls > 1, None

    steps = [SimpleNamespace(name=f"s{i}", stage="data", depends=[]) for i in range(2)]
    rows = [{"step": s.name, "status": "pending"} for s in steps]
    out = io.StringIO()
    executors.schedule(steps, rows, is_done=lambda st: False, backend=Backend(), resources={}, on_change=lambda: None,
                       poll_s=0.0, status_every_s=0.0, out=out, durations={"data": [100.0]})
    first = out.getvalue().splitlines()[0]
    # one step running for 40 s of an expected 100 s, one queued: 60 + 100 s left
    assert "running 1 · queued 1" in first and re.search(r"ETA ~2m(3[5-9]|40)s", first), first
    assert [r["status"] for r in rows] == ["finished", "finished"]


def test_eta_uses_each_steps_expected_seconds_scaled_by_how_the_stage_went():
    """A step with an expected time (``study plan``'s, which knows its amount of work) counts that, scaled by the
    taken / expected of the stage's steps finished so far; a step without one counts its stage's mean duration."""
    from types import SimpleNamespace

    big, small, other = (SimpleNamespace(name=n, stage=st) for n, st in
                         [("big", "classify"), ("small", "classify"), ("other", "data")])
    queue = [(big, {}), (small, {}), (other, {})]
    # running for 100 s, give or take: 300 of its 400 s left
    running = [SimpleNamespace(step=SimpleNamespace(name="run", stage="classify"), started=time.time() - 99.5)]
    expected = {"big": 1000.0, "small": 100.0, "run": 400.0}

    def eta(ratios):
        line = executors._status_line([], queue, running, {"data": [60.0], "classify": [5000.0]}, 1, time.time(),
                                      expected, ratios)
        return re.search(r"ETA ~(.*)$", line).group(1)

    assert eta({}) == executors._minutes(1000 + 100 + 60 + 300)
    assert eta({"classify": [2.0, 1.5, 3.0]}) == executors._minutes(2000 + 200 + 60 + 700)  # the median ratio, 2


def test_past_durations_come_from_finished_step_states(tmp_path, monkeypatch):
    root = _project(tmp_path, sleep=0.0)
    monkeypatch.chdir(root)
    s = study.load_study("studies/toy.yaml")
    steps = study.plan(s)
    study.hash_steps(steps)
    from histlib import runs

    runs.write_json(state_path(s, steps[0]), {"status": "finished", "seconds": 12.5})
    runs.write_json(state_path(s, steps[1]), {"status": "failed", "seconds": 3.0})
    state_path(s, steps[2]).parent.mkdir(parents=True, exist_ok=True)
    state_path(s, steps[2]).write_text("{not json")
    assert _past_durations(s, steps) == {"data": [12.5]}


def test_slurm_jobs_run_the_step_command_line(tmp_path):
    """A submitit job runs ``python -m histlib study step`` in the project root, as a local step process does: the
    job never imports the study runner."""
    from submitit.helpers import CommandFunction

    from histlib import runs

    submitted = []

    class FakeExecutor:
        cluster = "debug"

        def update_parameters(self, **params):
            self.params = params

        def submit(self, fn, *args):
            submitted.append((fn, args))
            return object()

    backend = executors.SubmititBackend(1, "studies/demo.yaml", "results", tmp_path, "debug", {})
    backend.executor = FakeExecutor()
    backend.start(study.Step("data", "a", "01_data_prep__a", "01_data_prep.ipynb", {}), {"gpus": 0})
    (fn, args), = submitted
    assert isinstance(fn, CommandFunction) and args == ()
    assert fn.command == [sys.executable, "-m", "histlib", "study", "step", "studies/demo.yaml", "--step",
                          "01_data_prep__a", "--results", "results"]
    assert fn.cwd == str(runs.project_root())


def test_an_index_page_that_fails_to_build_does_not_stop_the_runner(tmp_path, monkeypatch, capsys):
    """The runner rebuilds the index page after every step; a page that cannot be built (a bug in a view) is
    reported and the study goes on, with study.json written first."""
    import types

    from histlib import report
    from histlib.study import run as run_mod

    def broken(out_dir):
        raise TypeError("a view failed")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(report, "build_index", broken)
    spec = types.SimpleNamespace(name="s", profile="demo", description="", out_dir=Path("results") / "s")
    run_mod._write_study_json(spec, "s.yaml", [{"step": "a", "status": "finished"}])
    assert json.loads((tmp_path / "results" / "s" / "study.json").read_text())["steps"][0]["step"] == "a"
    err = capsys.readouterr().err
    assert "index.html: not rebuilt (TypeError: a view failed)" in err and "the steps go on" in err
