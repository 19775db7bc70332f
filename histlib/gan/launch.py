"""``train_gan``, the public entry of GAN training: it decides how many processes train and starts them.

``TrainConfig.processes`` says how many training processes one call uses: ``None`` (default) means one per CUDA
device this process can see (``CUDA_VISIBLE_DEVICES``, which the study runner sets to the GPUs a step's
``resources`` ask for), and one on CPU; an integer asks for exactly that many (on CPU: gloo processes sharing the
cores, which is how the tests run it). With one process, or under ``torchrun`` or inside an existing process group
(the launcher already made the processes), the calling process trains itself: :func:`histlib.gan.loop.train`, the
single-process body.

Otherwise the caller starts ``k`` worker processes (``python -m histlib.gan.launch``: fresh interpreters, so a script
without an ``if __name__ == "__main__"`` guard and a notebook kernel work alike; rank ``r`` trains on ``cuda:r`` of
the visible devices, or on CPU with its share of the threads), each of which runs :func:`histlib.gan.loop.train`,
waits for them and returns rank 0's summary. Rank 0 runs the hooks and early stopping it is given (so they must
pickle) and writes the run directory, exactly as a ``torchrun`` launch does (:mod:`histlib.gan.distributed`). When a
worker fails the others are stopped and its exception is raised again here (with the worker's traceback as its
cause); stopping the caller (Ctrl-C, interrupting the notebook kernel) stops the workers.
"""

from __future__ import annotations

import copy
import os
import pickle
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed

from histlib import runs
from histlib.gan import loop
from histlib.gan.config import TrainConfig


class TrainingProcessFailed(RuntimeError):
    """A training worker ended without a Python exception to pass on (killed, out of memory, a crash)."""


class WorkerTraceback(RuntimeError):
    """The traceback of an exception raised in a training worker (chained as the cause of the re-raised one)."""


_JOB, _SUMMARY = "job.pkl", "summary.pkl"


def train_gan(cfg: TrainConfig, run_dir: str | os.PathLike, hooks: list[Callable] | None = None,
              early_stopping: Any = None, resume: bool | str = "auto") -> dict[str, Any]:
    """Trains (or fine-tunes) the conditional StyleGAN2 and returns a summary dict (also written to metrics.json).

    Args:
        cfg: the run's settings (``cfg.processes``: how many processes train, see the module's text).
        run_dir: the run directory (created). Paths in ``cfg`` are resolved against the project root.
        hooks: callables ``hook(G_ema, cur_nimg) -> dict[str, float]`` run on rank 0 every
            ``cfg.metrics_every_kimg`` (every tick when it is None, for hooks with their own schedule) and at the
            end; their results go into ``stats.jsonl`` and ``metrics.json``. A hook's ``state_dict()`` (if any)
            is checkpointed.
        early_stopping: an object with ``update(metrics: dict) -> bool`` (True = stop), fed the hooks' results;
            when None and ``cfg.early_stop_patience`` is set, ``histlib.metrics.EarlyStopping`` is used. The
            generator with the best value is kept as ``checkpoints/best.pt``.
        resume: ``'auto'`` continues from ``checkpoints/latest.pt`` when it exists (its config must match apart
            from ``RESUME_MUTABLE_FIELDS``), ``True`` requires it, ``False`` starts over.

    Returns:
        The final metrics: losses, kimg, img/s, augmentation p, wall time, hook results, paths.

    Raises:
        histlib.gan.loop.TrainingDiverged: a loss became NaN/Inf (the last good checkpoint is kept).
        ValueError / FileNotFoundError: bad settings or inputs, naming the field or file.
        TrainingProcessFailed: a worker process ended without an exception to pass on.
    """
    cfg = copy.deepcopy(cfg).validate()
    world = processes_wanted(cfg)
    if world > 1:
        return spawn_training(cfg, run_dir, hooks, early_stopping, resume, world)
    return loop.train(cfg, run_dir, hooks=hooks, early_stopping=early_stopping, resume=resume)


def _in_launched_group() -> bool:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return True
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def processes_wanted(cfg: TrainConfig) -> int:
    """How many processes ``train_gan(cfg)`` starts (1: it trains in the calling process).

    Raises:
        ValueError: ``cfg.processes`` cannot be met (more than the visible GPUs, several processes on one named
            GPU) or does not divide ``cfg.batch_size``; the message names the field.
    """
    if _in_launched_group():
        return 1
    device = str(cfg.device)
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    visible = torch.cuda.device_count() if cuda else 0
    if cfg.processes is None:
        k = visible if device in ("auto", "cuda") and cuda else 1
    else:
        k = cfg.processes
        if cuda and k > 1 and device not in ("auto", "cuda"):
            raise ValueError(f"TrainConfig.processes={k}: device={device!r} names one GPU; use device='cuda' "
                             f"(rank r trains on cuda:r) or processes=1")
        if cuda and k > visible:
            raise ValueError(f"TrainConfig.processes={k}: only {visible} CUDA device(s) visible "
                             f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})")
    k = max(k, 1)
    if cfg.batch_size % k:
        raise ValueError(f"TrainConfig.batch_size={cfg.batch_size}: must be divisible by the number of training "
                         f"processes ({k}; TrainConfig.processes={cfg.processes!r})")
    return k


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_training(cfg: TrainConfig, run_dir: str | os.PathLike, hooks: list[Callable] | None, early_stopping: Any,
                   resume: bool | str, world: int, poll_s: float = 0.2) -> dict[str, Any]:
    """Runs :func:`histlib.gan.loop.train` in ``world`` worker processes and returns rank 0's summary."""
    try:
        job = pickle.dumps({"cfg": cfg, "run_dir": str(run_dir), "hooks": hooks, "early_stopping": early_stopping,
                            "resume": resume})
    except Exception as exc:
        raise TypeError(f"train_gan with {world} processes: the hooks and early_stopping are sent to the rank-0 "
                        f"worker and must pickle ({type(exc).__name__}: {exc})") from exc
    package_root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "WORLD_SIZE": str(world), "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(_free_port()), "OMP_NUM_THREADS": str(max(1, torch.get_num_threads() // world)),
           "PYTHONPATH": os.pathsep.join([package_root, *filter(None, [os.environ.get("PYTHONPATH")])])}
    if "ipykernel" in sys.modules and "HISTLIB_PROGRESS" not in os.environ:
        env["HISTLIB_PROGRESS"] = "plain"  # a notebook shows the workers' output as text: lines, not a redrawn bar
    with tempfile.TemporaryDirectory(prefix="histlib-train-") as out_dir:
        Path(out_dir, _JOB).write_bytes(job)
        procs = [subprocess.Popen([sys.executable, "-m", "histlib.gan.launch", out_dir],
                                  env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}) for r in range(world)]
        try:
            failed = _wait(procs, poll_s)
        finally:
            _stop(procs)
        if failed is not None:
            _raise_worker_error(Path(out_dir), world)
            raise TrainingProcessFailed(f"train_gan: training process {failed} of {world} ended with exit status "
                                        f"{procs[failed].returncode} (see its output above)")
        return pickle.loads(Path(out_dir, _SUMMARY).read_bytes())


def _raise_worker_error(out_dir: Path, world: int) -> None:
    """Raises the exception a worker reported (the first one written: the others may only have lost their peer)."""
    errors = sorted(out_dir.glob("error-*.pkl"), key=lambda f: f.stat().st_mtime_ns)
    if not errors:
        return
    rank, report = errors[0].stem.split("-")[1], pickle.loads(errors[0].read_bytes())
    cause = WorkerTraceback(f"in training process {rank} of {world}:\n{report['traceback']}")
    try:
        exc = pickle.loads(report["exception"])
    except Exception:  # pickled but does not rebuild here (e.g. required keyword-only arguments)
        exc = TrainingProcessFailed(f"train_gan: training process {rank} of {world} raised {report['summary']}")
    raise exc from cause


def _wait(procs: list[subprocess.Popen], poll_s: float) -> int | None:
    """Waits until every worker has ended well (None) or one has failed (its rank)."""
    while True:
        codes = [p.poll() for p in procs]
        bad = [r for r, c in enumerate(codes) if c not in (None, 0)]
        if bad:
            return bad[0]
        if all(c == 0 for c in codes):
            return None
        time.sleep(poll_s)


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _worker_main(out_dir: str) -> int:
    """One training process: rank and world from the environment, the job from ``out_dir``."""
    rank = int(os.environ["RANK"])
    job = pickle.loads(Path(out_dir, _JOB).read_bytes())
    try:
        summary = loop.train(job["cfg"], job["run_dir"], hooks=job["hooks"] if rank == 0 else None,
                            early_stopping=job["early_stopping"] if rank == 0 else None, resume=job["resume"])
    except BaseException as exc:
        summary = f"{type(exc).__name__}: {exc}"
        try:
            exception = pickle.dumps(exc)
        except Exception:  # an exception that does not pickle: its type and message
            exception = pickle.dumps(RuntimeError(summary))
        runs.atomic_write_bytes(Path(out_dir, f"error-{rank}.pkl"), pickle.dumps(
            {"exception": exception, "summary": summary, "traceback": traceback.format_exc()}))
        return 1
    if rank == 0:
        runs.atomic_write_bytes(Path(out_dir, _SUMMARY), pickle.dumps(summary))
    return 0


if __name__ == "__main__":
    code = _worker_main(sys.argv[1])
    sys.stdout.flush()
    sys.stderr.flush()
    # the process group is gone (loop.train destroys it); leave without the backend's interpreter-exit teardown
    os._exit(code)
