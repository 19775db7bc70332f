"""One process's part of a training or fine-tuning run of the class-conditional StyleGAN2 (notebooks 02 and 03).

:func:`train` is the single-process body: it trains on this process's device, alone or as one rank of a process group
that already exists (made by the workers of :func:`histlib.gan.launch.train_gan`, the public entry, or by ``torchrun``);
it never starts processes itself. Rank 0 writes the run directory (the layout of :mod:`histlib.runs`): ``config.json``,
``env.json``, ``stats.jsonl`` (one line per tick), ``metrics.json``, ``images/`` (per-class grids of ``G_ema`` at each
snapshot, fixed latents) and ``checkpoints/`` (:mod:`histlib.gan.checkpoint`: ``latest.pt`` holds everything needed to
resume, ``snapshot-*.pt`` and ``best.pt`` the networks).

The loop: build the state (:func:`histlib.gan.state.build_state`: networks, base checkpoint or resume, freezing,
optimisers, augmentation), then per iteration the four phases of :mod:`histlib.gan.phases`, the EMA of G and ADA's
update; at the end of every tick (``tick_kimg``) a ``stats.jsonl`` line, D's view of G's classes (relabelling swapped
classes when fine-tuning to new ones, :mod:`histlib.gan.transfer`), the metric hooks and early stopping, and at
snapshots an image grid and checkpoints. Training stops at the first non-finite loss, keeping the last good
checkpoint.

Exact resume (contract): continuing from ``latest.pt`` is bit-identical on CPU to a run that was never interrupted
(the data order is a pure function of ``(seed, epoch)``, the latent stream and every random state are saved).
"""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed

from histlib import ops, runs
from histlib.data.dataset import ImageDataset, to_uint8_tensor
from histlib.device import forked_rng, resolve_device, rng_state
from histlib.gan import checkpoint, plots, transfer
from histlib.gan import hooks as hook_mod
from histlib.gan.config import TrainConfig
from histlib.gan.distributed import BatchStream, Dist, broadcast_object, gather_objects, setup_distributed
from histlib.gan.phases import phases
from histlib.gan.state import Meter, TrainState, build_state
from histlib.progress import progress


class TrainingDiverged(FloatingPointError):
    """A loss became NaN or infinite; the message names the loss and the image count."""


def train(cfg: TrainConfig, run_dir: str | os.PathLike, hooks: list[Callable] | None = None,
          early_stopping: Any = None, resume: bool | str = "auto") -> dict[str, Any]:
    """Trains in this process (one rank when a process group exists) and returns the run's summary.

    The arguments are those of :func:`histlib.gan.launch.train_gan`, which is the public entry (it decides how many
    processes train and starts them); ``hooks`` and ``early_stopping`` are used on rank 0 only.

    Returns:
        The final metrics (also written to ``metrics.json`` by rank 0).

    Raises:
        TrainingDiverged: a loss became NaN/Inf (the last good checkpoint is kept).
        ValueError / FileNotFoundError: bad settings or inputs, naming the field or file.
    """
    cfg = copy.deepcopy(cfg).validate()
    t_start = time.time()
    device = resolve_device(cfg.device, "TrainConfig.device")
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL collectives and object gathers use the current device
    dist_info = setup_distributed(device.type)
    try:
        with ops.use_impl(cfg.kernel_impl):
            session = _start(cfg, Path(run_dir), hooks or [], early_stopping, resume, device, dist_info, t_start)
            return _train(session)
    finally:
        if dist_info.owned:
            torch.distributed.destroy_process_group()


@dataclass
class _Session:
    """What one call of :func:`train` works with, besides the :class:`TrainState`."""

    state: TrainState
    stream: BatchStream
    run_dir: Path
    run: runs.Run | None  # rank 0 only
    hooks: list[Callable]
    early_stopping: Any
    t_start: float
    grid_z: torch.Tensor
    transfer: transfer.TransferHook
    meter: Meter
    bar: Any = None
    hook_results: dict[str, float] = field(default_factory=dict)
    session_nimg: int = 0
    session_time: float = 0.0
    tick_start_nimg: int = 0
    tick_time: float = 0.0

    @property
    def latest(self) -> Path:
        return self.run_dir / "checkpoints" / "latest.pt"


def _load_data(cfg: TrainConfig) -> tuple[ImageDataset, int]:
    data_dir = runs.project_path(cfg.data_dir)
    dataset = ImageDataset(data_dir, split=cfg.split, transform=to_uint8_tensor, resolution=cfg.resolution)
    num_classes = cfg.num_classes or len(dataset.classes)
    if num_classes < len(dataset.classes):
        raise ValueError(f"TrainConfig.num_classes={cfg.num_classes}: the data in {data_dir} has "
                         f"{len(dataset.classes)} classes ({dataset.classes})")
    return dataset, num_classes


def _resume_checkpoint(latest: Path, resume: bool | str, cfg: TrainConfig, device: torch.device):
    if resume and latest.is_file():
        ckpt = checkpoint.load_checkpoint(latest, map_location=device)
        checkpoint.check_resume_config(ckpt["config"], cfg, latest)
        return ckpt
    if resume is True:
        raise FileNotFoundError(f"{latest}: no checkpoint to resume from (resume=True)")
    return None


def _start(cfg: TrainConfig, run_dir: Path, hooks: list[Callable], early_stopping: Any, resume: bool | str,
           device: torch.device, dist_info: Dist, t_start: float) -> _Session:
    if cfg.batch_size % dist_info.world:
        raise ValueError(f"TrainConfig.batch_size={cfg.batch_size}: must be divisible by the number of processes "
                         f"({dist_info.world})")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = cfg.allow_tf32
        torch.backends.cudnn.allow_tf32 = cfg.allow_tf32
    dataset, num_classes = _load_data(cfg)
    resumed = _resume_checkpoint(run_dir / "checkpoints" / "latest.pt", resume, cfg, device)
    state = build_state(cfg, dataset, num_classes, device, dist_info, resumed)
    early_stopping = hook_mod.early_stopping_rule(cfg, early_stopping)
    if resumed is not None:
        if early_stopping is not None and resumed.get("early_stopping") is not None \
                and hasattr(early_stopping, "load_state_dict"):
            early_stopping.load_state_dict(resumed["early_stopping"])
        for hook, hook_state in zip(hooks, resumed.get("hooks") or []):
            if hook_state is not None and hasattr(hook, "load_state_dict"):
                hook.load_state_dict(hook_state)
    stream = BatchStream(dataset, cfg.batch_size, cfg.seed, cfg.balanced_sampling, dist_info, cfg.num_workers,
                         **state.data_position, pin_memory=device.type == "cuda")
    rank0 = dist_info.rank == 0
    session = _Session(state=state, stream=stream, run_dir=run_dir, run=None, hooks=hooks,
                       early_stopping=early_stopping, t_start=t_start, transfer=transfer.TransferHook(state, dataset),
                       meter=Meter(device),
                       grid_z=torch.randn([cfg.grid_columns, state.G.z_dim],
                                          generator=torch.Generator().manual_seed(cfg.seed + 1)),
                       tick_start_nimg=state.cur_nimg)
    if rank0:
        session.run = _prepare_run_dir(session, dataset, fresh=resumed is None)
        if cfg.progress:
            # counted in images (integers: no float drift past the total), shown in kimg
            total = round(cfg.kimg * 1000)
            session.bar = progress(total=total, initial=min(state.cur_nimg, total), unit="kimg", scale=1e-3,
                                   desc="train_gan", dynamic_ncols=True)
    return session


def _prepare_run_dir(s: _Session, dataset, fresh: bool) -> runs.Run:
    """Made only now: bad settings or a bad base checkpoint leave no empty folder behind."""
    state, cfg = s.state, s.state.cfg
    run = runs.Run(s.run_dir)
    run.write_config(cfg)
    run.write_env(device=str(state.device), world_size=state.dist.world, kernel_impl=cfg.kernel_impl)
    ckpt_dir = s.run_dir / "checkpoints"
    if not fresh:  # drop the stats of ticks after the checkpoint (they will be redone identically)
        kept = [r for r in run.read_stats() if r.get("tick", 0) <= state.tick]
        runs.atomic_write_text(run.stats_path, "".join(json.dumps(r) + "\n" for r in kept))
        return run
    # a fresh start: outputs of an earlier run in this directory would be mistaken for this one's
    for f in [run.stats_path, run.metrics_path, *run.images.glob("grid-*.png"), *ckpt_dir.glob("snapshot-*.pt"),
              ckpt_dir / "best.pt", s.latest]:
        f.unlink(missing_ok=True)
    s.transfer.start(s.run_dir)
    reals = plots.real_grid(dataset, state.num_classes, cfg.grid_columns, cfg.seed)
    plots.write_png(run.images / "reals.png", plots.make_grid(reals, state.num_classes))
    runs.write_json(run.images / "grid.json", {"classes": state.classes, "columns": cfg.grid_columns,
                                               "resolution": cfg.resolution, "pad": 2})
    return run


def _train(s: _Session) -> dict[str, Any]:
    state, cfg = s.state, s.state.cfg
    total_nimg = int(round(cfg.kimg * 1000))
    schedule = phases(state)
    done = state.cur_nimg >= total_nimg or state.stopped_early  # an early-stopped run stays stopped when resumed
    while not done:
        _iterate(s, schedule)
        done = state.cur_nimg >= total_nimg
        if done or state.cur_nimg >= s.tick_start_nimg + cfg.tick_kimg * 1000:
            done = _end_tick(s, done)
    if s.bar is not None:
        s.bar.close()
    return _finish(s)


def _iterate(s: _Session, schedule) -> None:
    """One iteration: every phase due at this step, then G_ema, the counters and ADA; stops at a non-finite loss."""
    state, cfg = s.state, s.state.cfg
    t_iter = time.time()
    real_u8, real_c = s.stream.next()
    real = real_u8.to(state.device, non_blocking=True).to(torch.float32) / 127.5 - 1  # [n, 3, R, R]
    real_c = real_c.to(state.device, non_blocking=True)
    phase_losses = []
    for _, phase, interval in schedule:
        if state.step % interval == 0:
            phase_losses += phase(state, real, real_c, s.meter)
    state.update_ema()
    state.cur_nimg += cfg.batch_size
    state.step += 1
    state.update_ada()
    _check_finite(s, phase_losses)
    dt = time.time() - t_iter
    s.tick_time += dt
    s.session_time += dt
    s.session_nimg += cfg.batch_size
    if s.bar is not None:
        s.bar.update(max(0, min(cfg.batch_size, s.bar.total - s.bar.n)))  # the last batch may overshoot kimg


def _check_finite(s: _Session, phase_losses: list[tuple[str, torch.Tensor]]) -> None:
    """One host sync per iteration: stop at the first non-finite loss, before any checkpoint is written."""
    values = torch.stack([v.detach().float().reshape(()) for _, v in phase_losses])
    bad = (~torch.isfinite(values)).float()
    if s.state.dist.active:
        torch.distributed.all_reduce(bad)
    if not bool(bad.any()):
        return
    names = [n for (n, _), b in zip(phase_losses, bad.tolist()) if b]
    if s.bar is not None:
        s.bar.close()
    raise TrainingDiverged(
        f"train_gan: non-finite {names[0]} loss at {s.state.cur_nimg / 1000:.3f} kimg (iteration {s.state.step}"
        + (f"; then also {', '.join(names[1:])}" if len(names) > 1 else "") + "); training stopped. "
        f"Last good checkpoint: {s.latest if s.latest.is_file() else 'none written yet'}. "
        "Lower lr_g/lr_d or raise r1_gamma.")


def _tick_record(s: _Session) -> dict[str, Any]:
    """One ``stats.jsonl`` line: mean of every noted value over the tick (and over ranks), p, speed."""
    state = s.state
    tick_nimg = state.cur_nimg - s.tick_start_nimg
    record: dict[str, Any] = {"tick": state.tick, "kimg": round(state.cur_nimg / 1000, 3),
                              "cur_nimg": state.cur_nimg, **s.meter.means(state.dist)}
    if state.augment_pipe is not None:
        record["augment_p"] = float(state.augment_pipe.p)
    if state.ada is not None and state.ada.rt is not None:
        record["ada_rt"] = float(state.ada.rt)
    record["tick_s"] = round(s.tick_time, 3)
    record["img_per_s"] = round(tick_nimg / s.tick_time, 2) if s.tick_time > 0 else None
    record["sec_per_kimg"] = round(s.tick_time / tick_nimg * 1000, 3) if tick_nimg else None
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        record["gpu_mem_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    record["wall_s"] = round(time.time() - s.t_start, 3)
    return record


def _run_hooks(s: _Session, record: dict[str, Any], done: bool) -> tuple[bool, bool]:
    """The metric hooks and early stopping, on rank 0, shared with every rank; returns ``(improved, stop)``."""
    state, cfg = s.state, s.state.cfg
    if not s.hooks or (state.next_metrics_nimg is not None and state.cur_nimg < state.next_metrics_nimg and not done):
        return False, False
    metrics: dict[str, float] = {}
    improved = stop = False
    if state.dist.rank == 0:
        with forked_rng(state.device):
            for hook in s.hooks:
                metrics.update(hook_mod.call_hook(hook, state.G_ema, state.cur_nimg, final=done))
        if s.early_stopping is not None and metrics:
            improved, stop = hook_mod.update_early_stopping(s.early_stopping, metrics, state.best, cfg)
            if improved:
                state.best = {"cur_nimg": state.cur_nimg, **metrics}
    metrics, stop, improved, state.best = broadcast_object((metrics, stop, improved, state.best), state.dist)
    s.hook_results.update(metrics)
    record.update({f"metrics/{k}": v for k, v in metrics.items()})
    if state.next_metrics_nimg is not None:
        while state.next_metrics_nimg <= state.cur_nimg:
            state.next_metrics_nimg += int(cfg.metrics_every_kimg * 1000)
    return improved, stop


def _end_tick(s: _Session, done: bool) -> bool:
    """Stats, D's class check, hooks, early stopping and snapshots at the end of a tick; returns whether to stop."""
    state, cfg = s.state, s.state.cfg
    state.tick += 1
    state.train_time += s.tick_time
    record = _tick_record(s)
    record.update(s.transfer.end_tick())
    improved, stop = _run_hooks(s, record, done)
    if s.run is not None:
        s.run.log_stats(record)
    if s.bar is not None:
        s.bar.set_postfix({k: f"{record[k]:.3g}" for k in ("loss_g", "loss_d", "augment_p", "img_per_s")
                           if record.get(k) is not None}, refresh=False)
    state.stopped_early = stop
    done = done or stop
    if improved:
        _save(s, s.run_dir / "checkpoints" / "best.pt", full=False)
    if state.tick % cfg.snapshot_ticks == 0 or done:
        _snapshot(s)
    s.tick_start_nimg, s.tick_time = state.cur_nimg, 0.0
    return done


def _snapshot(s: _Session) -> None:
    state, cfg = s.state, s.state.cfg
    if s.run is not None:
        with forked_rng(state.device):
            image = plots.make_grid(plots.class_grid(state.G_ema, s.grid_z, state.num_classes), state.num_classes)
        plots.write_png(s.run.images / f"grid-{state.cur_nimg / 1000:09.3f}kimg.png", image)
        plots.write_png(s.run.images / "grid-latest.png", image)
        if cfg.keep_snapshots:
            _save(s, s.run_dir / "checkpoints" / f"snapshot-{state.cur_nimg / 1000:09.3f}kimg.pt", full=False)
    _save(s, s.latest, full=True)


def _save(s: _Session, path: Path, full: bool) -> None:
    """A full checkpoint is written by rank 0 but holds every rank's random states (a collective: all ranks call)."""
    rng_all = gather_objects(rng_state(s.state.device), s.state.dist) if full else None
    if s.state.dist.rank != 0:
        return
    obj = checkpoint.checkpoint_dict(s.state, full, rng_all, s.hooks, s.early_stopping, s.stream.state_dict())
    runs.atomic_torch_save(obj, path)


def _finish(s: _Session) -> dict[str, Any]:
    state, cfg = s.state, s.state.cfg
    stats = s.run.read_stats() if s.run is not None else []
    last = stats[-1] if stats else {}
    summary = {
        "kimg": round(state.cur_nimg / 1000, 3), "cur_nimg": state.cur_nimg, "ticks": state.tick,
        "iterations": state.step, "wall_time_s": round(time.time() - s.t_start, 3),
        "train_time_s": round(state.train_time, 3),
        "img_per_s": round(s.session_nimg / s.session_time, 3) if s.session_time > 0 else None,
        "augment_p": float(state.augment_pipe.p) if state.augment_pipe is not None else 0.0,
        "ada_rt": state.ada.rt if state.ada is not None else None,
        "stopped_early": state.stopped_early, "num_classes": state.num_classes, "classes": state.classes,
        "resolution": cfg.resolution, "device": str(state.device), "world_size": state.dist.world,
        **{k: v for k, v in last.items() if k.startswith("loss") or k in ("r1_penalty", "pl_mean")},
        **{f"metrics/{k}": v for k, v in s.hook_results.items()},
        **({f"best/{k}": v for k, v in state.best.items()} if state.best else {}),
        "freeze_g_blocks": cfg.freeze_g, "freeze_d_blocks": cfg.freeze_d,
        "frozen_g_tensors": len(state.frozen["G"]), "frozen_d_tensors": len(state.frozen["D"]),
        "class_realignments": state.realignments,
        "checkpoint": s.latest.as_posix(), "run_dir": s.run_dir.as_posix(),
    }
    if s.run is not None:
        s.run.write_metrics(summary)
        s.run.write_env(device=str(state.device), world_size=state.dist.world, kernel_impl=cfg.kernel_impl)
    return summary
