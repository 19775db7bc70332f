"""Test accuracy of a study's cached real-image classifiers: the fidelity classifier (seed 0) and the selection
classifier (``histlib.selection.SELECTOR_SEED``) of each dataset, beside nothing else.

Both are trained once per real dataset on its train split (ResNet-18, ``histlib.fidelity.FidelityConfig``) and
cached under ``results/<study>/<dataset>/.fidelity/``. They are never scored on the test split by the pipeline;
this script does, so a study's classifier rows can be read against them. That matters for the ``relabel``
selection: a synthetic set labelled by the selection classifier carries what that classifier learnt from the real
images, so "synthetic-only level with real" there should be read beside the selector's own test accuracy.

Prints, per dataset and pooled over the datasets given (the folds of a cross-validated study hold every image once
as a test image), each classifier's accuracy and balanced accuracy on the test split; ``--json`` writes the same.

Usage (from the project root)::

    python benchmarks/real_classifiers.py results/dev_lung3_cv_relabel --datasets 'dev_lung3_fold*'
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from sklearn.metrics import balanced_accuracy_score  # noqa: E402

from histlib import runs  # noqa: E402
from histlib.fidelity import FidelityClassifier  # noqa: E402
from histlib.metrics.folders import image_dataset  # noqa: E402


def _test_images(real_dir: Path) -> tuple[torch.Tensor, np.ndarray]:
    if not (pd.read_csv(real_dir / "manifest.csv")["split"] == "test").any():
        raise ValueError(f"{real_dir / 'manifest.csv'}: no test split to score on")
    ds = image_dataset(real_dir, "test", None)
    images = torch.stack([ds[i][0] for i in range(len(ds))])
    return images, np.array(ds.classes)[ds.labels]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("study_dir", help="results/<study>")
    ap.add_argument("--datasets", default="*", help="glob of the dataset folders under the study (default: all)")
    ap.add_argument("--json", default=None, help="also write the rows here")
    args = ap.parse_args(argv)
    study = runs.project_path(args.study_dir)
    rows, pooled = [], {}
    for ds_dir in sorted(p for p in study.glob(args.datasets) if (p / ".fidelity").is_dir()):
        for ckpt in sorted((ds_dir / ".fidelity").glob("*/checkpoints/best.pt")):
            run = ckpt.parent.parent
            settings = runs.read_json(run / "fidelity.json")
            real_dir = runs.project_path(settings["real_dir"])
            images, truth = _test_images(real_dir)
            clf = FidelityClassifier(ckpt)
            pred = np.array(clf.classes)[clf.predict(images)]
            seed = settings["fidelity_config"]["seed"]
            rows.append({"dataset": ds_dir.name, "seed": seed, "model": settings["fidelity_config"]["model"],
                         "n_test": len(truth), "accuracy": 100 * float((pred == truth).mean()),
                         "balanced_accuracy": 100 * float(balanced_accuracy_score(truth, pred))})
            t, p = pooled.setdefault(seed, ([], []))
            t.extend(truth)
            p.extend(pred)
    if not rows:
        print(f"{study}: no cached real-image classifiers (.fidelity/) under datasets {args.datasets!r}")
        return 1
    rows.sort(key=lambda r: (r["dataset"], r["seed"]))
    for seed, (t, p) in sorted(pooled.items()):
        t, p = np.array(t), np.array(p)
        rows.append({"dataset": "pooled", "seed": seed, "model": rows[0]["model"], "n_test": len(t),
                     "accuracy": 100 * float((t == p).mean()), "balanced_accuracy": 100 * float(
                         balanced_accuracy_score(t, p))})
    table = pd.DataFrame(rows)
    print(f"device: cpu; study {args.study_dir}; seed 0 = fidelity classifier, seed 1 = selection classifier")
    print(table.round(1).to_string(index=False))
    if args.json:
        runs.atomic_write_text(args.json, json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
