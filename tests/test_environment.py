"""pyproject.toml is the one dependency list; environment.yml, the Makefile and CI must agree with it."""

import re
from pathlib import Path

import tomllib
import yaml
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[1]


def _pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_environment_yml_installs_the_project_through_pip_only():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    deps = env["dependencies"]
    conda = [d for d in deps if isinstance(d, str)]
    pip = [d for d in deps if isinstance(d, dict)]
    assert sorted(conda) == ["pip", "python=3.11"], f"environment.yml must only pin python and pip, got {conda}"
    assert len(pip) == 1 and pip[0]["pip"] == ["-e .[test]"], "environment.yml must install the project via pip"
    names = {re.split(r"[<>=!~ ]", d)[0].lower() for d in _pyproject()["project"]["dependencies"]}
    listed = {re.split(r"[<>=!~ ]", d)[0].lower() for d in conda}
    assert not (names & listed), f"dependencies listed twice (pyproject and environment.yml): {names & listed}"


def test_torch_ranges_admit_local_and_gpu_machine_versions():
    deps = {re.split(r"[<>=!~ ]", d)[0]: d[len(re.split(r"[<>=!~ ]", d)[0]):]
            for d in _pyproject()["project"]["dependencies"]}
    assert "2.14.1" in SpecifierSet(deps["torch"]) and "2.11.0" in SpecifierSet(deps["torch"])
    assert "0.29.1" in SpecifierSet(deps["torchvision"]) and "0.26.0" in SpecifierSet(deps["torchvision"])


def test_required_dependencies_present():
    names = {re.split(r"[<>=!~ \[]", d)[0].lower() for d in _pyproject()["project"]["dependencies"]}
    for needed in ("jupyterlab", "papermill", "nbconvert", "ipykernel", "timm", "pandas", "seaborn", "matplotlib",
                   "scikit-learn", "pillow", "tqdm", "ipywidgets", "tiffslide", "torch", "torchvision"):
        assert needed in names, needed
    test_extra = {re.split(r"[<>=!~ ]", d)[0] for d in _pyproject()["project"]["optional-dependencies"]["test"]}
    assert {"pytest", "prdc", "torch-fidelity"} <= test_extra


def test_oracles_are_not_imported_by_the_library():
    for path in (ROOT / "histlib").rglob("*.py"):
        text = path.read_text()
        for oracle in ("prdc", "torch_fidelity", "torchstain"):
            assert not re.search(rf"^\s*(import|from)\s+{oracle}\b", text, re.M), f"{path} imports {oracle}"


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "make test" in ci and "make test" in readme and "make demo" in readme


def _project_files():
    """Files under version control (or, outside a git checkout, every file but caches and environments)."""
    import subprocess

    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, text=True)
    if out.returncode == 0:
        return [ROOT / line for line in out.stdout.splitlines() if (ROOT / line).is_file()]
    skip = {".venv", ".git", "results", ".ruff_cache", ".pytest_cache", "__pycache__"}
    return [p for p in ROOT.rglob("*") if p.is_file() and not skip & set(p.relative_to(ROOT).parts)]


def test_no_absolute_machine_paths_in_project_files():
    pattern = re.compile(r"/work/|/root/|/home/\w+/")
    for path in _project_files():
        if path == Path(__file__).resolve():
            continue
        if path.suffix in {".py", ".md", ".yaml", ".yml", ".toml", ".ipynb", ".sh", ".cfg", ".txt", ""}:
            text = path.read_text(errors="ignore")
            assert not pattern.search(text), f"{path.relative_to(ROOT)} contains an absolute path of a machine"
