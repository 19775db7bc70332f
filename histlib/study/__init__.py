"""The study runner: executes the notebooks stage by stage with papermill (docs/design.md, contract).

A study is a YAML file under ``studies/`` naming the base dataset, the target datasets, a profile and the settings
of each stage. ``python -m histlib study run STUDY.yaml`` turns it into a plan of notebook executions (one per
stage, dataset and variant), runs each with papermill from the project root, and exports each executed notebook to
HTML under ``results/<study>/notebooks/``. A step is skipped when a finished execution with the same hash exists.

Modules, each importing only those above it:

* ``executors``: running steps side by side (``local``) or as SLURM jobs, each through ``python -m histlib study
  step``; the ``resources`` section of a study file.
* ``spec``: the study file (:func:`load_study`, :class:`StudyError`, ``STAGES``, ``VARIANTS``, the notebooks'
  parameters cells).
* ``steps``: the plan (:func:`plan`), the step hashes and whether a step finished.
* ``checks``: every value checked at plan time, before anything runs.
* ``estimate``: how long each stage will take (``study plan``).
* ``execution``: one step run with papermill and exported to HTML.
* ``run``: the whole study (:func:`run_study`), sequentially or through an executor.
* ``cli``: ``python -m histlib study {run, plan, step}``.
"""

from histlib.study.checks import check_values, prepared_conflicts, validate
from histlib.study.execution import execute_step, export_html
from histlib.study.run import run_single_step, run_study
from histlib.study.spec import STAGES, VARIANTS, Step, Study, StudyError, load_study
from histlib.study.steps import hash_steps, is_done, plan

__all__ = ["STAGES", "VARIANTS", "Step", "Study", "StudyError", "check_values", "execute_step",
           "export_html", "hash_steps", "is_done", "load_study", "plan", "prepared_conflicts", "run_single_step",
           "run_study", "validate"]
