"""histlib: generative augmentation for histology image classification with limited data.

Importing this package is cheap: it never imports torch, compiles a kernel or touches a GPU.
"""

import os as _os

# OpenMP threads that wait for work spin before they sleep; torch's default spin (GNU OpenMP: 300 000 rounds) made a
# 2-thread CPU training 8-22x slower beside another 2-thread job, and sleeping at once (OMP_WAIT_POLICY=PASSIVE)
# made it 1.6-1.8x slower alone. A short spin keeps most of the speed alone and a fair share beside other work
# (docs/benchmarks.md, benchmarks/contention.py). GNU OpenMP reads this once, when torch loads it, so it is set here,
# before any histlib module imports torch: every entry point (CLI, study runner, the notebooks' kernels, which
# inherit the runner's environment and import histlib first) goes through this line. A setting of the user's wins.
if "OMP_WAIT_POLICY" not in _os.environ and "GOMP_SPINCOUNT" not in _os.environ:
    _os.environ["GOMP_SPINCOUNT"] = "3000"

__version__ = "0.1.0"
