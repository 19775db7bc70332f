"""Class fidelity after transfer: each fine-tuning variant, several seeds, from one base GAN, on one target.

Item 2's second bar of issue 21 (docs/results.md §2, "Class fidelity after transfer ..."). Each run is what notebook 03
does for its variant (``TrainConfig.from_profile(profile, stage='finetune', ...)``, the base checkpoint as
``resume_from`` unless the variant is ``scratch``, the variant's frozen blocks, ``--set`` overrides on top), then its
final ``G_ema`` draws ``--per-class`` images per class (random synthesis noise, fixed latents;
``histlib.fidelity.generator_fidelity``) and the target's fidelity classifier (the one a study's generate stage uses,
trained on first use and cached) says which class each looks like. A finished run (its ``fidelity.json``) is not run
again, so two processes can share the grid (``--variants`` / ``--seeds`` subsets, the same ``--out``) and a stopped
grid resumes.

Prints, per variant: agreement per seed, the mean, and in brackets how many images of the most confused class pair were
drawn as the other class; writes ``OUT/transfer.json``.

Usage (from the project root)::

    python benchmarks/transfer_fidelity.py --base results/dev_real/dev_crc5/base_gan/default \\
        --data data/prepared/dev_lung3 --out results/transfer_fidelity --seeds 0 1 2 \\
        --set lr_g=0.005 --set lr_d=0.005
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from learn_vs_reference import _overrides  # noqa: E402

DEFAULT_VARIANTS = ["scratch", "pretrained", "freeze_g2"]


def run_one(args, variant: str, seed: int, overrides: dict) -> dict:
    """Fine-tunes one variant at one seed (skipped when its ``fidelity.json`` exists) → its fidelity result."""
    from histlib import fidelity, runs
    from histlib.gan.checkpoint import load_generator
    from histlib.gan.config import TrainConfig
    from histlib.gan.launch import train_gan
    from histlib.study.spec import VARIANTS

    run_dir = Path(args.out) / f"{variant}-s{seed}"
    done = run_dir / "fidelity.json"
    if done.is_file():
        return runs.read_json(done)
    freeze_d, freeze_g, pretrained = VARIANTS[variant]
    cfg = TrainConfig.from_profile(args.profile, stage="finetune", data_dir=str(args.data), resolution=args.res,
                                   kimg=args.kimg, seed=seed, resume_from=str(args.base) if pretrained else None,
                                   freeze_d=freeze_d, freeze_g=freeze_g, **overrides)
    t0 = time.time()
    train_gan(cfg, run_dir)
    seconds = time.time() - t0
    G, info = load_generator(run_dir, "cpu")
    ckpt = fidelity.fidelity_classifier(args.data, int(info["resolution"]), cache_root=args.fidelity_cache)
    result = fidelity.generator_fidelity(G, info["classes"], fidelity.FidelityClassifier(ckpt),
                                         per_class=args.per_class, seed=0)
    result.update({"variant": variant, "seed": seed, "overrides": overrides, "train_seconds": round(seconds, 1)})
    runs.write_json(done, result)  # written last: its presence marks the run finished
    return result


def worst_pair(result: dict) -> tuple[str, str, int]:
    """``(asked, seen, count)`` of the largest off-diagonal cell of a fidelity result's confusion matrix."""
    cm, classes = result["confusion_matrix"], result["classes"]
    cells = [(cm[i][j], i, j) for i in range(len(cm)) for j in range(len(cm)) if i != j]
    n, i, j = max(cells) if cells else (0, 0, 0)
    return classes[i], classes[j], int(n)


def table(results: list[dict], variants: list[str], seeds: list[int]) -> str:
    """A markdown table: agreement per seed (most confused pair's count in brackets) and the mean per variant."""
    by = {(r["variant"], r["seed"]): r for r in results}
    lines = ["| variant | " + " | ".join(f"seed {s}" for s in seeds) + " | mean |",
             "|---" * (len(seeds) + 2) + "|"]
    for v in variants:
        cells, vals = [], []
        for s in seeds:
            r = by.get((v, s))
            if r is None:
                cells.append("—")
                continue
            asked, seen, n = worst_pair(r)
            cells.append(f"{r['agreement']:.3f} ({n} {asked}→{seen})")
            vals.append(r["agreement"])
        mean = f"{sum(vals) / len(vals):.3f}" if vals else "—"
        lines.append(f"| {v} | " + " | ".join(cells) + f" | {mean} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from histlib import runs
    from histlib.study.spec import VARIANTS

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--base", type=Path, required=True, help="the base GAN's run directory or checkpoint")
    p.add_argument("--data", type=Path, required=True, help="the prepared target dataset (train split trains)")
    p.add_argument("--out", type=Path, default=Path("results/transfer_fidelity"))
    p.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, help=f"of {sorted(VARIANTS)}")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--profile", default="demo")
    p.add_argument("--kimg", type=float, default=8)
    p.add_argument("--res", type=int, default=32)
    p.add_argument("--per-class", type=int, default=300)
    p.add_argument("--fidelity-cache", type=Path, default=None,
                   help="parent of the fidelity classifier's cache folder (default: the project's results/.fidelity)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                   help="a TrainConfig override for every run, scratch included, e.g. --set lr_g=0.005 (repeatable)")
    args = p.parse_args(argv)
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        p.error(f"--variants {unknown}: expected names of {sorted(VARIANTS)}")
    for flag, path in (("--base", args.base), ("--data", args.data)):
        if not path.exists():
            p.error(f"{flag} {path}: not found")
    overrides = _overrides(args.set)
    results = [run_one(args, v, s, overrides) for v in args.variants for s in args.seeds]
    finished = [runs.read_json(f) for f in sorted(args.out.glob("*-s*/fidelity.json"))]  # this process's and others'
    runs.write_json(args.out / "transfer.json", {"base": str(args.base), "data": str(args.data), "runs": finished})
    variants = [v for v in VARIANTS if any(r["variant"] == v for r in finished)]
    seeds = sorted({r["seed"] for r in finished})
    print(f"class fidelity of {args.per_class} images per class, fidelity classifier val balanced accuracy "
          f"{results[0]['classifier_val_balanced_accuracy']:.3f}")
    print(table(finished, variants, seeds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
