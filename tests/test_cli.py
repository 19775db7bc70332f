"""The command line: `python -m histlib --help` is fast and lists every command."""

import subprocess
import sys

from histlib.__main__ import COMMANDS


def test_help_lists_commands_without_importing_torch():
    code = ("import sys, histlib.__main__ as m; m.main(['--help']); "
            "assert 'torch' not in sys.modules, 'histlib --help imported torch'")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for name in COMMANDS:
        assert name in out.stdout


def test_import_histlib_is_light():
    code = "import sys, histlib; assert 'torch' not in sys.modules and 'numpy' not in sys.modules"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def _omp_after_import(env_extra: dict) -> str:
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")} | env_extra
    code = "import os, histlib; print(os.environ.get('OMP_WAIT_POLICY'), os.environ.get('GOMP_SPINCOUNT'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_import_sets_a_short_openmp_spin_unless_the_user_chose():
    # before torch loads: every entry point (CLI, runner, notebook kernels) imports histlib first
    assert _omp_after_import({}) == "None 3000"
    assert _omp_after_import({"OMP_WAIT_POLICY": "PASSIVE"}) == "PASSIVE None"
    assert _omp_after_import({"GOMP_SPINCOUNT": "100"}) == "None 100"


def test_unknown_command_is_a_clear_error():
    out = subprocess.run([sys.executable, "-m", "histlib", "nope"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "unknown command 'nope'" in out.stderr


def test_every_command_module_provides_the_interface():
    import importlib

    for name, (module, _) in COMMANDS.items():
        mod = importlib.import_module(module)
        assert callable(getattr(mod, "add_arguments", None)) and callable(getattr(mod, "main", None)), name
