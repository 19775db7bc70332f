"""``python -m histlib study {run, plan, step} STUDY.yaml`` and ``study compare RESULTS_A RESULTS_B``: the study's
command line.

``step`` runs one step by name: the command the ``local`` and ``slurm`` executors start for each step (so they never
import the runner). ``compare`` sets two finished studies' classifiers side by side, row by row, with the paired
group interval of B minus A (:func:`histlib.analysis.compare_studies`); with ``--selections SEL_A SEL_B`` it pairs
A's sets kept by one selection with B's kept by another, so one study's two selections compare row by row; with
``--amounts AMOUNT_A AMOUNT_B`` it pairs A's sets of one amount with B's of another (3x against 6x, say).
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from pathlib import Path

import pandas as pd

from histlib import runs
from histlib.study.run import run_single_step, run_study
from histlib.study.spec import STAGES, StudyError, load_study


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``run``, ``plan``, ``step`` and ``compare`` sub-commands and their options."""
    sub = parser.add_subparsers(dest="action", required=True)
    p_run = sub.add_parser("run", help="execute the study's notebooks (skipping finished steps)")
    p_plan = sub.add_parser("plan", help="show the steps, their parameters and which would be skipped")
    for p in (p_run, p_plan):
        p.add_argument("study", help="study YAML, e.g. studies/demo.yaml")
        p.add_argument("--only", nargs="+", choices=list(STAGES), help="run only these stages")
        p.add_argument("--results", default="results", help="results root (default: results)")
    p_plan.add_argument("--no-probe", action="store_true",
                        help="estimate times only from earlier runs on this machine (no few-second probes)")
    p_run.add_argument("--force", action="store_true", help="re-run steps even if finished with the same hash")
    p_plan.add_argument("--allow-missing-sources", action="store_true",
                        help="a dataset source that does not exist yet is a warning (plan before downloading)")
    p_run.add_argument("--log-output", action="store_true", help="stream notebook output to the terminal")
    p_run.add_argument("--executor", default="sequential",
                       help="sequential (default) | local (steps in parallel on this machine) | slurm (submitit jobs)")
    p_run.add_argument("--jobs", type=int, default=1, help="steps at once (local: one GPU each where there are GPUs)")
    p_run.add_argument("--cluster", default=None, help="submitit cluster for --executor slurm: slurm | local | debug")
    p_step = sub.add_parser("step", help="execute one step of a study (what the parallel executors run)")
    p_step.add_argument("study")
    p_step.add_argument("--step", required=True)
    p_step.add_argument("--results", default="results")
    p_cmp = sub.add_parser("compare", help="two studies' classifiers row by row: B minus A on the same test images")
    p_cmp.add_argument("study_a", help="results folder of study A, e.g. results/dev_real")
    p_cmp.add_argument("study_b", help="results folder of study B")
    p_cmp.add_argument("--out", default=None, help="also write the table as CSV here")
    p_cmp.add_argument("--boot", type=int, default=2000, help="bootstrap resamples of the intervals (default 2000)")
    p_cmp.add_argument("--selections", nargs=2, metavar=("SEL_A", "SEL_B"), default=None,
                       help="pair A's sets kept by SEL_A with B's kept by SEL_B (e.g. fidelity agree; none: the "
                            "unselected sets; A and B may be the same study)")
    p_cmp.add_argument("--amounts", nargs=2, metavar=("AMOUNT_A", "AMOUNT_B"), default=None,
                       help="pair A's generated sets of AMOUNT_A with B's of AMOUNT_B (e.g. 3 6: 3x against 6x; A and "
                            "B may be the same study)")


def _compare(args: argparse.Namespace) -> int:
    from histlib.analysis import collect_metrics, compare_studies

    if args.boot < 0:
        raise ValueError(f"--boot: expected a number of resamples >= 0, got {args.boot}")
    if args.amounts:
        from histlib.classify.sets import amount_label

        try:
            args.amounts = [amount_label(a) for a in args.amounts]
        except ValueError as e:
            print(f"error: --amounts: {e}", file=sys.stderr)
            return 2
    table = compare_studies(collect_metrics(args.study_a), collect_metrics(args.study_b), n_boot=args.boot,
                            selections=args.selections, amounts=args.amounts)
    if table.empty:
        pairing = (f" with A's sets selected by {args.selections[0]!r} and B's by {args.selections[1]!r}"
                   if args.selections else "")
        pairing += ((" and" if pairing else " with") + f" A's sets of {args.amounts[0]} and B's of {args.amounts[1]}"
                    if args.amounts else "")
        print(f"{args.study_a} and {args.study_b} share no classifier row (same dataset, training set, model)"
              f"{pairing}")
        return 1
    if args.selections:
        kept = ["unselected" if s == "none" else f"selected by {s}" for s in args.selections]
        print(f"A: the generated sets {kept[0]}; B: those {kept[1]} (same variant, amount and training set)")
    if args.amounts:
        print(f"A: the generated sets of {args.amounts[0]}; B: those of {args.amounts[1]} (same variant, selection "
              "and training set; rows are labelled with B's amount)")
    for ds, part in table.groupby("dataset", sort=False):
        print(f"\n{ds}: accuracy (%) of A and B, B − A [95 % interval] and the seeds whose own difference has its "
              f"sign; scored on {', '.join(dict.fromkeys(part['scored_on']))}")
        width = int(part["training_set"].str.len().max())
        for _, r in part.iterrows():
            diff = (f"{r['diff_accuracy']:+.1f} [{r['diff_accuracy_low']:+.1f}, {r['diff_accuracy_high']:+.1f}] "
                    f"{r['seeds_same_sign']}" if pd.notna(r.get("diff_accuracy_low")) else r.get("interval_note", ""))
            if pd.notna(r.get("folds_diff_accuracy_low")):
                diff += (f"; folds' own {r['folds_diff_accuracy']:+.1f} [{r['folds_diff_accuracy_low']:+.1f}, "
                         f"{r['folds_diff_accuracy_high']:+.1f}] {r['folds_same_sign']}")
            accuracies = f"{r['accuracy_a']:5.1f} {r['accuracy_b']:5.1f}"
            print(f"  {r['training_set']:{width}s}  {r['model']}  {accuracies}  {diff}")
    if args.out:
        runs.atomic_write_text(args.out, table.to_csv(index=False))
        print(f"\nwritten: {runs.display_path(args.out)}")
    return 0


@contextlib.contextmanager
def _sigterm_interrupts():
    """SIGTERM (``kill``, a batch system, the runner stopping its steps) raises ``KeyboardInterrupt`` as Ctrl-C
    does, so the ``finally`` blocks run: a step shuts its notebook's kernel down and records itself as failed, and a
    runner stops the steps it started. Python's default would end the process there and then, and leave them
    running."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"stopped by signal {signum}")

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: signals stay as they are
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def main(args: argparse.Namespace) -> int:
    """Runs the sub-command; exit status 2 for a study that cannot run as written, 1 when a step failed."""
    if args.action == "compare":
        return _compare(args)
    with _sigterm_interrupts():
        try:
            return _run_or_step(args)
        except KeyboardInterrupt as e:
            what = "the steps it had started were stopped; " if args.action == "run" else ""
            print(f"\ninterrupted ({str(e) or 'Ctrl-C'}): {what}the same command resumes (finished steps are "
                  "skipped)",
                  file=sys.stderr)
            return 130


def _run_or_step(args: argparse.Namespace) -> int:
    if args.action == "step":
        try:
            print(runs.display_path(run_single_step(args.study, args.step, args.results)))
        except StudyError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        return 0
    try:
        rows = run_study(args.study, force=getattr(args, "force", False), only=args.only,
                         dry_run=args.action == "plan", results_root=args.results,
                         log_output=getattr(args, "log_output", False),
                         executor=getattr(args, "executor", "sequential"), jobs=getattr(args, "jobs", 1),
                         cluster=getattr(args, "cluster", None), probe=not getattr(args, "no_probe", False),
                         allow_missing_sources=getattr(args, "allow_missing_sources", False))
    except StudyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.action == "run":
        counts = {k: sum(r["status"].startswith(k) for r in rows) for k in ("finished", "skipped", "failed", "blocked")}
        name = load_study(runs.project_path(args.study)).name
        print(f"study done: {counts['finished']} step(s) run, {counts['skipped']} skipped as finished, "
              f"{counts['failed']} failed, {counts['blocked']} not run because a step they need failed; "
              f"index: {runs.display_path(Path(args.results) / name / 'index.html')}")
        if counts["failed"]:
            for r in rows:
                if r["status"] == "failed":
                    print(f"  failed: {r['step']}: {r.get('error', '')}", file=sys.stderr)
            return 1
    return 0
