"""How long a study's stages will take (``python -m histlib study plan``), and on what the figure rests.

Each stage's time is estimated, in this order of preference, from:

1. **measured**: the step states of earlier runs on this machine (``<results>/*/notebooks/.state/*.json``: a
   finished step's parameters and seconds, start-up and report export included), any study, the same stage and
   the same kind of work (profile and resolution for the GANs, image size and models for the classifiers),
   scaled by the amount of work (kimg, images per class, source bytes; for the classifiers the images trained,
   runs × epochs × training images, where the training sets' sizes are known, else runs × epochs, leaving out the
   finished runs a classify step keeps);
2. **probe**: a few seconds of the stage's inner loop on this machine (a handful of GAN training iterations, a
   classifier batch forward and backward, a few generator batches, a few source images decoded), scaled to the
   step (a generate step: the images it draws, ``OVERSAMPLE`` × those it keeps with a selection, and the epochs of
   the real-image classifiers it trains on first use); it leaves out what the loop does not do (start-up,
   snapshots, metrics), so it is a lower bound;
3. **published**: the reference StyleGAN2-ADA speed where it exists (256 px), when the profile wants a GPU this
   machine does not have.

Otherwise the stage says why it has no estimate. The basis of every figure is printed beside it.
"""

from __future__ import annotations

import functools
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from histlib import runs
from histlib.classify import sets as classify_sets
from histlib.gan.config import PROFILES as GAN_PROFILES
from histlib.study.spec import STAGES, Step, stage_parameters
from histlib.study.steps import classify_params, images_trained, planned_runs, runs_to_keep

# GAN training speed of the *reference* StyleGAN2-ADA at 256 px on one GPU, as its authors publish it (seconds per
# thousand images): used only when nothing was measured and this machine cannot probe the profile's device.
REFERENCE_SEC_PER_KIMG = {256: (12.5, "NVIDIA's published StyleGAN2-ADA speed at 256 px on one A100")}
PROBE_SECONDS = 3.0  # time spent in each probe's timed loop (after one warm-up iteration)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".svs", ".ndpi", ".mrxs"}

Probe = Callable[[], "tuple[float, str] | None"]


# ----------------------------------------------------------------------------------------------------------------
# Work: how much each step does, in the unit its stage's rate is measured in


def _profile_value(params: dict[str, Any], name: str, section: str, key: str) -> Any:
    value = params.get(name)
    if value is not None:
        return value
    profile = params.get("PROFILE", "demo")
    return GAN_PROFILES.get(profile, {}).get(section, {}).get(key)


def _source_bytes(params: dict[str, Any]) -> float | None:
    src = params.get("SOURCE_DIR")
    root = runs.project_path(src) if src else None
    if root is None or not root.is_dir():
        return None
    total = sum(p.stat().st_size for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    return total / 1e6 or None


def work(stage: str, params: dict[str, Any], steps: list | None = None) -> tuple[tuple, float | None, str]:
    """``(kind, amount, unit)`` of one step: steps of the same ``kind`` run at comparable rates per ``unit``
    (``steps``: the plan, where a generate step's ``AMOUNT`` is counted from the source images before its data step
    has run)."""
    profile = params.get("PROFILE", "demo")
    if stage in ("base_gan", "finetune"):
        res = _profile_value(params, "RESOLUTION", "train", "resolution")
        kimg = _profile_value(params, "KIMG", "train", "kimg")
        return (stage, profile, res), (float(kimg) if kimg is not None else None), "kimg"
    if stage == "generate":
        per_class = _drawn_per_class(params, _split_counts(params.get("DATASET_DIR"), steps))
        sets = _profile_value(params, "NUM_SETS", "generate", "num_sets") or 1
        amount = per_class * int(sets) if per_class is not None else None
        return (stage, profile), amount, "image drawn per class"
    if stage == "classify":
        sets = list(params.get("TRAIN_SETS") or ["real"])
        # the learning curve's fractions (< 1) are extra real runs, smaller ones: counted as whole runs (an upper bound)
        sets += [f for f in params.get("REAL_FRACTIONS") or [] if "real" in sets and f < 1]
        n_runs = len(params.get("MODELS") or [1]) * len(params.get("SEEDS") or [0]) * len(sets)
        epochs = params.get("EPOCHS") or 1
        models = tuple(sorted(params.get("MODELS") or []))
        return (stage, params.get("IMAGE_SIZE"), models), float(n_runs * epochs), "classifier epoch (runs × epochs)"
    if stage == "data":
        return (stage,), _source_bytes(params), "MB of source images"
    return (stage,), 1.0, "step"


# ----------------------------------------------------------------------------------------------------------------
# Measured: earlier steps' state files on this machine


@functools.lru_cache(maxsize=1)
def _generate_defaults() -> dict[str, Any]:
    return stage_parameters("generate") or {}


def _generate_param(params: dict[str, Any], name: str) -> Any:
    """A generate step's parameter, the notebook's default where the study is silent."""
    if params.get(name) is not None:
        return params[name]
    return _generate_defaults().get(name)


def _drawn_per_class(params: dict[str, Any], counts: tuple[int, int] | None) -> float | None:
    """Images per class a generate step draws for one set: ``AMOUNT`` × the real train split per class (``counts``:
    train images and classes; None while unknown) or ``IMAGES_PER_CLASS``, × ``OVERSAMPLE`` with a selection (the
    pool it keeps the best of: :func:`histlib.selection.pool_counts`)."""
    amount = params.get("AMOUNT")
    if amount is not None:
        if not counts or not counts[1]:
            return None
        per_class = max(1.0, round(float(amount) * counts[0] / counts[1]))
    else:
        per_class = _profile_value(params, "IMAGES_PER_CLASS", "generate", "images_per_class")
        if not isinstance(per_class, (int, float)):
            return None
    selection = _generate_param(params, "SELECTION") or "none"
    oversample = float(_generate_param(params, "OVERSAMPLE") or 1.0) if selection != "none" else 1.0
    return float(math.ceil(per_class * oversample - 1e-9))


def _split_counts(real_dir: str | None, steps: list | None = None) -> tuple[int, int] | None:
    """``(train images, classes)`` of a prepared dataset, or, before its data step has run, counted from the source
    images that step reads (``steps``); None when neither is known."""
    rows = _manifest_rows(real_dir)
    if rows is not None:
        train = sum(row.get("split") == "train" for row in rows)
        return (train, len({row.get("class") for row in rows})) if train else None
    classes = _source_classes(real_dir, steps or [])
    train = _train_images_of(real_dir, steps or [])
    return (train, classes) if train and classes else None


def _source_classes(real_dir: str | None, steps: list) -> int:
    """Classes (sub-folders) of the source images the data step writing ``real_dir`` reads; 0 when unknown."""
    data = next((s for s in steps if s.stage == "data" and s.params.get("OUT_DIR") == real_dir), None)
    src = runs.project_path(data.params["SOURCE_DIR"]) if data and data.params.get("SOURCE_DIR") else None
    return len([d for d in src.iterdir() if d.is_dir()]) if src is not None and src.is_dir() else 0


def _stage_of(notebook: str) -> str | None:
    return next((s for s, nb in STAGES.items() if nb == notebook), None)


OVERHEAD_KEY = ("overhead",)  # seconds every step pays whatever its work (kernel start-up, report export)


def measured_rates(results_root: str | Path) -> dict[tuple, list[float]]:
    """Seconds per unit of work of every finished step under ``results_root`` (all studies), per kind of work,
    beyond the per-step overhead (``OVERHEAD_KEY``: the shortest finished step's seconds, a kernel's start-up and
    export), so a larger amount of work does not scale the start-up with it. A generate step's seconds on the real-image
    classifiers (its run's ``classifier_seconds``) are left out: they are costed apart, on the first step of each
    dataset (:func:`_generate_classifiers`)."""
    root = runs.project_path(results_root)
    found: list[tuple[tuple, float, float]] = []
    for state in sorted(root.glob("*/notebooks/.state/*.json")) if root.is_dir() else []:
        try:
            info = runs.read_json(state)
        except (OSError, ValueError):  # an unreadable state only costs the estimate this sample
            continue
        stage = _stage_of(str(info.get("notebook", "")))
        seconds = info.get("seconds")
        if info.get("status") != "finished" or stage is None or not isinstance(seconds, (int, float)):
            continue
        kind, amount, _ = work(stage, info.get("params") or {})
        if stage == "generate":  # the real-image classifiers it trained are costed apart (_generate_classifiers)
            seconds = max(float(seconds) - _classifier_seconds(info.get("params") or {}), 0.0)
        counts = info.get("runs")  # a classify step that kept some of its runs trained only the others
        if amount and isinstance(counts, dict) and counts.get("planned"):
            amount *= counts.get("trained", 0) / counts["planned"]
        if amount:
            found.append((kind, float(seconds), amount))
        images = _images_of_state(info) if stage == "classify" else None
        if images:
            found.append(((*kind, IMAGES), float(seconds), float(images)))
    if not found:
        return {}
    overhead = min(sec for _, sec, _ in found)
    out: dict[tuple, list[float]] = {OVERHEAD_KEY: [overhead]}
    for kind, sec, amount in found:
        out.setdefault(kind, []).append(max(sec - overhead, 0.0) / amount)
    return out


def _classifier_seconds(params: dict[str, Any]) -> float:
    """The seconds a finished generate step spent on real-image classifiers (training them, or waiting for another
    step training them), from its run's ``metrics.json`` (``classifier_seconds``; 0 when not recorded)."""
    run_dir = params.get("RUN_DIR")
    if not run_dir:
        return 0.0
    try:
        value = runs.read_json(runs.project_path(run_dir) / "metrics.json").get("classifier_seconds")
    except (OSError, ValueError):
        return 0.0
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else 0.0


IMAGES = "images"  # the last element of a classify kind measured per image trained (not per epoch)
IMAGES_UNIT = "image trained (runs × epochs × training images)"


def _images_of_state(info: dict[str, Any]) -> int | None:
    """Images a finished classify step trained on: recorded in its state (``runs.images``), or, for a state from
    before that was recorded, read from its planned runs' ``stats.jsonl`` as they are now (taking every planned run
    as trained by it: a step that skipped finished runs then counts too many images, a lower rate)."""
    counts = info.get("runs")
    if isinstance(counts, dict):
        return counts.get("images") if isinstance(counts.get("images"), int) else None
    params = info.get("params") or {}
    if not params.get("RUN_ROOT"):
        return None
    names = planned_runs(Step("classify", "", "", "05_classify.ipynb", params))
    return images_trained(runs.project_path(params["RUN_ROOT"]), sorted(names)) if names else None


def _count_images(folder: Path) -> int | None:
    """Image files under ``folder`` (hidden folders left out), or None without any."""
    from histlib.data.manifest import IMAGE_EXTENSIONS

    if not folder.is_dir():
        return None
    return sum(1 for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
               and not any(part.startswith(".") for part in p.relative_to(folder).parts)) or None


def _synthetic_images(step, steps: list, seed: int, real: int | None) -> int | None:
    """Generated images a classify run of ``seed`` trains on: what the generate step that writes them will make
    when it is among ``steps`` (to run: ``AMOUNT`` × the real train split, or ``IMAGES_PER_CLASS`` × classes), else
    the set on disk."""
    synth = str(step.params.get("SYNTH_DIR") or "")
    if not synth:
        return None
    gen = next((s for s in steps if s.stage == "generate" and s.params.get("RUN_DIR")
                and synth.startswith(str(s.params["RUN_DIR"]).rstrip("/") + "/")), None)
    if gen is None:
        return _count_images(classify_sets.seed_folder(runs.project_path(synth), seed))
    if gen.params.get("AMOUNT") is not None:
        return int(round(float(gen.params["AMOUNT"]) * real)) if real else None
    per_class = _profile_value(gen.params, "IMAGES_PER_CLASS", "generate", "images_per_class")
    classes = _classes(step.params.get("REAL_DIR"))
    return int(per_class) * classes if isinstance(per_class, (int, float)) and classes else None


def _manifest_rows(real_dir: str | None) -> list[dict[str, str]] | None:
    """The rows of a prepared dataset's ``manifest.csv`` (csv, not pandas: planning imports neither pandas nor
    torch), or None before the data step has written it."""
    import csv

    manifest = runs.project_path(real_dir) / "manifest.csv" if real_dir else None
    if manifest is None or not manifest.is_file():
        return None
    with open(manifest, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _classes(real_dir: str | None) -> int | None:
    rows = _manifest_rows(real_dir)
    return len({row.get("class") for row in rows}) or None if rows is not None else None


def classify_images(step, steps: list, skip: set[str] = frozenset()) -> float | None:
    """Images a classify step's planned runs train on (each run's real and generated training images × epochs),
    the runs named in ``skip`` left out; None when a training set's size is not known yet."""
    p = classify_params(step)
    planned = classify_sets.planned_runs(p.get("TRAIN_SETS") or [], p.get("MODELS") or [], p.get("SEEDS") or [],
                                         p.get("REAL_FRACTIONS") or [])
    if not planned:
        return None
    real = _train_images(step, steps)
    classes = _classes(p.get("REAL_DIR")) if p.get("REAL_PER_CLASS") or p.get("SYNTH_PER_CLASS") else None

    def capped(n: float | None, per_class) -> float | None:  # REAL_PER_CLASS / SYNTH_PER_CLASS draw at most so many
        return min(n, float(per_class) * classes) if n and per_class and classes else n

    synth_of: dict[int, float | None] = {}  # per seed, counted once
    total = 0.0
    for train_set, fraction, model, seed in planned:
        if classify_sets.run_name(train_set, model, seed, p.get("VARIANT"), fraction) in skip:
            continue
        n = 0.0
        if classify_sets.uses_real(train_set):
            if not real:
                return None
            n += capped(real, p.get("REAL_PER_CLASS")) * (fraction if fraction is not None else 1.0)
        if classify_sets.needs_synthetic(train_set):
            if seed not in synth_of:
                synth_of[seed] = capped(_synthetic_images(step, steps, seed, real), p.get("SYNTH_PER_CLASS"))
            if not synth_of[seed]:
                return None
            n += synth_of[seed]
        total += _run_images(n, p)
    return total


def _run_images(n: float, p: dict[str, Any]) -> float:
    """Images one run trains on: ``EPOCHS`` passes over its ``n`` training images, or fewer with ``max_steps`` in
    ``CONFIG_OVERRIDES`` (``max_steps`` × ``BATCH``: the training stops after that many optimiser steps)."""
    images = n * int(p.get("EPOCHS") or 1)
    max_steps = (p.get("CONFIG_OVERRIDES") or {}).get("max_steps")
    batch = p.get("BATCH") or 32  # the notebook's named parameter wins over CONFIG_OVERRIDES
    if isinstance(max_steps, int) and not isinstance(max_steps, bool) and max_steps > 0:
        images = min(images, float(max_steps) * int(batch))
    return images


# ----------------------------------------------------------------------------------------------------------------
# Probes: a few seconds of each stage's inner loop


def _timed(step: Callable[[], None], budget: float | None = None, min_iters: int = 2) -> tuple[float, int]:
    """Mean seconds of ``step`` after one warm-up call, repeated for about ``budget`` seconds (default
    :data:`PROBE_SECONDS`)."""
    budget = PROBE_SECONDS if budget is None else budget
    step()
    t0, n = time.perf_counter(), 0
    while n < min_iters or time.perf_counter() - t0 < budget:
        step()
        n += 1
    return (time.perf_counter() - t0) / n, n


def _probe_device(profile: str):
    """The device a profile trains on, or None when this machine does not have it (no probe then)."""
    import torch

    wanted = GAN_PROFILES.get(profile, {}).get("train", {}).get("device", "auto")
    if wanted == "cpu":
        return torch.device("cpu")
    return torch.device("cuda") if torch.cuda.is_available() else None


def probe_gan(profile: str, resolution: int) -> tuple[float, str] | None:
    """Seconds per kimg of full training iterations (every phase, lazy regularisers in proportion, EMA, ADA) of the
    profile's networks on random images; None when this machine lacks the profile's device."""
    import numpy as np
    import torch

    from histlib.gan.config import TrainConfig
    from histlib.gan.distributed import Dist
    from histlib.gan.phases import phases
    from histlib.gan.state import Meter, build_state

    device = _probe_device(profile)
    if device is None:
        return None
    cfg = TrainConfig.from_profile(profile, resolution=resolution, device=device.type, progress=False)
    n_classes = 4
    labels = np.arange(64) % n_classes

    class _Classes:  # what build_state reads of a dataset
        classes = [f"c{i}" for i in range(n_classes)]

    _Classes.labels = labels
    state = build_state(cfg, _Classes, n_classes, device, Dist(), None)
    schedule, meter = phases(state), Meter(device)
    real = torch.rand([cfg.batch_size, 3, resolution, resolution], device=device) * 2 - 1  # [N, 3, R, R]
    real_c = torch.as_tensor(labels[:cfg.batch_size], device=device)

    def iteration() -> None:
        for _, phase, interval in schedule:
            if state.step % interval == 0:
                phase(state, real, real_c, meter)
        state.update_ema()
        state.cur_nimg += cfg.batch_size
        state.step += 1
        state.update_ada()
        if device.type == "cuda":
            torch.cuda.synchronize()

    sec, n = _timed(iteration)
    return sec / cfg.batch_size * 1000, (f"probe: {n} training iterations of batch {cfg.batch_size} at {resolution} px "
                                         f"on {device.type} (training only: start-up, snapshots and metrics left out)")


def _train_step(model, batch: int, image_size: int, device) -> Callable[[], None]:
    """One optimiser step of ``model`` on a fixed random batch (what a classifier's epoch repeats)."""
    import torch

    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.rand([batch, 3, image_size, image_size], device=device)  # [N, 3, S, S]
    y = torch.arange(batch, device=device) % 4

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    return step


def probe_classifier(models: list[str], image_size: int, batch: int, images_per_epoch: int | None,
                     device_name: str = "auto") -> tuple[float, str] | None:
    """Seconds per classifier epoch (every model, forward and backward over ``images_per_epoch`` random images at
    ``image_size``); None when the number of training images is not known yet."""

    from histlib.classify.weights import create_classifier
    from histlib.device import resolve_device

    if not images_per_epoch:
        return None
    device = resolve_device(device_name)
    per_image = 0.0
    for name in models:
        model, _ = create_classifier(name, 4, pretrained=False)
        sec, _ = _timed(_train_step(model.to(device).train(), batch, image_size, device),
                        budget=PROBE_SECONDS / max(len(models), 1))
        per_image += sec / batch
    return per_image * images_per_epoch / len(models), (
        f"probe: a batch of {batch} at {image_size} px through {', '.join(models)} on {device.type}, × "
        f"{images_per_epoch} training images per epoch (data loading and validation left out)")


def probe_generator(profile: str, resolution: int, n_classes: int) -> tuple[float, str] | None:
    """Seconds per (image per class) of sampling with the profile's generator, for ``n_classes`` classes."""
    import torch

    from histlib.gan import checkpoint
    from histlib.gan.config import network_kwargs

    device = _probe_device(profile)
    if device is None:
        return None
    kwargs = {name: {**kw, "num_classes": n_classes, "num_fp16_res": 0}
              for name, kw in network_kwargs(profile, resolution).items()}
    G, _ = checkpoint.build_networks(kwargs, device)
    G.eval()
    batch = int(GAN_PROFILES[profile]["generate"]["batch_size"])
    z = torch.randn([batch, G.z_dim], device=device)  # [N, z_dim]
    c = torch.arange(batch, device=device) % n_classes  # [N]

    @torch.no_grad()
    def step() -> None:
        G(z, c)

    sec, _ = _timed(step)
    return sec / batch * n_classes, (f"probe: generator batches at {resolution} px on {device.type}, × {n_classes} "
                                     "classes (sampling only: the memorisation audit's and GAN metrics' feature "
                                     "passes come on top)")


def probe_decode(source: str | None) -> tuple[float, str] | None:
    """Seconds per MB of decoding a few of the source images (tiling and writing patches come on top)."""
    from PIL import Image

    root = runs.project_path(source) if source else None
    if root is None or not root.is_dir():
        return None
    files = [p for p in sorted(root.rglob("*")) if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".tif", ".tiff"}][:8]
    if not files:
        return None
    t0 = time.perf_counter()
    for f in files:
        with Image.open(f) as im:
            im.convert("RGB")
    mb = sum(f.stat().st_size for f in files) / 1e6
    return (time.perf_counter() - t0) / max(mb, 1e-6), f"probe: {len(files)} source images decoded (tiling left out)"


# ----------------------------------------------------------------------------------------------------------------
# Per step and per stage


def _train_images(step, steps: list) -> int | None:
    """Real training images of a classify step: the prepared manifest's train split, or, before the data step has
    run, the patches its tiling settings cut from the source images (headers only)."""
    return _train_images_of(step.params.get("REAL_DIR"), steps)


def _train_images_of(real: str | None, steps: list) -> int | None:
    """Train images of the prepared dataset ``real`` (as :func:`_train_images`)."""
    from histlib.data.tiling import tile_positions

    rows = _manifest_rows(real)
    if rows is not None:
        return sum(row.get("split") == "train" for row in rows) or None
    data = next((s for s in steps if s.stage == "data" and s.params.get("OUT_DIR") == real), None)
    if data is None or not data.params.get("SOURCE_DIR"):
        return None
    from PIL import Image

    root = runs.project_path(data.params["SOURCE_DIR"])
    files = [p for p in sorted(root.rglob("*")) if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".tif", ".tiff"}]
    params = {**(stage_parameters("data") or {}), **data.params}  # the notebook's defaults where the study is silent
    whole = params.get("PATCH") is None  # whole images, one per file
    patch, stride = int(params.get("PATCH") or 64), params.get("STRIDE")
    patches = 0
    for f in files[:500]:
        if whole:
            patches += 1
            continue
        with Image.open(f) as im:
            patches += len(tile_positions(*im.size, patch, stride))
    folds = int(params.get("FOLDS") or 0)  # cross-validation: one fold is the test split
    test = 1 / folds if folds else float(params.get("TEST_FRACTION") or 0)
    kept = 1 - float(params.get("VAL_FRACTION") or 0) - test
    return int(patches * len(files) / max(min(len(files), 500), 1) * kept) or None


def _probe_for(step, steps: list, kind: tuple) -> Probe | None:
    p = step.params
    profile = p.get("PROFILE", "demo")
    if step.stage in ("base_gan", "finetune") and kind[2]:
        return lambda: probe_gan(profile, int(kind[2]))
    if step.stage == "classify" and p.get("MODELS"):
        images = _train_images(step, steps)
        return lambda: probe_classifier(list(p["MODELS"]), int(p.get("IMAGE_SIZE") or 32), int(p.get("BATCH") or 32),
                                        images)
    if step.stage == "generate":
        res = _profile_value(p, "RESOLUTION", "train", "resolution")
        classes = _source_classes(p.get("DATASET_DIR"), steps)
        return (lambda: probe_generator(profile, int(res), classes)) if classes and res else None
    if step.stage == "data":
        return lambda: probe_decode(p.get("SOURCE_DIR"))
    return None


def _kept_runs(step, study) -> tuple[set[str], float]:
    """The finished runs a classify step's next execution keeps (:func:`histlib.study.steps.runs_to_keep`) and the
    share of its planned runs it trains; nothing and 1 without a study or for any other step."""
    if study is None or step.stage != "classify":
        return set(), 1.0
    planned, kept = planned_runs(step), runs_to_keep(study, step)
    return kept, (1 - len(kept) / len(planned) if planned else 1.0)


def step_estimate(step, steps: list, measured: dict[tuple, list[float]],
                  probes: dict[tuple, tuple[float, str] | None], probe: bool = True,
                  study=None) -> tuple[float | None, str]:
    """``(seconds or None, basis)`` of one step; ``probes`` caches each kind's probe result. With the ``study``, a
    classify step's finished runs that it keeps are not counted."""
    kind, amount, unit = work(step.stage, step.params, steps)
    if amount is None:
        return None, "amount of work unknown (source images not found)" if step.stage == "data" else "?"
    kept, share = _kept_runs(step, study)
    images = classify_images(step, steps, kept) if (*kind, IMAGES) in measured else None
    if images is not None:  # per image trained, where the training sets' sizes are known
        kind, amount, unit = (*kind, IMAGES), images, IMAGES_UNIT
    else:
        amount *= share
    if kind in measured:
        rates, overhead = measured[kind], measured[OVERHEAD_KEY][0]
        rate = statistics.median(rates)
        return overhead + rate * amount, (f"measured: {len(rates)} earlier step(s) on this machine, {overhead:.3g} s "
                                          f"start-up + {rate:.3g} s per {unit}")
    # base GAN and fine-tuning share a probe (the same iterations); their measured rates differ (checkpoint loading)
    key = ("gan", *kind[1:]) if step.stage in ("base_gan", "finetune") else kind
    if probe and key not in probes:
        make = _probe_for(step, steps, kind)
        try:
            probes[key] = make() if make is not None else None
        except Exception as e:  # noqa: BLE001 - a probe that cannot run costs the estimate, not the plan
            probes[key] = (math.nan, f"probe failed ({type(e).__name__}: {str(e)[:120]})")
    found = probes.get(key)
    if found is not None and math.isfinite(found[0]):
        seconds, basis = found[0] * amount, f"{found[1]}; {found[0]:.3g} s per {unit}"
        if step.stage == "generate":
            extra, why = _generate_classifiers(step, steps, probes) if probe else (0.0, "")
            seconds, basis = seconds + extra, basis + why
        return seconds, basis
    if step.stage in ("base_gan", "finetune") and kind[2] in REFERENCE_SEC_PER_KIMG:
        rate, source = REFERENCE_SEC_PER_KIMG[kind[2]]
        return rate * amount, f"published: {rate:.3g} s/kimg, {source}; at most KIMG (early stopping may end sooner)"
    if found is not None:
        return None, found[1]
    if step.stage == "analysis":
        return None, "nothing measured yet (reads metrics files only: seconds)"
    if not probe:
        why = "probes off (--no-probe)"
    elif step.stage in ("base_gan", "finetune", "generate"):
        why = "no probe without the profile's device on this machine"
    else:
        why = "no probe for this stage" if step.stage != "data" else "no source images to probe"
    return None, f"nothing measured on this machine yet; {why}"


def _classifiers_to_train(step, steps: list) -> list[tuple[str, Any]]:
    """``(what, FidelityConfig)`` of the real-image classifiers a generate step trains: the fidelity classifier
    (class fidelity, and the GAN metrics' domain features) and the selection classifier of every selection (its
    probabilities score ``fidelity``, ``agree`` and ``relabel``, its features ``realism``).
    Both are cached per dataset (:func:`histlib.fidelity.fidelity_classifier`), so each is trained by the first
    generate step of the dataset in ``steps`` that wants it, and not at all when the cache already holds it."""
    from histlib import fidelity, selection

    def wanted(p: dict[str, Any]) -> list[str]:
        out = []
        if _generate_param(p, "FIDELITY") or (_generate_param(p, "METRICS")
                                              and _generate_param(p, "EXTRACTOR") in ("auto", "fidelity")):
            out.append("fidelity classifier")
        if (_generate_param(p, "SELECTION") or "none") != "none":  # its probabilities, or its features (realism)
            out.append("selection classifier")
        return out

    p = step.params
    data_dir = p.get("DATASET_DIR")
    if not data_dir:
        return []
    mine = wanted(p)
    others = [s for s in steps if s.stage == "generate" and s.params.get("DATASET_DIR") == data_dir]
    # each classifier is paid by the first step of the dataset that wants it
    mine = [w for w in mine if next((s for s in others if w in wanted(s.params)), step) is step]
    configs = {"fidelity classifier": fidelity.FidelityConfig, "selection classifier": selection.selector_config}
    res = int(_profile_value(p, "RESOLUTION", "train", "resolution") or 32)
    cache = Path(str(p.get("RUN_DIR") or "")).parent.parent / ".fidelity"
    out = []
    for what, cfg in ((w, configs[w]()) for w in mine):
        cfg.image_size = cfg.image_size or res
        try:
            done = (fidelity.classifier_dir(data_dir, cfg, cache) / "checkpoints" / "best.pt").is_file()
        except (FileNotFoundError, OSError):  # not prepared yet: nothing can be cached
            done = False
        if not done:
            out.append((what, cfg))
    return out


def _generate_classifiers(step, steps: list, probes: dict[tuple, tuple[float, str] | None]) -> tuple[float, str]:
    """Seconds a generate step spends training its real-image classifiers (:func:`_classifiers_to_train`), by a probe
    of their batches over the real train split's epochs (at most ``max_steps`` optimiser steps), and the words that
    say so."""
    todo = _classifiers_to_train(step, steps)
    counts = _split_counts(step.params.get("DATASET_DIR"), steps)
    if not todo:
        return 0.0, "; its real-image classifiers cached or trained by another step"
    if not counts:
        return 0.0, "; the real-image classifiers it trains left out (train split unknown)"
    seconds = 0.0
    for _, cfg in todo:
        key = ("fidelity classifier", cfg.model, cfg.image_size, cfg.batch_size)
        if key not in probes:
            try:
                probes[key] = probe_classifier([cfg.model], int(cfg.image_size), int(cfg.batch_size), 1)
            except Exception as e:  # noqa: BLE001 - a probe that cannot run costs the estimate, not the plan
                probes[key] = (math.nan, f"probe failed ({type(e).__name__})")
        per_image = (probes[key] or (math.nan, ""))[0]
        if not math.isfinite(per_image):
            return 0.0, "; the real-image classifiers it trains left out (no probe)"
        images = min(cfg.epochs * counts[0], cfg.max_steps * cfg.batch_size)
        seconds += per_image * images
    names = " and ".join(what for what, _ in todo)
    return seconds, f"; + the {names} it trains on first use ({todo[0][1].model} on the real train split, probed)"


def estimate(steps: list, results_root: str | Path = "results", probe: bool = True,
             study=None) -> list[dict[str, Any]]:
    """Per stage: ``{stage, steps, seconds (None when unknown), basis}``, in plan order.

    Args:
        steps: the study's planned steps.
        results_root: where earlier studies' step states are looked for.
        probe: run a few-second probe for the kinds of work nothing was measured for.
        study: the study the steps belong to: a classify step's finished runs that its next execution keeps are not
            counted (without it, every planned run is).
    """
    measured = measured_rates(results_root)
    probes: dict[tuple, tuple[float, str] | None] = {}
    rows: dict[str, dict[str, Any]] = {}
    for step in steps:
        row = rows.setdefault(step.stage, {"stage": step.stage, "steps": 0, "seconds": 0.0, "basis": []})
        row["steps"] += 1
        seconds, basis = step_estimate(step, steps, measured, probes, probe, study)
        row["seconds"] = None if seconds is None or row["seconds"] is None else row["seconds"] + seconds
        if basis not in row["basis"]:
            row["basis"].append(basis)
    return [{**r, "basis": "; ".join(r["basis"])} for r in rows.values()]


def format_seconds(seconds: float | None) -> str:
    """``"?"``, ``"40 s"``, ``"3.5 min"``, ``"2.1 h"``."""
    if seconds is None:
        return "?"
    if seconds < 1:
        return "< 1 s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"
