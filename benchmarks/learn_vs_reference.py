"""Does histlib's GAN learn as well as the reference StyleGAN2-ADA per image seen? Same data, architecture, budget.

Both sides train in their own subprocess, from the same seed, on the same prepared dataset (the train split, read by
histlib's loader at ``--res``), at the same architecture (checked as in ``vs_reference.py``), batch, learning rates,
R1 / path-length schedule, EMA (with ramp-up) and augmentation probability (fixed; ``--p 0`` by default, which is
where ADA stayed in our 40 kimg base runs on this data). Ours trains as configured by the profile (demo: D2D-CE on D
and a projection term; ``--set cond_lambda_g=0.25 --set 'D_kwargs={"cond_projection": false}'`` gives the profile
before issue 21, D2D-CE on both networks and no projection); the reference with its own conditioning (projection
discriminator) and its default loss settings, style mixing 0.9 and path length 2 (``--ref-set style_mixing_prob=0
--ref-set pl_weight=0`` gives the loss of its 32 px ``cifar`` configuration; that configuration's other changes, D
without residual skips, R1 γ 0.01, batch 64, are not made here). At each ``--eval-kimg`` point ``G_ema`` draws
``--per-class`` images per class with fixed latents and seeded *random* synthesis noise, as in training and as the
generate stage writes a set (the constant noise map gives images the generator was never trained to draw: with it,
recall fell to 0.00 where random noise gave 0.49 on one lung3 generator, docs/results.md "One definition of the GAN
metrics").

Scoring, the same for both and the same as the generate stage's (docs/results.md, "One definition of the GAN
metrics"), with one fixed feature extractor (Inception weights are not on every machine): the dataset's
class-fidelity classifier (``histlib.fidelity``, trained once on its train split and cached), whose pre-logit
features give FID, precision / recall (k = 3), density / coverage (k = 5), pooled over classes (``all``) and per
class, against the real train images at ``--res`` (``histlib.metrics.per_class_metrics``; ``n_real`` / ``n_fake``
printed beside), and whose predictions give class agreement. A grid of both sides' last
samples is written beside the JSON.

Usage (from the project root)::

    python benchmarks/learn_vs_reference.py --reference-dir REF --data data/prepared/crc5 --kimg 20 \\
        --out results/learn_vs_reference
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def _loader(data: str, res: int, batch: int, seed: int):
    """An endless stream of ``(images in [-1, 1], int labels)`` batches of the train split, and its labels."""
    import torch

    from histlib.data.dataset import ImageDataset, to_uint8_tensor

    ds = ImageDataset(data, split="train", transform=to_uint8_tensor, resolution=res)
    gen = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, drop_last=True, generator=gen,
                                         num_workers=0)

    def stream():
        while True:
            yield from loader

    it = stream()

    def next_batch():
        x, c = next(it)
        return x.float() / 127.5 - 1, c.long()

    return next_batch, list(ds.labels), list(ds.classes)


def _overrides(pairs: list[str], flag: str = "--set") -> dict:
    """``KEY=JSON`` pairs of ``--set`` (or ``flag``) → overrides (a bad pair is named)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"{flag} {pair!r}: expected KEY=VALUE (VALUE in JSON)")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError as e:
            raise SystemExit(f"{flag} {pair!r}: VALUE is not JSON ({e})") from None
    return out


def child(side: str, args) -> int:
    import torch
    from vs_reference import _arch, _ours, _reference

    from histlib.data.dataset import to_uint8
    from histlib.gan.config import PROFILES

    torch.manual_seed(args.seed)
    a = _arch(args.res, "cpu")
    data, labels, classes = _loader(args.data, args.res, args.batch, args.seed)
    train = PROFILES[a["profile"]]["train"]
    overrides = _overrides(args.set) if side == "ours" else _overrides(args.ref_set, "--ref-set")
    if side == "ours":
        iteration, counts, sample = _ours(a, args.batch, len(classes), "cpu", "ref", data=data, p=args.p,
                                          cond_lambda=args.cond_lambda, overrides=overrides,
                                          seed=args.seed)
    else:
        iteration, counts, sample = _reference(a, args.batch, len(classes), "cpu", "ref", str(args.reference_dir),
                                               data=data, p=args.p, ema_kimg=train["ema_kimg"],
                                               ema_rampup=train["ema_rampup"], labels=labels,
                                               loss_overrides=overrides)
    out = Path(args.out) / side
    out.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(1234)
    z = torch.randn(args.per_class * len(classes), a["z_dim"], generator=gen)
    c = torch.arange(len(classes)).repeat_interleave(args.per_class)
    points = sorted(set(args.eval_kimg + [args.kimg]))
    nimg, t0, log = 0, time.time(), []
    for point in points:
        while nimg < point * 1000:
            iteration()
            nimg += args.batch
        for mode, folder in (("random", out), ("const", out / "const")):
            # also the constant noise map (how both sides were scored before), in OUT/<side>/const, to be scored
            # with --score-runs LABEL=OUT/<side>/const
            chunks = []
            for i in range(0, len(z), 256):
                # the same noise at every evaluation point, drawn from its own stream (training's RNG untouched)
                with torch.random.fork_rng():
                    torch.manual_seed(4321 + i)
                    chunks.append(sample(z[i:i + 256], c[i:i + 256], noise_mode=mode))
            folder.mkdir(exist_ok=True)
            torch.save({"images": to_uint8(torch.cat(chunks)), "labels": c, "classes": classes},
                       folder / f"samples-{point:g}kimg.pt")
        log.append({"kimg": point, "seconds": round(time.time() - t0, 1)})
        print(json.dumps(log[-1]), flush=True)
    (out / "run.json").write_text(json.dumps({"side": side, "params": counts, "arch": a, "log": log,
                                              "cond_lambda": args.cond_lambda if side == "ours" else None,
                                              "overrides": overrides,
                                              "img_per_s": round(nimg / (time.time() - t0), 2)}, indent=1))
    return 0


def _scorer(data: str, res: int, cfg=None, cache_root=None):
    """``(extractor name, fidelity val balanced accuracy, score(folder) -> rows)`` for one prepared dataset."""
    import numpy as np
    import torch

    from histlib import fidelity
    from histlib.data.dataset import ImageDataset, to_uint8_tensor
    from histlib.metrics import get_extractor, per_class_metrics

    ckpt = fidelity.fidelity_classifier(data, res, cfg=cfg, cache_root=cache_root)  # cached
    clf = fidelity.FidelityClassifier(ckpt)
    ext = get_extractor(f"domain:{ckpt}", device="cpu")
    ds = ImageDataset(data, split="train", transform=to_uint8_tensor, resolution=res)
    real = torch.stack([ds[i][0] for i in range(len(ds))])
    real_labels = np.asarray(ds.labels)
    real_feats = ext(real).numpy()

    def score_folder(folder: Path) -> list[dict]:
        rows = []
        for f in sorted(folder.glob("samples-*kimg.pt"), key=lambda p: float(p.stem[8:-4])):
            s = torch.load(f)
            feats = ext(s["images"]).numpy()
            table = per_class_metrics(real_feats, feats, real_labels, s["labels"].numpy(), s["classes"])
            seen = clf.predict(s["images"])
            agree = fidelity.agreement(s["labels"].numpy(), seen, s["classes"])
            rows.append({"kimg": float(f.stem[8:-4]), "agreement": agree["agreement"],
                         "table": table.round(4).reset_index().to_dict(orient="records")})
        return rows

    return ext.name, clf.val_balanced_accuracy, score_folder


def score(args, cfg=None, cache_root=None) -> dict:
    """Scores every saved sample of both sides (``cfg``, ``cache_root``: the fidelity classifier's settings)."""
    name, val_bacc, score_folder = _scorer(args.data, args.res, cfg, cache_root)
    results = {"extractor": name, "fidelity_val_balanced_accuracy": val_bacc, "sides": {}}
    for side in ("ours", "reference"):
        run = json.loads((Path(args.out) / side / "run.json").read_text())
        results["sides"][side] = {"img_per_s": run["img_per_s"], "params": run["params"],
                                  "points": score_folder(Path(args.out) / side)}
    return results


METRICS = ("agreement", "fid", "precision", "recall", "density", "coverage")


def score_runs(specs: list[str], data: str, res: int, cfg=None, cache_root=None) -> dict:
    """Scores finished runs grouped by label (``LABEL=SIDE_DIR`` each, one per seed) and summarises each label.

    Returns ``{"extractor", "fidelity_val_balanced_accuracy", "labels": {label: {"runs": [...], "summary":
    [{kimg, n, <metric>_mean, <metric>_std, ...}]}}}``; a kimg point enters a label's summary only where every run
    of the label reached it (a side still training is scored on the points it has saved).
    """
    import numpy as np

    groups: dict[str, list[Path]] = {}
    for spec in specs:
        label, sep, folder = spec.partition("=")
        if not sep or not any(Path(folder).glob("samples-*kimg.pt")):
            raise SystemExit(f"--score-runs {spec!r}: expected LABEL=DIR with DIR/samples-*kimg.pt (a side's samples)")
        groups.setdefault(label, []).append(Path(folder))
    name, val_bacc, score_folder = _scorer(data, res, cfg, cache_root)
    out = {"extractor": name, "fidelity_val_balanced_accuracy": val_bacc, "labels": {}}
    for label, folders in groups.items():
        runs = []
        for folder in folders:
            # a side still training has no run.json yet: its evaluation points so far are scored
            run = json.loads((folder / "run.json").read_text()) if (folder / "run.json").is_file() else {}
            runs.append({"dir": folder.as_posix(), "finished": bool(run), "overrides": run.get("overrides"),
                         "cond_lambda": run.get("cond_lambda"), "points": score_folder(folder)})
        kimgs = sorted(set.intersection(*(set(p["kimg"] for p in r["points"]) for r in runs)))
        summary = []
        for k in kimgs:
            vals = {m: [] for m in METRICS}
            for r in runs:
                pt = next(p for p in r["points"] if p["kimg"] == k)
                allrow = next(t for t in pt["table"] if t["class"] == "all")
                vals["agreement"].append(pt["agreement"])
                for m in METRICS[1:]:
                    vals[m].append(allrow[m])
            row = {"kimg": k, "n": len(runs)}
            for m, v in vals.items():
                row[f"{m}_mean"] = float(np.mean(v))
                row[f"{m}_std"] = float(np.std(v, ddof=1)) if len(v) > 1 else None
                row[f"{m}_runs"] = [float(x) for x in v]
            summary.append(row)
        out["labels"][label] = {"runs": runs, "summary": summary}
    return out


def print_runs(res: dict) -> None:
    """The summary of :func:`score_runs` as a table (mean ± sd over the runs of each label)."""
    print(f"features: {res['extractor']}; fidelity classifier val balanced accuracy "
          f"{res['fidelity_val_balanced_accuracy']:.3f}")
    print(f"{'label':<16} {'kimg':>5} {'n':>2} " + " ".join(f"{m[:9]:>15}" for m in METRICS))
    for label, r in res["labels"].items():
        for row in r["summary"]:
            cells = []
            for m in METRICS:
                sd = row[f"{m}_std"]
                cells.append(f"{row[f'{m}_mean']:.3f}" + (f" ± {sd:.3f}" if sd is not None else "        "))
            print(f"{label:<16} {row['kimg']:>5g} {row['n']:>2} " + " ".join(f"{c:>15}" for c in cells))


def grid(args, path: Path) -> None:
    import torch
    from PIL import Image

    rows = []
    for side in ("ours", "reference"):
        last = sorted((Path(args.out) / side).glob("samples-*kimg.pt"), key=lambda p: float(p.stem[8:-4]))[-1]
        s = torch.load(last)
        k = len(s["classes"])
        per = len(s["labels"]) // k
        pick = torch.cat([torch.arange(i * per, i * per + 8) for i in range(k)])
        rows.append(s["images"][pick].view(k, 8, 3, args.res, args.res))
    both = torch.cat(rows, dim=1)  # [k, 16, 3, H, W]: ours left, reference right
    k = both.shape[0]
    img = both.permute(0, 3, 1, 4, 2).reshape(k * args.res, 16 * args.res, 3).numpy()
    Image.fromarray(img).save(path)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reference-dir", type=Path, required=True)
    p.add_argument("--data", required=True, help="a prepared dataset (train split used)")
    p.add_argument("--res", type=int, default=32)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--kimg", type=float, default=20)
    p.add_argument("--eval-kimg", type=float, nargs="*", default=[5, 10])
    p.add_argument("--per-class", type=int, default=300)
    p.add_argument("--p", type=float, default=0.0, help="augmentation probability, fixed, both sides")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="results/learn_vs_reference")
    p.add_argument("--cond-lambda", type=float, default=None,
                   help="ours: weight of the D2D-CE conditional loss (default: the profile's; 0: unconditional loss)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                   help='ours: a TrainConfig override, the settings shared with the reference side (e.g. r1_gamma) '
                        'included, e.g. --set \'D_kwargs={"cond_projection": true}\' (repeatable)')
    p.add_argument("--ref-set", action="append", default=[], metavar="KEY=JSON",
                   help="reference: a loss setting, style_mixing_prob, pl_weight or r1_gamma (default: its own "
                        "0.9, 2 and the shared R1 γ; its 32 px 'cifar' configuration sets the first two to 0), or "
                        "its learning rate lr (default 0.0025), e.g. --ref-set style_mixing_prob=0 (repeatable)")
    p.add_argument("--sides", nargs="*", default=["ours", "reference"], help="sides to train (none: score only)")
    p.add_argument("--score-runs", nargs="+", metavar="LABEL=DIR", default=None,
                   help="score finished sides only (DIR = OUT/ours or OUT/reference; one per seed, same LABEL "
                        "pooled), write OUT/runs.json and print mean ± sd per label")
    p.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._child:
        return child(args._child, args)
    if args.score_runs:
        res = score_runs(args.score_runs, args.data, args.res)
        Path(args.out).mkdir(parents=True, exist_ok=True)
        Path(args.out, "runs.json").write_text(json.dumps(res, indent=1))
        print_runs(res)
        return 0
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for side in args.sides:
        cmd = [sys.executable, __file__, *sys.argv[1:], "--_child", side]
        print(f"training {side} ...", flush=True)
        subprocess.run(cmd, check=True, env=env, cwd=ROOT)
    res = score(args)
    Path(args.out, "learn.json").write_text(json.dumps(res, indent=1))
    grid(args, Path(args.out) / "grid.png")
    print(f"\nfeatures: {res['extractor']}; fidelity classifier val balanced accuracy "
          f"{res['fidelity_val_balanced_accuracy']:.3f}")
    print(f"{'side':<10} {'kimg':>5} {'agree':>6} {'FID':>7} {'P':>6} {'R':>6} {'D':>6} {'C':>6} {'n_real':>6} "
          f"{'n_fake':>6}   per-class R")
    for side, r in res["sides"].items():
        for pt in r["points"]:
            allrow = next(t for t in pt["table"] if t["class"] == "all")
            per = " ".join(f"{t['recall']:.2f}" for t in pt["table"] if t["class"] != "all")
            print(f"{side:<10} {pt['kimg']:>5g} {pt['agreement']:>6.3f} {allrow['fid']:>7.2f} "
                  f"{allrow['precision']:>6.3f} {allrow['recall']:>6.3f} {allrow['density']:>6.3f} "
                  f"{allrow['coverage']:>6.3f} {allrow['n_real']:>6} {allrow['n_fake']:>6}   {per}")
    print(f"grid (rows: classes; left 8 ours, right 8 reference): {Path(args.out) / 'grid.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
