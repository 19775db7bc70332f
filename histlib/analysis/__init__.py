"""Paper-layout tables, bootstrap confidence intervals and plots of a study's results (notebook 06).

The study-level functions (notebook 06) read only the contract files of the run directories (:mod:`histlib.runs`):
``results/<study>/<dataset>/<stage>/<run>/metrics.json`` and ``stats.jsonl`` — never notebook outputs, never
checkpoints — so the analysis can be re-run on a copied ``results/`` folder without the data or a GPU. The
fine-tuning report of notebook 03 (one run's ``finetune.json``) is in :mod:`histlib.gan.finetune_report`.

Stages and their runs:
    ``base_gan``, ``finetune``  one run per GAN variant (``default``, ``scratch``, ``pretrained``, ``freeze_d1`` …);
    ``generate``                one run per variant: GAN metrics of the generated set, keys ``<extractor>/<metric>``
                                (the extractor is part of every key, so a FID from a random test network can never
                                be mistaken for an Inception FID);
    ``classify``                one run per ``<train_set>__<model>__seed<k>``: ``accuracy``, ``balanced_accuracy``.

A study may lack some stages (a study file lists the stages it runs): the functions return empty frames for
what is absent and :func:`stage_status` says what is missing.

Submodules, lowest first: :mod:`~histlib.analysis.rows` (the classifier runs, one row each),
:mod:`~histlib.analysis.gan` (the GAN-metric table), :mod:`~histlib.analysis.intervals` (group-aware paired
bootstrap intervals), :mod:`~histlib.analysis.collect` (reading the results folder, the stage status),
:mod:`~histlib.analysis.curve` (the real-data learning curve and a row's worth in real images),
:mod:`~histlib.analysis.answer` (the one frame behind Table 1/2, the index page and the exported tables),
:mod:`~histlib.analysis.tables` (that frame's views: Table 1/2 with caption and sentence, differences, runs),
:mod:`~histlib.analysis.per_class` (each class's recall per row of that frame),
:mod:`~histlib.analysis.classification` (mean ± std and bootstrap tables, Table 1/2 of one dataset, every variant,
differences to real), :mod:`~histlib.analysis.generators` (class fidelity and GAN metrics beside the classifiers),
:mod:`~histlib.analysis.export` (the text and HTML views, the written CSV and Markdown tables) and
:mod:`~histlib.analysis.plots`; their public functions are re-exported here. None of them imports the package
back; the learning curve's figure (:mod:`histlib.learning_curve`) sits above it.
"""

from __future__ import annotations

from histlib.analysis import answer, curve, intervals, tables  # noqa: F401 (analysis.intervals, analysis.tables)
from histlib.analysis.answer import compare_studies, scored_table  # noqa: F401 (notebook 06, the index page)
from histlib.analysis.classification import (  # noqa: F401 (the package's names)
    PAPER_ROWS,
    BootstrapCI,
    best_frozen_variant,
    bootstrap_ci,
    classification_table,
    format_mean_std,
    paired_differences,
    paper_table,
    variant_table,
)
from histlib.analysis.collect import (  # noqa: F401 (the package's names)
    CLASSIFY_RUN,
    ID_COLUMNS,
    RESULT_STAGES,
    STAGE_ORDER,
    collect_metrics,
    collect_stats,
    describe_missing,
    parse_classify_run,
    stage_status,
)
from histlib.analysis.export import (  # noqa: F401 (the package's names)
    HTML,
    _caption,
    analysis_dir,
    format_percent_table,
    one_header,
    paper_tables,
    paper_tables_view,
    run_overview,
    study_tables,
    to_markdown,
    write_study_tables,
    write_tables,
)
from histlib.analysis.gan import GAN_METRICS, gan_metric_columns, gan_table  # noqa: F401 (the package's names)
from histlib.analysis.generators import (  # noqa: F401 (the package's names)
    FIDELITY_METRICS,
    fidelity_table,
    fidelity_warnings,
    gan_vs_classifier,
    rank_correlations,
)
from histlib.analysis.per_class import class_recalls  # noqa: F401 (notebook 06)
from histlib.analysis.plots import (  # noqa: F401
    plot_classification,
    plot_differences,
    plot_gan_metrics,
    plot_training_curves,
)
from histlib.analysis.rows import (  # noqa: F401 (the package's names)
    CLASSIFICATION_METRICS,
    TRAIN_SET_ORDER,
    classifier_runs,
    classify_rows,
    evaluated_on,
)
from histlib.analysis.tables import runs_table  # noqa: F401 (notebook 06, the index page)

WORTH, WORTH_NOTE = answer.WORTH, tables.WORTH_NOTE  # Table 1/2 column beside a learning curve
