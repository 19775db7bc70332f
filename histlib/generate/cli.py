"""``python -m histlib generate``: sample a GAN checkpoint into an ImageFolder; class fidelity and GAN metrics."""

from __future__ import annotations

from pathlib import Path

from histlib import fidelity, runs
from histlib.config import PROFILES
from histlib.generate.config import GenerateConfig
from histlib.generate.stage import class_fidelity, metrics_extractor, run_generation, write_generation_metrics
from histlib.metrics.folders import gan_metrics
from histlib.selection import SELECTIONS, unselected_metrics


def add_arguments(parser) -> None:
    parser.add_argument("--checkpoint", required=True, help="a train-gan checkpoint file or run directory")
    parser.add_argument("--run-dir", required=True, help="run directory to write (images/, metrics.json)")
    parser.add_argument("--dataset-dir", default=None,
                        help="the prepared real dataset the GAN learned: enables class fidelity and GAN metrics")
    parser.add_argument("--profile", default="demo", choices=PROFILES)
    parser.add_argument("--images-per-class", type=int, default=None, help="default: the profile's")
    parser.add_argument("--num-sets", type=int, default=None, help="independent sets (default: the profile's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--truncation-psi", type=float, default=1.0)
    parser.add_argument("--selection", default="none", choices=SELECTIONS,
                        help="keep the best images of each class by this score, or ('agree') the first draws the "
                             "classifier labels as their class (needs --dataset-dir)")
    parser.add_argument("--oversample", type=float, default=2.0, help="with --selection: images drawn per image kept")
    parser.add_argument("--amount", type=float, default=None,
                        help="images per class as a multiple of the real train split (replaces --images-per-class)")
    parser.add_argument("--extractor", default="auto", help="GAN-metric features (see GenerateConfig.extractor)")
    parser.add_argument("--no-metrics", action="store_true", help="no GAN metrics")
    parser.add_argument("--no-fidelity", action="store_true", help="no class fidelity")
    parser.add_argument("--device", default=None)
    parser.add_argument("--no-progress", action="store_true")


def main(args) -> int:
    """Generates a set, then (with ``--dataset-dir``) its class fidelity and GAN metrics; writes metrics.json."""
    cfg = GenerateConfig.from_profile(
        args.profile, checkpoint=args.checkpoint, dataset_dir=args.dataset_dir, images_per_class=args.images_per_class,
        num_sets=args.num_sets, seed=args.seed, truncation_psi=args.truncation_psi, extractor=args.extractor,
        metrics=not args.no_metrics and args.dataset_dir is not None,
        fidelity=not args.no_fidelity and args.dataset_dir is not None, device=args.device,
        selection=args.selection, oversample=args.oversample, amount=args.amount)
    progress = not args.no_progress
    report = run_generation(cfg, args.run_dir, progress=progress)
    fid = class_fidelity(cfg, report, progress=progress)
    metrics = {}
    extractor = metrics_extractor(cfg, report) if cfg.metrics else None
    if extractor is not None:
        metrics = gan_metrics(report["set_dirs"][0], cfg.dataset_dir, extractor, real_split=cfg.real_split,
                              k_pr=cfg.k_pr, k_dc=cfg.k_dc, device=cfg.device)
    unselected = unselected_metrics(cfg, report, extractor)
    out = write_generation_metrics(args.run_dir, report, metrics, cfg=cfg, fidelity=fid, unselected=unselected)
    print(f"{report['n_images']} images in {runs.display_path(report['out_dir'])} "
          f"({report['images_per_s']} img/s{', reused' if report.get('reused') else ''})")
    if fid:
        print(repr(fidelity.FidelityView(fid)))
    print(f"metrics: {runs.display_path(Path(args.run_dir) / 'metrics.json')} ({len(out)} keys)")
    return 0
