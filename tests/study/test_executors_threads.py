"""The local executor shares the cores among the steps that can run now, not always among ``jobs``."""

import os
import signal
from types import SimpleNamespace

import pytest

from histlib.study import executors


class _Backend:
    """Two steps at once; each step finishes at its second poll; records each step's ``AT_ONCE_KEY``."""

    jobs = 2

    def __init__(self):
        self.seen = {}

    def can_start(self, res, running):
        return running < self.jobs

    def start(self, step, res):
        self.seen[step.name] = res[executors.AT_ONCE_KEY]
        return SimpleNamespace(step=step, started=0.0, polls=0)

    def poll(self, job):
        job.polls += 1
        return job.polls > 1, None

    def stop(self, jobs):
        return [True] * len(jobs)


def _step(name, stage, *deps):
    return SimpleNamespace(name=name, stage=stage, depends=list(deps))


def _schedule(steps, backend, tmp_path, is_done=lambda st: False, rows=None):
    rows = [{"step": s.name, "status": "pending"} for s in steps] if rows is None else rows
    with open(tmp_path / "log", "w") as log:
        executors.schedule(steps, rows, is_done=is_done, backend=backend, resources={}, on_change=lambda: None,
                           poll_s=0.0, status_every_s=1e9, out=log)
    return rows


def test_a_step_that_runs_alone_gets_every_core_and_parallel_steps_share_them(tmp_path):
    backend = _Backend()
    steps = [_step("data", "data"), _step("base", "base_gan", "data"), _step("real", "classify", "data"),
             _step("ft1", "finetune", "base"), _step("ft2", "finetune", "base"), _step("ft3", "finetune", "base"),
             _step("last", "classify", "ft1")]
    rows = _schedule(steps, backend, tmp_path)
    seen = backend.seen
    assert seen["base"] == 1 and seen["real"] == 1  # another stage beside it does not halve the base GAN
    assert seen["ft1"] == seen["ft2"] == 3  # three fine-tunes ready at once (two run: the backend caps at jobs)
    assert [r["status"] for r in rows] == ["finished"] * 7


def test_local_backend_threads_follow_the_steps_at_once(tmp_path, monkeypatch):
    envs = []

    class Proc:
        def __init__(self, cmd, **kw):
            envs.append(kw["env"])

    backend = executors.LocalBackend(4, "studies/demo.yaml", "results", tmp_path)
    monkeypatch.setattr(executors.subprocess, "Popen", Proc)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    backend.cores = 8
    step = SimpleNamespace(name="s")
    for at_once, cpus in ((1, None), (2, None), (9, None), (2, 3)):
        backend.start(step, {"gpus": 0, executors.AT_ONCE_KEY: at_once, **({"cpus": cpus} if cpus else {})})
    assert [e["OMP_NUM_THREADS"] for e in envs] == ["8", "4", "2", "3"]  # at most `jobs` share; cpus wins
    # a step alone keeps histlib's short spin (PASSIVE costs 1.6-1.8x alone); steps side by side sleep at once
    assert [e.get("OMP_WAIT_POLICY") for e in envs][1:] == ["PASSIVE"] * 3
    assert envs[0].get("OMP_WAIT_POLICY") == os.environ.get("OMP_WAIT_POLICY")
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's limit caps each step's share
    backend.start(step, {"gpus": 0, executors.AT_ONCE_KEY: 1})
    assert envs[-1]["OMP_NUM_THREADS"] == "3"


def test_a_resumed_studys_first_steps_share_the_cores(tmp_path):
    """Finished upstream steps are skipped in the same pass that starts their dependants: the steps started then
    count each other as running side by side (before, each got every core: half speed on two cores)."""
    backend = _Backend()
    steps = [_step("data", "data"), _step("base", "base_gan", "data"), _step("ft", "finetune", "base"),
             _step("gen", "generate", "ft"), _step("real", "classify", "data"), _step("c1", "classify", "gen"),
             _step("c2", "classify", "gen"), _step("analysis", "analysis", "real", "c1", "c2")]
    finished = {"data", "base", "ft", "gen"}
    rows = _schedule(steps, backend, tmp_path, is_done=lambda st: st.name in finished)
    assert backend.seen["real"] == backend.seen["c1"] == 3  # three classify steps can run from the first pass on
    assert [r["status"] for r in rows[:4]] == ["skipped (finished, same hash)"] * 4


def test_an_interrupted_runner_stops_the_steps_it_started(tmp_path, monkeypatch):
    """Ctrl-C or SIGTERM in the runner: every running step is stopped and marked, then the interrupt goes on (before,
    the steps ran on, and a runner started again ran them a second time into the same folders)."""
    import signal
    import sys
    import time

    monkeypatch.setattr(executors, "_step_command", lambda *a: [sys.executable, "-c", "import time; time.sleep(120)"])
    backend = executors.LocalBackend(2, "studies/demo.yaml", "results", tmp_path)
    polls = {"n": 0}
    real_poll = backend.poll

    def poll(job):
        polls["n"] += 1
        if polls["n"] > 2:
            raise KeyboardInterrupt
        return real_poll(job)

    backend.poll = poll
    steps = [SimpleNamespace(name=n, stage="classify", depends=[]) for n in ("a", "b", "c")]
    rows = [{"step": s.name, "status": "pending"} for s in steps]
    started = []
    real_start = backend.start
    backend.start = lambda step, res: started.append(real_start(step, res)) or started[-1]
    with pytest.raises(KeyboardInterrupt), open(tmp_path / "log", "w") as log:
        executors.schedule(steps, rows, is_done=lambda st: False, backend=backend, resources={},
                           on_change=lambda: None, poll_s=0.0, status_every_s=1e9, out=log)
    assert [r["status"] for r in rows] == ["interrupted", "interrupted", "pending"]
    assert len(started) == 2 and all(job.handle.poll() is not None for job in started)  # both processes ended
    assert all(job.handle.returncode != 0 for job in started)
    # a step that does not end on SIGTERM within the grace time is killed
    monkeypatch.setattr(executors, "_step_command", lambda *a: [
        sys.executable, "-c", "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ready', flush=True); time.sleep(120)"])
    job = real_start(steps[2], {"gpus": 0})
    for _ in range(200):  # until the child has installed its handler
        if "ready" in (tmp_path / "c.log").read_text():
            break
        time.sleep(0.05)
    t0 = time.time()
    assert backend.stop([job], grace_s=0.5) == [True]
    assert job.handle.returncode == -signal.SIGKILL and time.time() - t0 < 30
    # a step that had ended before the interrupt is recorded as it ended, not as stopped
    monkeypatch.setattr(executors, "_step_command", lambda *a: [sys.executable, "-c", "pass"])
    ended = real_start(steps[0], {"gpus": 0})
    ended.handle.wait()
    assert backend.stop([ended]) == [False] and ended.handle.returncode == 0


def test_an_interrupt_records_a_step_that_had_already_ended_as_it_ended(tmp_path):
    class Backend(_Backend):
        stopped = False

        def poll(self, job):
            if job.step.name == "b":  # the interrupt arrives while b runs; a ended just before, not yet polled
                raise KeyboardInterrupt
            return (True, "ValueError: bad") if self.stopped else (False, None)

        def stop(self, jobs):
            self.stopped = True
            return [job.step.name == "b" for job in jobs]

    rows = [{"step": name, "status": "pending"} for name in ("a", "b")]
    with pytest.raises(KeyboardInterrupt):
        _schedule([_step("a", "classify"), _step("b", "classify")], Backend(), tmp_path, rows=rows)
    assert rows[1]["status"] == "interrupted"
    assert rows[0]["status"] == "failed" and rows[0]["error"] == "ValueError: bad"
def test_sigterm_interrupts_a_step_or_runner_as_ctrl_c_does():
    import signal

    from histlib.study import cli

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt, match="signal 15"), cli._sigterm_interrupts():
        os.kill(os.getpid(), signal.SIGTERM)
        import time
        time.sleep(5)  # the signal arrives here at the latest
    assert signal.getsignal(signal.SIGTERM) is before  # the caller's handler is back


def test_an_interrupted_study_command_says_how_to_resume(monkeypatch, capsys):
    """The command line ends an interrupted run with one line and exit status 130 (as a shell reports Ctrl-C), not a
    traceback."""
    from histlib.__main__ import main
    from histlib.study import cli

    def interrupted(*a, **k):
        raise KeyboardInterrupt("stopped by signal 15")

    monkeypatch.setattr(cli, "run_study", interrupted)
    assert main(["study", "run", "studies/demo.yaml"]) == 130
    err = capsys.readouterr().err
    assert "interrupted (stopped by signal 15): the steps it had started were stopped" in err
    assert "Traceback" not in err
    monkeypatch.setattr(cli, "run_study", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))  # Ctrl-C
    assert main(["study", "run", "studies/demo.yaml"]) == 130
    assert "interrupted (Ctrl-C): the steps" in capsys.readouterr().err


class _InterruptedWhileStarting(_Backend):
    """A backend whose start is interrupted (Ctrl-C) after the step's process exists and before it is returned."""

    def __init__(self):
        super().__init__()
        self.stopped = []

    def start(self, step, res):
        job = super().start(step, res)
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000):  # bytecodes in which Python would run the handler
            pass
        return job

    def stop(self, jobs):
        self.stopped.extend(job.step.name for job in jobs)
        return [True] * len(jobs)


@pytest.fixture
def ctrl_c_raises():
    """Python's own SIGINT handler for the test: a process started in the background by a shell without job control
    inherits SIGINT ignored, and an ignored Ctrl-C tests nothing."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def test_an_interrupt_while_a_step_starts_still_stops_that_step(tmp_path, ctrl_c_raises):
    """Ctrl-C arriving inside ``backend.start`` is held until the started step is registered, so the runner stops
    it instead of leaving it running unrecorded."""
    backend = _InterruptedWhileStarting()
    rows = [{"step": "a", "status": "pending"}]
    with pytest.raises(KeyboardInterrupt):
        _schedule([_step("a", "data")], backend, tmp_path, rows=rows)
    assert backend.stopped == ["a"] and rows[0]["status"] == "interrupted"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is back
