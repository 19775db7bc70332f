"""The index page's GAN section, one block per fine-tuned variant (docs/design.md, "Reports and runs"): real and
generated images side by side per class (class names on the rows), the class fidelity beside the judging classifier's
own balanced accuracy on real images, the GAN metrics as a table (3 significant digits, with n), the class match of a
fine-tuned variant (target class ← base class with its similarity, flagged when it looks arbitrary) and the training
curves.

Everything is read from the run folders; the only files written are the curves' PNGs under
``<study>/index_files/`` (rebuilt when a run's ``stats.jsonl`` is newer), so the page stays one self-contained file
plus relative links.
"""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from histlib import runs
from histlib.gan.finetune_report import read_finetune_report

GRID_PAD = 2  # histlib.gan.plots.make_grid's padding between tiles
SCALE = 2  # tiles are tiny (32 px in the demo): shown twice their size, pixelated
# A class match is flagged when another base class is nearly as similar (margin below MARGIN) or the similarity
# itself is low (below LOW): the start it gives is then no better than another, and the names may not correspond.
MARGIN = 0.05
LOW = 0.5
GAN_COLUMNS = ("n_real", "n_fake", "fid", "precision", "recall", "density", "coverage")


def _esc(x: Any) -> str:
    return html.escape(str(x))


def _rel(path: Path, root: Path) -> str:
    return Path(os.path.relpath(path, root)).as_posix()


def _classes(run: Path) -> list[str]:
    """The run's class names: from ``finetune.json`` (written when it starts), else from ``metrics.json``."""
    info = read_finetune_report(run) or {}
    if not info.get("classes") and (run / "metrics.json").is_file():
        info = runs.read_json(run / "metrics.json")
    return [str(c) for c in info.get("classes") or []]


def grids_html(root: Path, run: Path) -> str:
    """A table with one row per class: the class name, a row of real images, a row of generated ones (the same
    latents in every row, ``G_ema`` at the last snapshot)."""
    from PIL import Image

    images = run / "images"
    pngs = [(images / n, label) for n, label in (("reals.png", "real"), ("grid-latest.png", "generated"))
            if (images / n).is_file()]
    classes = _classes(run)
    if not pngs:
        return "<p class='muted'>no images yet</p>"
    if not classes:  # class names unknown: the two grids whole, one row per class
        return "".join(f"<figure><img src='{_esc(_rel(png, root))}' alt='{label}'><figcaption>{label}; one row per "
                       "class</figcaption></figure>" for png, label in pngs)
    head = "".join(f"<th>{label}</th>" for _, label in pngs)
    rows = []
    sizes = {}
    for png, _ in pngs:
        with Image.open(png) as im:
            sizes[png] = im.size
    for r, name in enumerate(classes):
        cells = []
        for png, label in pngs:
            width, height = sizes[png]
            step = (height - GRID_PAD) / len(classes)  # tile height + padding
            cells.append(f"<td><div class='gridrow' style='height:{(step - GRID_PAD) * SCALE:.0f}px;"
                         f"width:{(width - 2 * GRID_PAD) * SCALE}px'><img src='{_esc(_rel(png, root))}' "
                         f"alt='{_esc(label)} {_esc(name)}' style='width:{width * SCALE}px;margin:"
                         f"-{(GRID_PAD + r * step) * SCALE:.0f}px 0 0 -{GRID_PAD * SCALE}px'></div></td>")
        rows.append(f"<tr><th>{_esc(name)}</th>{''.join(cells)}</tr>")
    return f"<table class='classgrid'><tr><th>class</th>{head}</tr>{''.join(rows)}</table>"


def fidelity_html(m: pd.Series) -> str:
    """The class fidelity of a generated set with the judge's own score on real images beside it."""
    if pd.isna(m.get("fidelity/agreement", np.nan)):
        return ""
    judge = m.get("fidelity/classifier_val_balanced_accuracy")
    judged = (f"; judged by a classifier ({_esc(m.get('fidelity/classifier', 'trained on the real train split'))}) "
              f"whose own balanced accuracy on real validation images is {100 * judge:.1f} %"
              if pd.notna(judge) else "; the judging classifier's own accuracy on real images was not recorded")
    n = m.get("fidelity/n")
    return (f"<p>Class fidelity: {100 * m['fidelity/agreement']:.1f} % of "
            f"{int(n) if pd.notna(n) else '?'} generated images seen as the class asked for (chance "
            f"{100 * m.get('fidelity/chance', np.nan):.1f} %){judged}.</p>")


def gan_metrics_html(m: pd.Series) -> str:
    """The GAN metrics of a generated set, one row per feature extractor, 3 significant digits, with n."""
    extractors = sorted({c.split("/")[0] for c in m.index if str(c).endswith("/fid") and "/per_class/" not in c
                         and pd.notna(m.get(c))})
    if not extractors:
        reason = m.get("metrics_skipped")
        return f"<p>GAN metrics skipped: {_esc(reason)}</p>" if isinstance(reason, str) else ""
    head = "".join(f"<th>{c}</th>" for c in GAN_COLUMNS)
    rows = []
    for ext in extractors:
        cells = []
        for c in GAN_COLUMNS:
            v = m.get(f"{ext}/{c}")
            cells.append("—" if v is None or pd.isna(v) else (f"{int(v)}" if c.startswith("n_") else f"{v:.3g}"))
        rows.append(f"<tr><td>{_esc(ext)}</td>{''.join(f'<td>{c}</td>' for c in cells)}</tr>")
    note = (" <i>random-test</i> features come from an untrained network: a plumbing check, not image quality."
            if any(e.startswith("random-test") for e in extractors) else "")
    return (f"<table><caption>GAN metrics of the generated set against the real train split (features named in the "
            f"first column).{note}</caption><tr><th>features</th>{head}</tr>{''.join(rows)}</table>")


def class_match_table(run: str | os.PathLike) -> pd.DataFrame:
    """Per target class: the base class it started from, their similarity in the base discriminator's embedding,
    the next most similar base class and the margin, ``how`` the start was chosen (``set``: by hand,
    ``TrainConfig.class_map``; ``matched``: by similarity) and, for a matched class, a flag when the match looks
    arbitrary. Empty when the classes were loaded as they were (same classes) or the variant was trained from
    scratch."""
    info = read_finetune_report(run) or {}
    init = info.get("class_init") or {}
    sims, match = init.get("similarity"), init.get("match")
    classes, base = info.get("classes") or [], info.get("base_classes") or []
    if not sims or not match or init.get("method") == "loaded":
        return pd.DataFrame()
    sim = np.asarray(sims, dtype=np.float64)  # [target classes, base classes]
    set_by_hand = set(init.get("set_by_hand") or [])
    rows = []
    for i, name in enumerate(classes):
        j = match[i]
        others = [(sim[i, k], base[k]) for k in range(sim.shape[1]) if k != j]
        second = max(others) if others else (np.nan, "—")
        margin = sim[i, j] - second[0]
        flag = []
        if name not in set_by_hand:  # a researcher's correspondence is reported (similarity, margin), not flagged
            if margin < MARGIN:
                flag.append(f"{second[1]} about as similar" if margin >= 0 else f"{second[1]} more similar")
            if sim[i, j] < LOW:
                flag.append("low similarity")
        rows.append({"target class": name, "from base class": base[j] if j < len(base) else j,
                     "how": "set" if name in set_by_hand else "matched",
                     "similarity": round(float(sim[i, j]), 3), "next base class": second[1],
                     "margin": round(float(margin), 3), "looks arbitrary": "; ".join(flag)})
    return pd.DataFrame(rows)


def class_match_html(run: Path) -> str:
    table = class_match_table(run)
    if table.empty:
        return ""
    flagged = int((table["looks arbitrary"] != "").sum())
    n_set = int((table["how"] == "set").sum())
    body = table.to_html(index=False, border=0, escape=True)
    note = (f"{flagged} of {len(table)} matches look arbitrary (another base class within {MARGIN} in similarity, or "
            f"similarity below {LOW}): the names need not correspond; a researcher who knows the correspondence "
            "can set it (CLASS_MAP in the study's finetune section)." if flagged else "Every match is clear.")
    if n_set:
        note = f"{n_set} of {len(table)} set by hand (CLASS_MAP). {note}"
    return (f"<details><summary>Class match: each target class started from the base class whose generated images "
            f"were closest to its real ones. {_esc(note)}</summary>{body}</details>")


def curves_png(root: Path, run: Path) -> Path | None:
    """``index_files/curves-<dataset>-<stage>-<run>.png``: the run's G/D losses and ADA's p per kimg, redrawn when
    its ``stats.jsonl`` changed."""
    stats = run / "stats.jsonl"
    if not stats.is_file():
        return None
    out = root / "index_files" / f"curves-{run.parent.parent.name}-{run.parent.name}-{run.name}.png"
    if out.is_file() and out.stat().st_mtime >= stats.stat().st_mtime:
        return out
    records = runs.read_jsonl(stats)
    keys = [k for k in ("loss_g", "loss_d", "augment_p") if any(r.get(k) is not None for r in records)]
    if not records or not keys:
        return None
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(3.8 * len(keys), 2.6), squeeze=False)
    for ax, key in zip(axes[0], keys):
        pts = [(r.get("kimg"), r.get(key)) for r in records if r.get(key) is not None]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".")
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("kimg", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    out.parent.mkdir(parents=True, exist_ok=True)
    runs.atomic_write_bytes(out, buf.getvalue())
    return out


def curves_html(root: Path, run: Path) -> str:
    png = curves_png(root, run)
    if png is None:
        return ""
    return (f"<figure><img src='{_esc(_rel(png, root))}' alt='training curves of {_esc(run.name)}'>"
            "<figcaption>training curves: G and D losses, ADA's augmentation probability p, per kimg</figcaption>"
            "</figure>")


def variants_html(root: Path, df: pd.DataFrame) -> str:
    """Every GAN of the study: the base GAN's curves, then per target and fine-tuned variant the grids, fidelity,
    GAN metrics, class match and curves."""
    parts = []
    for base in sorted(root.glob("*/base_gan/*/stats.jsonl")):
        parts.append(f"<h3>Base GAN: {_esc(base.parent.parent.parent.name)}</h3>"
                     f"<div class='grids'>{grids_html(root, base.parent)}{curves_html(root, base.parent)}</div>")
    gen = df[df["stage"] == "generate"] if len(df) and "stage" in df else pd.DataFrame()
    for ds_dir in sorted(p for p in root.iterdir() if (p / "finetune").is_dir()):
        parts.append(f"<h3>{_esc(ds_dir.name)}</h3>")
        for run in sorted(p for p in (ds_dir / "finetune").iterdir() if p.is_dir() and not p.name.startswith(".")):
            row = gen[(gen["dataset"] == ds_dir.name) & (gen["run"] == run.name)] if len(gen) else gen
            m = row.iloc[0] if len(row) else pd.Series(dtype=object)
            parts.append(f"<h4>{_esc(run.name)}</h4><div class='grids'>{grids_html(root, run)}"
                         f"{curves_html(root, run)}</div>" + fidelity_html(m) + gan_metrics_html(m)
                         + class_match_html(run))
    return "".join(parts) or "<p class='muted'>No GAN has been trained in this study yet.</p>"
