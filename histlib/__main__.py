"""``python -m histlib COMMAND …``: the command line.

Each command lives in its own module, which provides ``add_arguments(parser)`` and ``main(args) -> int``; the
module is imported only when its command runs, so ``--help`` stays fast and never imports torch.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import sys

# command -> (module, one-line description)
COMMANDS: dict[str, tuple[str, str]] = {
    "prepare": ("histlib.data.prepare_cli", "tile/validate/stain-normalise a raw dataset into a prepared dataset"),
    "merge": ("histlib.data.merge", "union of two or more datasets (e.g. NCT-CRC-HE-100K ∪ NONORM), source recorded"),
    "download": ("histlib.data.registry", "download a registered public dataset (resumable, checksum-verified)"),
    "datasets": ("histlib.data.registry_cli", "list the registered public datasets"),
    "build-sample": ("histlib.data.embedded_sample", "rebuild the embedded sample data/sample/ from CC BY sources"),
    "train-gan": ("histlib.gan.cli", "train or fine-tune the conditional StyleGAN2 from a config JSON"),
    "generate": ("histlib.generate.cli", "sample a GAN checkpoint into an ImageFolder; class fidelity and GAN metrics"),
    "metrics": ("histlib.metrics.cli", "FID, precision/recall, density/coverage between two ImageFolders"),
    "classify": ("histlib.classify.cli", "train and evaluate a timm classifier from a config JSON"),
    "study": ("histlib.study.cli", "run a study YAML: execute the notebooks stage by stage with papermill"),
    "kernels": ("histlib.ops.cli", "build the CUDA kernels and report which implementation each op uses"),
}


def _top_parser() -> argparse.ArgumentParser:
    width = max(len(c) for c in COMMANDS)
    lines = [f"  {name:<{width}}  {desc}" for name, (_, desc) in COMMANDS.items()]
    return argparse.ArgumentParser(
        prog="python -m histlib",
        description="histlib: generative augmentation for histology image classification.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n" + "\n".join(lines) + "\n\nRun 'python -m histlib COMMAND --help' for a command's options.",
        usage="python -m histlib [-h] [--version] COMMAND ...",
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = _top_parser()
    if not argv or argv[0] in ("-h", "--help"):
        top.print_help()
        return 0
    if argv[0] == "--version":
        import histlib

        print(f"histlib {histlib.__version__}")
        return 0
    cmd = argv[0]
    if cmd not in COMMANDS:
        top.error(f"unknown command {cmd!r}; choose one of: {', '.join(COMMANDS)}")
    module_name, desc = COMMANDS[cmd]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"python -m histlib {cmd}", description=desc)
    module.add_arguments(parser)
    args = parser.parse_args(argv[1:])
    try:
        return int(module.main(args) or 0)
    except (OSError, ValueError) as e:
        # bad input (a missing folder, a wrong parameter, a file in the way): the message names it; a traceback
        # would only hide it
        print(f"error: {error_text(e)}", file=sys.stderr)
        return 2
    except Exception as e:
        if not type(e).__module__.startswith("histlib"):
            raise  # a bug, not bad input: the traceback is what a report needs
        print(f"error: {error_text(e)}", file=sys.stderr)  # histlib's own errors name what to fix
        return 2


_ERRNO_HINTS = {
    errno.EEXIST: "a file is in the way where a folder is expected; move it away or choose another path",
    errno.ENOTDIR: "a file is in the way where a folder is expected; move it away or choose another path",
    errno.EROFS: "the folder is read-only: choose another output folder",
    errno.EACCES: "permission denied: choose another folder or fix its permissions",
    errno.EPERM: "permission denied: choose another folder or fix its permissions",
    errno.ENOSPC: "the disk is full: free space or choose another folder",
    errno.EDQUOT: "the disk quota is used up: free space or choose another folder",
}


def error_text(e: BaseException) -> str:
    """One line for a user: the message, with the file and what to do for operating-system errors."""
    if isinstance(e, OSError) and e.errno in _ERRNO_HINTS and e.filename is not None:
        return f"{e.filename}: {e.strerror} ({_ERRNO_HINTS[e.errno]})"
    if isinstance(e, OSError) and e.errno in _ERRNO_HINTS and e.strerror:  # a failed write names no file
        return f"{e.strerror} ({_ERRNO_HINTS[e.errno]})"
    text = str(e) or type(e).__name__
    return " ".join(text.split()) if "\n" in text and len(text) < 400 else text


if __name__ == "__main__":
    sys.exit(main())
