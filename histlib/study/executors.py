"""Running a study's steps in parallel: on this machine (``local``) or as SLURM jobs through submitit (``slurm``).

The study runner knows every step's dependencies and hash; a scheduler here hands each step to an executor as soon
as the steps it depends on have finished, keeps a live status line (running / queued / finished / failed, elapsed,
an ETA from the durations of the steps that finished), rebuilds ``results/<study>/index.html`` after every step, and
lets a failed step stop only what depends on it. Resuming is the runner's: a step whose hash matches a finished run
is skipped, an interrupted one (a killed process, a job at its time limit, a lost node) is started again and resumes
from its own checkpoints. An interrupted runner (Ctrl-C, SIGTERM) stops the steps it started before it exits, so
no step outlives it and trains a second time beside the re-run.

* ``local``: up to ``jobs`` steps at once, each a ``python -m histlib study step`` process. A step that asks for
  GPUs (``resources``) gets its own with ``CUDA_VISIBLE_DEVICES``; every step gets ``cores / jobs`` CPU threads
  (``OMP_NUM_THREADS``) unless its resources say otherwise.
* ``slurm``: each step is a job submitted with submitit (``sbatch`` must exist) that runs the same
  ``python -m histlib study step`` command, with the per-stage resources of the study file (``gpus``, ``cpus``,
  ``mem_gb``, ``time_min``; ``resources.slurm`` passes cluster settings such as ``partition`` or ``account``).
  submitit's ``local`` and ``debug`` clusters run the same command on one machine.

Nothing here imports the runner (:mod:`histlib.study.run`): a step runs through the command line, in a process of
its own.

Study file::

    resources:
      default:  {gpus: 1, cpus: 8, mem_gb: 32, time_min: 240}
      base_gan: {time_min: 4320}
      data:     {gpus: 0}
      slurm:    {partition: gpu, account: my_project}
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from histlib import runs
from histlib.config import nearest

EXECUTORS = ("sequential", "local", "slurm")
SUBMITIT_CLUSTERS = ("slurm", "local", "debug")
RESOURCE_KEYS = {"gpus": (int,), "cpus": (int,), "mem_gb": (int, float), "time_min": (int, float)}
# set by the scheduler in a step's resources: how many steps of its stage can run at this moment (it included)
AT_ONCE_KEY = "_steps_at_once"
# what a stage needs when the study file says nothing: the GAN and classifier stages want a GPU where there is one
DEFAULT_GPUS = {"data": 0, "base_gan": 1, "finetune": 1, "generate": 1, "classify": 1, "analysis": 0}


class ExecutorError(ValueError):
    """An executor, a job count or a resource request that cannot be used (named in the message)."""


def check_resources(spec: Any, stages: list[str], where: str = "resources") -> dict[str, dict[str, Any]]:
    """Validates a study file's ``resources`` mapping; returns it with every key known.

    Raises:
        ExecutorError: an unknown stage or key (with the nearest valid name), or a value of the wrong type.
    """
    if spec is None:
        return {}
    if not isinstance(spec, dict):
        raise ExecutorError(f"{where}: expected a mapping of stage -> {{gpus, cpus, mem_gb, time_min}}")
    valid_sections = [*stages, "default", "slurm"]
    out = {}
    for section, values in spec.items():
        if section not in valid_sections:
            raise ExecutorError(f"{where}: unknown section {section!r}{nearest(str(section), valid_sections)}; "
                                f"expected some of {valid_sections}")
        if not isinstance(values, dict):
            raise ExecutorError(f"{where}.{section}: expected a mapping")
        if section == "slurm":
            _check_slurm_keys(values, f"{where}.slurm")
        else:
            for key, value in values.items():
                if key not in RESOURCE_KEYS:
                    raise ExecutorError(f"{where}.{section}: {key!r} cannot be requested"
                                        f"{nearest(str(key), RESOURCE_KEYS)}; a step can ask for "
                                        f"{sorted(RESOURCE_KEYS)} (cluster settings go under {where}.slurm)")
                if isinstance(value, bool) or not isinstance(value, RESOURCE_KEYS[key]) or value < 0:
                    raise ExecutorError(f"{where}.{section}.{key}={value!r}: expected a number >= 0")
        out[section] = dict(values)
    return out


def _check_slurm_keys(values: dict[str, Any], where: str) -> None:
    import submitit

    valid = sorted(submitit.SlurmExecutor._valid_parameters())
    for key in values:
        if key not in valid:
            raise ExecutorError(f"{where}: {key!r} is not a SLURM setting submitit knows{nearest(str(key), valid)}")


def stage_resources(resources: dict[str, dict[str, Any]], stage: str) -> dict[str, Any]:
    """The resources of one stage: the built-in GPU need, then ``default``, then the stage's own entry."""
    return {"gpus": DEFAULT_GPUS.get(stage, 0), **resources.get("default", {}), **resources.get(stage, {})}


def check_executor(executor: str, jobs: int, cluster: str | None = None) -> None:
    """Refuses, before anything runs, an executor or job count that cannot work on this machine."""
    if executor not in EXECUTORS:
        raise ExecutorError(f"--executor {executor!r}: expected one of {EXECUTORS}{nearest(executor, EXECUTORS)}")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ExecutorError(f"--jobs {jobs!r}: expected a positive number of steps to run at once")
    if executor == "slurm":
        if cluster not in (None, *SUBMITIT_CLUSTERS):
            raise ExecutorError(f"cluster {cluster!r}: expected one of {SUBMITIT_CLUSTERS}")
        if cluster in (None, "slurm") and shutil.which("sbatch") is None:
            raise ExecutorError("--executor slurm: 'sbatch' is not on this machine's PATH; run the study on the "
                                "cluster's login node, or use --executor local")


# ----------------------------------------------------------------------------------------------------------------
# Jobs


@dataclass
class _Running:
    step: Any
    handle: Any
    started: float
    gpus: list[int] = field(default_factory=list)
    log: Any = None


def _step_command(study_file: str, step: str, results_root: str) -> list[str]:
    """The command line of one step, what every backend runs (an executor never imports the study runner)."""
    return [sys.executable, "-m", "histlib", "study", "step", study_file, "--step", step, "--results", results_root]


class LocalBackend:
    """Steps as child processes of this one, with their own GPUs and CPU threads."""

    def __init__(self, jobs: int, study_file: str, results_root: str, log_dir: Path):
        self.jobs, self.study_file, self.results_root, self.log_dir = jobs, study_file, results_root, log_dir
        self.free_gpus = list(range(_gpu_count()))
        self.cores = os.cpu_count() or 1
        self.threads = max(1, self.cores // jobs)

    def _gpus_wanted(self, res: dict[str, Any]) -> int:
        # on a machine without GPUs every step runs on the CPU; more GPUs than the machine has: all of them
        return min(int(res.get("gpus", 0)), _gpu_count())

    def can_start(self, res: dict[str, Any], running: int) -> bool:
        return running < self.jobs and len(self.free_gpus) >= self._gpus_wanted(res)

    def start(self, step, res: dict[str, Any]) -> _Running:
        env = dict(os.environ)
        gpus: list[int] = []
        want = self._gpus_wanted(res)
        if want:
            gpus, self.free_gpus = self.free_gpus[:want], self.free_gpus[want:]
            env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, gpus))
        # the cores are shared by the steps that can run now, not always by ``jobs``: a step that runs alone (the
        # base GAN, which everything waits for) gets them all
        at_once = min(self.jobs, max(1, int(res.get(AT_ONCE_KEY) or self.jobs)))
        share = max(1, self.cores // at_once)
        if (os.environ.get("OMP_NUM_THREADS") or "").isdigit():  # the user's own limit caps the share
            share = min(share, max(1, int(os.environ["OMP_NUM_THREADS"])))
        threads = str(res.get("cpus") or share)
        env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
        if at_once > 1:  # teams side by side must not spin on each other's cores; a step alone keeps histlib's
            env["OMP_WAIT_POLICY"] = "PASSIVE"  # short spin, 1.6-1.8x faster alone (docs/benchmarks.md)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / f"{step.name}.log", "w")  # noqa: SIM115 - closed in poll()
        proc = subprocess.Popen(_step_command(self.study_file, step.name, self.results_root), env=env, stdout=log,
                                stderr=subprocess.STDOUT, cwd=str(runs.project_root()))
        return _Running(step, proc, time.time(), gpus, log)

    def stop(self, jobs: list[_Running], grace_s: float = 60.0) -> list[bool]:
        """Stops running steps: SIGTERM to each, which a step turns into an interrupt that shuts its notebook's
        kernel down and records the step as failed (``histlib.study.cli``); SIGKILL to those still running after
        ``grace_s`` (one deadline for all), or at once when a second interrupt arrives while waiting.

        Returns:
            Per job, whether it was still running (a job that had ended is left to :meth:`poll`).
        """
        live = [job.handle.poll() is None for job in jobs]
        try:
            for job, alive in zip(jobs, live):
                if alive:
                    job.handle.terminate()
            deadline = time.time() + grace_s
            for job, alive in zip(jobs, live):
                if alive:
                    try:
                        job.handle.wait(timeout=max(0.0, deadline - time.time()))
                    except subprocess.TimeoutExpired:
                        pass
        finally:
            for job, alive in zip(jobs, live):
                if job.handle.poll() is None:
                    job.handle.kill()
                    job.handle.wait()
                if alive:
                    job.log.close()
                    self.free_gpus += job.gpus
        return live

    def poll(self, job: _Running) -> tuple[bool, str | None]:
        """``(done, error)``."""
        code = job.handle.poll()
        if code is None:
            return False, None
        job.log.close()
        self.free_gpus += job.gpus
        return True, None if code == 0 else _last_error(self.log_dir / f"{job.step.name}.log", code)


class SubmititBackend:
    """Steps as submitit jobs (SLURM, or submitit's local/debug clusters for tests)."""

    def __init__(self, jobs: int, study_file: str, results_root: str, folder: Path, cluster: str | None,
                 slurm: dict[str, Any]):
        import submitit

        self.jobs, self.study_file, self.results_root = jobs, study_file, results_root
        self.executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
        self.slurm = {f"slurm_{k}": v for k, v in slurm.items()}

    def can_start(self, res: dict[str, Any], running: int) -> bool:
        return running < self.jobs

    def start(self, step, res: dict[str, Any]) -> _Running:
        from submitit.helpers import CommandFunction

        params: dict[str, Any] = {"name": step.name, "timeout_min": int(res.get("time_min", 240)),
                                  "gpus_per_node": int(res.get("gpus", 0)), "tasks_per_node": 1, "nodes": 1}
        if res.get("cpus"):
            params["cpus_per_task"] = int(res["cpus"])
        if res.get("mem_gb"):
            params["mem_gb"] = res["mem_gb"]
        if self.executor.cluster == "slurm":
            params.update(self.slurm)
        self.executor.update_parameters(**params)
        command = CommandFunction(_step_command(self.study_file, step.name, self.results_root),
                                  cwd=runs.project_root())
        job = self.executor.submit(command)
        return _Running(step, job, time.time())

    def stop(self, jobs: list[_Running]) -> list[bool]:
        """Cancels the steps' jobs that have not ended (on SLURM, ``scancel``: a queued job never starts, a running
        one is stopped; submitit's ``local`` stand-in cluster only interrupts its wrapper, and the step may run on).

        Returns:
            Per job, whether it had not ended (and was cancelled).
        """
        live = []
        for job in jobs:
            live.append(not job.handle.done())
            if live[-1]:
                try:
                    job.handle.cancel(check=False)
                except Exception:  # noqa: BLE001 - no scancel here: nothing more can be done from this side
                    pass
        return live

    def poll(self, job: _Running) -> tuple[bool, str | None]:
        if not job.handle.done():
            return False, None
        try:
            job.handle.result()
        except Exception as e:  # noqa: BLE001 - the job's failure, reported, not raised
            text = str(e)
            return True, _error_in(text) or (text.strip().splitlines() or [type(e).__name__])[-1][:300]
        return True, None


def _gpu_count() -> int:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([v for v in visible.split(",") if v.strip()])
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no torch or no driver: no GPU
        return 0


def _error_in(text: str) -> str | None:
    """The last line of a step's output that names an error (``error: ...`` of the CLI, a Python exception)."""
    errors = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("error:") or "Error" in ln]
    return errors[-1][:300] if errors else None


def _last_error(log: Path, code: int) -> str:
    return _error_in(log.read_text(errors="replace") if log.is_file() else "") or f"exit status {code}"


# ----------------------------------------------------------------------------------------------------------------
# The scheduler


def schedule(steps: list, rows: list[dict[str, Any]], *, is_done: Callable[[Any], bool], backend,
             resources: dict[str, dict[str, Any]], on_change: Callable[[], None], poll_s: float = 1.0,
             status_every_s: float = 30.0, out=None,
             durations: dict[str, list[float]] | None = None,
             expected: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """Runs ``steps`` (in plan order, dependencies first) on ``backend``; updates ``rows`` in place.

    A step starts when every step it depends on has finished (or was finished before); a failed step marks the
    steps that depend on it ``blocked``. ``on_change`` runs after every change (study.json, index page).
    ``durations`` (seconds of finished steps per stage, e.g. from earlier invocations) seed the ETA; the steps that
    finish here are added to them. ``expected`` (seconds per step name, e.g. ``study plan``'s estimate, which knows
    each step's amount of work) is used instead for the steps it names, scaled by how long this invocation's
    finished steps of the same stage took against their own expectation.
    """
    out = out or sys.stdout
    by_name = {r["step"]: r for r in rows}
    queue = list(zip(steps, rows))
    running: list[_Running] = []
    t0 = time.time()
    last_status = 0.0
    durations = {stage: list(v) for stage, v in (durations or {}).items()}
    expected = {name: sec for name, sec in (expected or {}).items() if sec and sec > 0}
    ratios: dict[str, list[float]] = {}  # per stage: seconds taken / seconds expected, of the steps finished here

    try:
        while queue or running:
            changed = False
            # siblings: steps of one stage that can run now (and run) share the cores; a step of another stage beside
            # them (a short classifier beside the base GAN) oversubscribes briefly rather than halving the long one
            ready = _ready_per_stage(queue, running, by_name, is_done)
            for step, row in list(queue):
                deps = [by_name.get(d, {}).get("status", "finished") for d in step.depends]
                if any(s in ("failed", "blocked") for s in deps):
                    bad = [d for d in step.depends if by_name.get(d, {}).get("status") in ("failed", "blocked")]
                    row.update(status="blocked", reason=f"depends on {', '.join(bad)}, which did not finish")
                    queue.remove((step, row))
                    changed = True
                elif all(_ended_well(s) for s in deps):
                    if is_done(step):
                        row["status"] = "skipped (finished, same hash)"
                        queue.remove((step, row))
                        changed = True
                        continue
                    res = {**stage_resources(resources, step.stage), AT_ONCE_KEY: ready.get(step.stage, 1)}
                    if backend.can_start(res, len(running)):
                        with _interrupts_held():  # a step started is a step the interrupt below can stop
                            running.append(backend.start(step, res))
                        row["status"] = "running"
                        queue.remove((step, row))
                        changed = True
            for job in list(running):
                done, error = backend.poll(job)
                if not done:
                    continue
                running.remove(job)
                row = by_name[job.step.name]
                seconds = round(time.time() - job.started, 1)
                if error is None:
                    row.update(status="finished", seconds=seconds)
                    durations.setdefault(job.step.stage, []).append(seconds)
                    if job.step.name in expected:
                        ratios.setdefault(job.step.stage, []).append(seconds / expected[job.step.name])
                else:
                    row.update(status="failed", seconds=seconds, error=error)
                print(f"{job.step.name}: {row['status']} after {seconds} s" + (f" ({error})" if error else ""),
                      file=out, flush=True)
                changed = True
            if changed:
                on_change()
            if time.time() - last_status >= status_every_s or (changed and not (queue or running)):
                print(_status_line(rows, queue, running, durations, backend.jobs, t0, expected, ratios), file=out,
                      flush=True)
                last_status = time.time()
            if running and not changed:
                time.sleep(poll_s)
    except BaseException:  # interrupted (Ctrl-C, SIGTERM, an error here): no step may outlive its runner
        live = [True] * len(running)
        try:
            live = backend.stop(running) if running else []
        finally:  # even when a second interrupt cut the stopping short (the backend killed the rest then)
            for job, was_running in zip(running, live):
                row = by_name[job.step.name]
                seconds = round(time.time() - job.started, 1)
                if was_running:
                    row.update(status="interrupted", seconds=seconds)
                    print(f"{job.step.name}: stopped (the runner was interrupted)", file=out, flush=True)
                    continue
                try:  # it had ended on its own before the interrupt: what it ended with
                    error = backend.poll(job)[1]
                except Exception as e:  # noqa: BLE001 - the interrupt is what propagates
                    error = str(e)
                row.update(status="finished" if error is None else "failed", seconds=seconds,
                           **({"error": error} if error else {}))
        raise
    return rows


@contextlib.contextmanager
def _interrupts_held():
    """Holds Ctrl-C and SIGTERM back until the block has ended, then delivers the first that came (to the handler
    that was in place: a KeyboardInterrupt, the runner's SIGTERM-as-interrupt, or the default). Around a step's start
    and its registration, so an interrupt cannot land between the process starting and the runner knowing it. A
    no-op outside the main thread, and for a signal whose handler Python did not set."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    held = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            # None: set outside Python, cannot be restored; SIG_IGN: ignored anyway (and inherited by the step)
            if signal.getsignal(sig) not in (None, signal.SIG_IGN):
                held[sig] = signal.signal(sig, lambda signum, frame: caught.append(signum))
        yield
    finally:
        _restore_handlers(list(held.items()))
        if caught:
            signal.raise_signal(caught[0])


def _restore_handlers(handlers: list) -> None:
    """Puts ``(signal, handler)`` pairs back, each in the ``finally`` of the one before: an interrupt that the first
    restored handler raises leaves none of the recording handlers in place."""
    if handlers:
        try:
            signal.signal(*handlers[0])
        finally:
            _restore_handlers(handlers[1:])


def _ended_well(status: str) -> bool:
    """A step's row status that lets the steps depending on it start: it finished now or before (skipped)."""
    return status == "finished" or status.startswith("skipped")


def _ready_per_stage(queue: list, running: list[_Running], by_name: dict[str, dict[str, Any]],
                     is_done: Callable[[Any], bool]) -> dict[str, int]:
    """Steps per stage that can run now (their dependencies done, themselves not) or run.

    A queued dependency that is finished from an earlier run (``is_done``, and its own dependencies done) counts as
    done: the scheduler skips it in the same pass, so a resumed study's first steps share the cores like the later
    ones, instead of each taking them all (two steps with every core each ran at half speed on two cores).
    """
    queued = {st.name: st for st, _ in queue}
    done: dict[str, bool] = {}

    def is_done_dep(name: str) -> bool:
        if name not in done:
            status = by_name.get(name, {}).get("status", "finished")
            st = queued.get(name)
            done[name] = _ended_well(status) or (
                st is not None and all(is_done_dep(d) for d in st.depends) and is_done(st))
        return done[name]

    ready: dict[str, int] = {}
    for st, _ in queue:
        if all(is_done_dep(d) for d in st.depends) and not (done[st.name] if st.name in done else is_done(st)):
            ready[st.stage] = ready.get(st.stage, 0) + 1
    for job in running:
        ready[job.step.stage] = ready.get(job.step.stage, 0) + 1
    return ready


def _status_line(rows: list[dict[str, Any]], queue: list, running: list[_Running], durations: dict[str, list[float]],
                 jobs: int, t0: float, expected: dict[str, float] | None = None,
                 ratios: dict[str, list[float]] | None = None) -> str:
    """``[12:00:00] running 2 · queued 5 · finished 3 · ... · ETA ~4m10s``: the ETA from each step's expected
    seconds (scaled by ``ratios``, taken / expected, of the stage's steps finished so far), else from its stage's
    mean duration."""
    import statistics

    expected, ratios = expected or {}, ratios or {}
    counts = {s: sum(r["status"] == s for r in rows) for s in ("finished", "failed", "blocked")}
    skipped = sum(r["status"].startswith("skipped") for r in rows)
    now = time.time()
    remaining = [(st, 0.0) for st, r in queue] + [(j.step, now - j.started) for j in running]

    def left(st, elapsed: float) -> float | None:
        if st.name in expected:
            scale = statistics.median(ratios[st.stage]) if ratios.get(st.stage) else 1.0
            return max(expected[st.name] * scale - elapsed, 0.0)
        if st.stage in durations:
            return max(sum(durations[st.stage]) / len(durations[st.stage]) - elapsed, 0.0)
        return None

    known = [x for x in (left(st, elapsed) for st, elapsed in remaining) if x is not None]
    eta = (f"ETA ~{_minutes(sum(known) / max(jobs, 1))}" + ("" if len(known) == len(remaining)
                                                           else " (for the stages timed so far)")) \
        if known else "ETA ?"
    return (f"[{time.strftime('%H:%M:%S')}] running {len(running)} · queued {len(queue)} · finished "
            f"{counts['finished']} · skipped {skipped} · failed {counts['failed']} · blocked {counts['blocked']}"
            f" · elapsed {_minutes(time.time() - t0)} · {eta}")


def _minutes(s: float) -> str:
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"
