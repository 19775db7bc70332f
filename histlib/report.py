"""The study's index page, ``results/<study>/index.html``: the way into a study's results.

One self-contained page (inline style, no script, nothing from the network; images and reports are linked by
relative paths, so the ``results/<study>/`` folder can be copied or zipped as it is): the study's description,
warnings (failed steps, generated sets whose labels are not trustworthy), a table of the steps with their status,
time and report, the publication's Table 1/2 per target, each GAN variant's generated images beside the real ones
with its class fidelity and GAN metrics (or why there are none), and links to the CSV/Markdown tables.

It is rebuilt by the study runner after every step and can be rebuilt at any time from the results alone
(:func:`build_index`).
"""

from __future__ import annotations

import html
import os
import time
from pathlib import Path
from typing import Any

import pandas as pd

from histlib import analysis, learning_curve, runs

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{margin-bottom:.2em} h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em} th,td{border:1px solid #ccc;padding:3px 8px;
text-align:right} th{background:#f3f3f3} td:first-child,th:first-child{text-align:left}
.warn{border:2px solid #c00;background:#fee;padding:.5em 1em;margin:1em 0}
.ok{color:#070} .failed{color:#c00;font-weight:bold} .pending{color:#777}
.grids{display:flex;gap:1em;flex-wrap:wrap;align-items:flex-start} .grids figure{margin:0}
.grids img{image-rendering:pixelated;border:1px solid #ccc;max-width:560px}
figcaption{font-size:.85em;color:#555} .muted{color:#666;font-size:.9em}
.classgrid td,.classgrid th{padding:2px 4px;vertical-align:middle} .gridrow{overflow:hidden}
.gridrow img{image-rendering:pixelated;border:0;max-width:none} caption{text-align:left;font-size:.85em;color:#555}
.about{border:1px solid #99a;background:#f4f6fb;padding:.4em 1em;margin:1em 0} .about.demo{border:2px solid #c80;
background:#fff8e6}
"""


def _esc(x: Any) -> str:
    return html.escape(str(x))


def _rel(path: Path, root: Path) -> str:
    return Path(os.path.relpath(path, root)).as_posix()


def _steps(root: Path, info: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    state_dir = root / "notebooks" / ".state"
    for r in info.get("steps", []):
        state = state_dir / f"{r['step']}.json"
        st = runs.read_json(state) if state.is_file() else {}
        status = st.get("status") or r.get("status", "not run")
        report = root / "notebooks" / f"{r['step']}{'.failed' if status == 'failed' else ''}.html"
        rows.append({"step": r["step"], "stage": r.get("stage", ""), "dataset": r.get("dataset", ""),
                     "status": status, "seconds": st.get("seconds", r.get("seconds")),
                     "report": report if report.is_file() else None, "error": st.get("error")})
    return rows


def _steps_html(rows: list[dict[str, Any]], root: Path) -> str:
    if not rows:
        return "<p class='muted'>No step has run yet.</p>"
    out = ["<table><tr><th>stage</th><th>dataset</th><th>step</th><th>status</th><th>time</th><th>report</th></tr>"]
    for r in rows:
        cls = {"finished": "ok", "failed": "failed"}.get(r["status"], "pending")
        secs = r["seconds"]
        took = "—" if secs is None else (f"{secs / 60:.1f} min" if secs >= 90 else f"{secs:.0f} s")
        link = f"<a href='{_esc(_rel(r['report'], root))}'>HTML</a>" if r["report"] else "—"
        out.append(f"<tr><td>{_esc(r['stage'])}</td><td>{_esc(r['dataset'])}</td><td>{_esc(r['step'])}</td>"
                   f"<td class='{cls}'>{_esc(r['status'])}</td><td>{took}</td><td>{link}</td></tr>")
    out.append("</table>")
    return "".join(out)


def _variants_html(root: Path, df: pd.DataFrame) -> str:
    from histlib.report_gan import variants_html

    return variants_html(root, df)


def _learning_curve_html(root: Path) -> str:
    """The real-data learning curve's figure, when the analysis step (06) wrote one."""
    png = root / "analysis" / learning_curve.PNG_NAME
    if not png.is_file():
        return ""
    return ("<h3>The real-data learning curve</h3><p>Accuracy of classifiers trained on nested fractions of the real "
            "train split; dashed lines: the other rows of Table 1/2, whose crossing with the curve is what they are "
            "worth in real images.</p>"
            f"<figure><img src='{_esc(_rel(png, root))}' alt='the real-data learning curve'></figure>")


def build_index(study_dir: str | os.PathLike) -> Path:
    """Writes ``<study_dir>/index.html`` from ``study.json``, the step states and the run folders' contract files.

    Returns:
        The page's path.
    """
    root = runs.project_path(study_dir)
    root.mkdir(parents=True, exist_ok=True)
    info = runs.read_json(root / "study.json") if (root / "study.json").is_file() else {}
    name = info.get("study", root.name)
    try:
        df = analysis.collect_metrics(root)
    except ValueError as e:  # a damaged metrics.json: show the page anyway, with the reason
        df = pd.DataFrame(columns=["stage", "dataset", "run"])
        info.setdefault("problems", []).append(str(e))
    steps = _steps(root, info)
    warnings = [f"step {r['step']} failed: {_esc(r['error'] or 'see its report')}" for r in steps
                if r["status"] == "failed"]
    for (ds, variant), items in analysis.fidelity_warnings(root).items():
        warnings += [f"{_esc(ds)} / {_esc(variant)}: {_esc(w)}" for w in items]
    warnings += [_esc(p) for p in info.get("problems", [])]
    tables = analysis.paper_tables_view(df) if len(df) else None
    analysis_files = sorted((root / "analysis").glob("*.*")) if (root / "analysis").is_dir() else []
    n_done = sum(r["status"] == "finished" for r in steps)
    body = [
        f"<h1>{_esc(name)}</h1>",
        f"<p>{_esc(info.get('description') or '')}</p>",
        f"<p class='muted'>profile {_esc(info.get('profile', '?'))} · study file {_esc(info.get('file', '?'))} · "
        f"{n_done} of {len(steps)} steps finished · page written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
        "</p>",
        about_html(root, info),
    ]
    if warnings:
        body.append("<div class='warn'><b>Warnings</b><ul>" + "".join(f"<li>{w}</li>" for w in warnings)
                    + "</ul></div>")
    unfinished = [r["step"] for r in steps if r["stage"] == "classify" and r["status"] != "finished"
                  and not str(r["status"]).startswith("skipped")]
    partial = (f"<p class='warn'>Partial: {len(unfinished)} classify step(s) not finished "
               f"({_esc(', '.join(unfinished[:6]))}{', …' if len(unfinished) > 6 else ''}); the seeds that finished "
               "are included, see <i>n</i>.</p>") if unfinished and tables is not None else ""
    body += ["<h2>The answer: Table 1/2 per target and held-out set</h2>", partial,
             tables.html if tables is not None else "<p class='muted'>No classifier has finished yet.</p>",
             _learning_curve_html(root),
             "<h2>GAN variants: generated beside real</h2>", _variants_html(root, df),
             "<h2>Steps</h2>", _steps_html(steps, root),
             "<h2>Tables</h2>",
             ("<ul>" + "".join(f"<li><a href='{_esc(_rel(f, root))}'>{_esc(f.name)}</a></li>" for f in analysis_files)
              + "</ul>") if analysis_files else "<p class='muted'>Written by the analysis step (06) to "
                                                "<code>analysis/</code>.</p>"]
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{_esc(name)} · histlib study"
            f"</title><style>{STYLE}</style></head><body>{''.join(body)}</body></html>")
    return runs.atomic_write_text(root / "index.html", page)


# ----------------------------------------------------------------------------------------------------------------
# Compact tables for notebook cells (instead of dict and dataclass dumps)


def _show(v: Any, start: Path | None) -> Any:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, float):
        return "—" if v != v else f"{v:.4g}"
    if isinstance(v, os.PathLike) or (isinstance(v, str) and ("/" in v or os.sep in v) and Path(v).is_absolute()):
        return runs.display_path(v, start)
    if isinstance(v, (list, tuple)) and len(v) > LIST_ITEMS:
        return f"[{', '.join(str(_show(x, start)) for x in v[:LIST_ITEMS])}, … ({len(v)} items)]"
    if isinstance(v, (list, tuple)):
        return f"[{', '.join(str(_show(x, start)) for x in v)}]"
    if isinstance(v, dict):
        return ", ".join(f"{k}: {_show(x, start)}" for k, x in v.items()) or "{}"
    return str(v)


LIST_ITEMS = 40  # longer lists (file lists, per-image values) are shortened; class lists and counts are not


def summary_table(values: Any, start: str | os.PathLike | None = None, name: str = "value"):
    """A two-column view of a config dataclass or a dict, for display: numbers with 4 significant digits, paths
    relative to the project (or ``start``), lists of more than 40 items shortened, nested dicts on one line.

    Returns a pandas ``Styler``: every cell shown in full (a DataFrame's HTML cuts long cells at 50 characters);
    ``.data`` is the table.
    """
    import dataclasses

    if dataclasses.is_dataclass(values) and not isinstance(values, type):
        values = dataclasses.asdict(values)
    base = Path(start) if start is not None else None
    rows = {str(k): _show(v, base) for k, v in dict(values).items()}
    frame = pd.Series(rows, name=name, dtype=object).to_frame()
    frame.index.name = "field" if name == "value" else None
    return frame.style.set_properties(**{"text-align": "left"})


config_table = summary_table


# ----------------------------------------------------------------------------------------------------------------
# What the study is: the profile's meaning and the caveats read from the run folders


def _manifest_counts(data_dir: str | None) -> dict[str, Any] | None:
    from histlib.data.manifest import load_manifest

    root = runs.project_path(data_dir) if data_dir else None
    if root is None or not (root / "manifest.csv").is_file():
        return None
    m = load_manifest(root)
    per_split = m.groupby("split")["source"].nunique().to_dict() if "source" in m else {}
    return {"name": root.name, "sources": int(m["source"].nunique()) if "source" in m else None,
            "patches": len(m), "classes": int(m["class"].nunique()), "per_split": per_split}


def _run_configs(root: Path, stage: str) -> list[tuple[Path, dict[str, Any]]]:
    out = []
    for cfg in sorted(root.glob(f"*/{stage}/*/config.json")):
        try:
            out.append((cfg.parent, runs.read_json(cfg)))
        except (OSError, ValueError):  # a damaged config costs this note one caveat, not the page
            continue
    return out


def _data_caveats(root: Path) -> list[str]:
    dirs = dict.fromkeys(c.get("data_dir") for stage in ("base_gan", "finetune") for _, c in _run_configs(root, stage))
    dirs.update(dict.fromkeys(c.get("real_dir") for _, c in _run_configs(root, "classify")))
    unique = dict.fromkeys(runs.project_path(d).resolve() for d in dirs if d)  # one dataset, however it is written
    counts = [c for c in (_manifest_counts(str(d)) for d in unique) if c]
    if not counts:
        return []
    total = sum(c["sources"] or 0 for c in counts)
    parts = ", ".join(f"{_esc(c['name'])}: {c['sources']} images of {c['classes']} classes cut into "
                      f"{c['patches']} patches" for c in counts)
    out = [f"{total} source images in all ({parts})."]
    for c in counts:
        test = c["per_split"].get("test")
        if test is not None and test < 2 * c["classes"]:
            out.append(f"{_esc(c['name'])}'s test split holds {test} source image(s) for {c['classes']} classes: "
                       "every test number rests on that many independent images, whatever the patch count.")
    return out


def _gan_caveats(root: Path, info: dict[str, Any]) -> list[str]:
    from histlib.gan.config import PROFILES as GAN_PROFILES
    from histlib.study.spec import VARIANTS

    out = []
    paper_kimg = GAN_PROFILES["paper"]["train"]["kimg"]
    for stage, what in (("base_gan", "base GAN"), ("finetune", "fine-tuned GANs")):
        kimg = sorted({float(c["kimg"]) for _, c in _run_configs(root, stage) if c.get("kimg") is not None})
        if kimg:
            shown = " / ".join(f"{k:g}" for k in kimg)
            out.append(f"The {what} trained {shown} kimg at {_run_configs(root, stage)[0][1].get('resolution')} px "
                       f"(the publication's profile: up to {paper_kimg:,.0f} kimg at "
                       f"{GAN_PROFILES['paper']['train']['resolution']} px).")
    variants = sorted({p.name for p, _ in _run_configs(root, "finetune")})
    missing = [v for v in ("scratch",) if v not in variants]
    if variants and missing:
        out.append("No <code>scratch</code> variant was trained: the tables' <i>non-pretrained</i> row is empty, "
                   f"so nothing here compares pretraining with its absence (variants: {_esc(', '.join(variants))}).")
    elif variants and len(variants) < len(VARIANTS):
        out.append(f"{len(variants)} of the publication's {len(VARIANTS)} GAN variants were trained "
                   f"({_esc(', '.join(variants))}).")
    return out


def _classifier_caveats(root: Path) -> list[str]:
    cfgs = _run_configs(root, "classify")
    if not cfgs:
        return []
    epochs = sorted({c.get("epochs") for _, c in cfgs if c.get("epochs") is not None})
    pretrained = []
    for run, _ in cfgs:
        m = runs.read_json(run / "metrics.json") if (run / "metrics.json").is_file() else {}
        if "pretrained" in m:
            pretrained.append(bool(m["pretrained"]))
    asked = {str(c.get("pretrained")) for _, c in cfgs}
    why = "as configured" if asked == {"False"} else "no ImageNet weights on this machine"
    start = (f"from scratch ({why})" if pretrained and not any(pretrained) else
             "from ImageNet weights" if pretrained and all(pretrained) else
             f"from ImageNet weights in {sum(pretrained)} of {len(pretrained)} runs" if pretrained else "")
    models = sorted({str(c.get("model")) for _, c in cfgs if c.get("model")})
    seeds = sorted({c.get("seed") for _, c in cfgs if c.get("seed") is not None})
    return [f"Classifiers ({_esc(', '.join(models))}) trained {start} for {' / '.join(map(str, epochs))} epoch(s), "
            f"{len(seeds)} seed(s) each{': no spread over seeds' if len(seeds) < 2 else ''}."]


def about_html(root: Path, info: dict[str, Any]) -> str:
    """The page's first box: what the profile's results mean, then the caveats read from the run folders (data
    sizes, GAN budgets, missing variants, classifier starts and epochs)."""
    from histlib.config import PROFILE_ABOUT

    profile = info.get("profile")
    about = PROFILE_ABOUT.get(profile or "")
    caveats = _data_caveats(root) + _gan_caveats(root, info) + _classifier_caveats(root)
    if not about and not caveats:
        return ""
    head = f"<p><b>What this is.</b> {_esc(about)}</p>" if about else ""
    items = "".join(f"<li>{c}</li>" for c in caveats)
    cls = "about demo" if profile == "demo" else "about"
    return f"<div class='{cls}'>{head}{'<ul>' + items + '</ul>' if items else ''}</div>"


def _is_accuracy(column: str) -> bool:
    """Accuracies and class-fidelity agreements: fractions shown in %."""
    return ("accuracy" in column or column.endswith("agreement")) and not column.endswith(("_n", "n_seeds"))


def percent_table(df: pd.DataFrame, digits: int = 4, caption: str | None = None, percent: bool = True):
    """A results table for display: accuracies (0–1) in % with one decimal, other numbers at ``digits``
    significant digits, paths relative to the project, empty cells as "—"; standard deviations of fewer than two
    seeds are "—" and the caption says why.

    Args:
        df: the table (accuracy columns on 0–1).
        digits: significant digits of the other numbers.
        caption: shown above the table.
        percent: False when the accuracies are already in % (they are then shown at one decimal, not scaled).

    Returns a pandas ``Styler`` (``.data`` holds the converted table).
    """
    shown = df.copy()
    scale = 100 if percent else 1
    notes = [caption] if caption else []
    n_col = next((c for c in ("n_seeds", "n") if c in shown), None)
    one_seed = shown[n_col] < 2 if n_col is not None else pd.Series(False, index=shown.index)
    for c in shown.columns:
        col = shown[c]
        if _is_accuracy(str(c)) and (pd.api.types.is_numeric_dtype(col) or col.isna().all()):
            shown[c] = col.map(lambda v: "—" if v is None or pd.isna(v) else f"{scale * v:.1f}")
            shown = shown.rename(columns={c: f"{c} (%)"})
        elif pd.api.types.is_float_dtype(col):
            shown[c] = col.map(lambda v: "—" if pd.isna(v) else f"{v:.{digits}g}")
        elif not pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
            shown[c] = col.map(lambda v: "—" if v is None or (isinstance(v, float) and v != v) else _show(v, None))
    if any(str(c).endswith("_std") for c in df.columns) and bool(one_seed.any()):
        notes.append("std —: one seed, so no spread to show")
    if "run_dir" in shown:
        shown = shown.rename(columns={"run_dir": "run folder"})
    styler = shown.style.hide(axis="index") if isinstance(shown.index, pd.RangeIndex) else shown.style
    if not isinstance(shown.columns, pd.MultiIndex):  # headers wrap between words, not inside names
        styler = styler.relabel_index([str(c).replace("_", " ") for c in shown.columns], axis="columns")
    return styler.set_caption(" · ".join(notes)) if notes else styler


def significant_table(df: pd.DataFrame, digits: int = 3, caption: str | None = None):
    """Numbers at ``digits`` significant digits (GAN metrics from a few hundred images carry no more), counts
    (``n…`` columns) whole, accuracies already in % at one decimal, "—" where nothing was measured."""
    shown = df.copy()
    for c in shown.columns:
        if str(c).split("/")[-1].startswith("n_") or str(c) in ("n", "n_variants"):
            shown[c] = shown[c].astype("Int64")
    return percent_table(shown, digits=digits, caption=caption, percent=False)


def rank_correlation_table(corr: pd.DataFrame, minimum: int = 3):
    """Spearman's ρ per (GAN metric, classifier), with the reason where there is none: fewer than ``minimum``
    variants with both numbers cannot rank anything."""
    if corr is None or corr.empty:
        return pd.DataFrame({"note": ["no GAN metrics beside classifier results yet"]})
    few = corr["n_variants"] < minimum
    caption = None
    if few.all():
        caption = (f"ρ —: a rank correlation needs at least {minimum} GAN variants with both numbers; this study has "
                   f"{int(corr['n_variants'].max())} (add variants to finetune.variants to read this table)")
    elif few.any():
        caption = f"ρ —: fewer than {minimum} variants with both numbers"
    return significant_table(corr, digits=3, caption=caption)


def warnings_table(warnings_by_key: dict):
    """``{(dataset, variant): [warning, …]}`` (e.g. :func:`histlib.analysis.fidelity_warnings`) as one row per
    warning, or one row saying there is none (a ``Styler``; ``.data`` is the table)."""
    rows = [{"dataset": key[0], "variant": key[1], "warning": w} if isinstance(key, tuple) and len(key) == 2
            else {"dataset": str(key), "variant": "", "warning": w}
            for key, items in (warnings_by_key or {}).items() for w in items]
    if not rows:
        rows = [{"warning": "none: every variant draws each class as asked (or was not checked)"}]
    return pd.DataFrame(rows).style.hide(axis="index")  # a Styler: each warning in full, not cut at 50 characters


def paths_table(paths: list, start: str | os.PathLike | None = None):
    """Files written, relative to the project (or ``start``), one per row, in full (a ``Styler``)."""
    base = Path(start) if start is not None else None
    files = [runs.display_path(p, runs.project_path(base) if base else None) for p in paths]
    return pd.DataFrame({"file": files}).style.hide(axis="index")
