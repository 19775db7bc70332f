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


def test_unknown_command_is_a_clear_error():
    out = subprocess.run([sys.executable, "-m", "histlib", "nope"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "unknown command 'nope'" in out.stderr


def test_every_command_module_provides_the_interface():
    import importlib

    for name, (module, _) in COMMANDS.items():
        mod = importlib.import_module(module)
        assert callable(getattr(mod, "add_arguments", None)) and callable(getattr(mod, "main", None)), name
