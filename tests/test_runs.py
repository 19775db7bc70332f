"""histlib.runs: atomic writers, run directories, provenance."""

import json
import os

import pytest

from histlib import runs


def test_atomic_write_leaves_no_temp_files(tmp_path):
    p = runs.write_json(tmp_path / "a" / "m.json", {"x": 1.5, "nested": {"y": [1, 2]}})
    assert json.loads(p.read_text()) == {"x": 1.5, "nested": {"y": [1, 2]}}
    assert sorted(os.listdir(p.parent)) == ["m.json"]


def test_atomic_write_failure_keeps_old_file(tmp_path, monkeypatch):
    p = tmp_path / "m.json"
    runs.write_json(p, {"v": 1})

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        runs.write_json(p, {"v": 2})
    monkeypatch.undo()
    assert json.loads(p.read_text()) == {"v": 1}
    assert sorted(os.listdir(tmp_path)) == ["m.json"]


def test_atomic_dir_renames_only_on_success(tmp_path):
    final = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with runs.atomic_dir(final) as d:
            (d / "half.txt").write_text("x")
            raise RuntimeError("interrupted")
    assert not final.exists() and os.listdir(tmp_path) == []
    with runs.atomic_dir(final) as d:
        (d / "done.txt").write_text("x")
    assert (final / "done.txt").exists()
    with runs.atomic_dir(final) as d:  # replaces an existing folder
        (d / "new.txt").write_text("y")
    assert sorted(os.listdir(final)) == ["new.txt"] and os.listdir(tmp_path) == ["out"]


def test_jsonable_handles_numpy_torch_and_nonfinite(tmp_path):
    np = pytest.importorskip("numpy")
    torch = pytest.importorskip("torch")
    p = runs.write_json(tmp_path / "m.json", {"a": np.float32(0.5), "b": torch.tensor(3), "c": float("nan"),
                                              "d": np.arange(3), "e": tmp_path / "x"})
    d = json.loads(p.read_text())
    assert d["a"] == 0.5 and d["b"] == 3 and d["c"] is None and d["d"] == [0, 1, 2] and d["e"].endswith("/x")


def test_run_layout_and_finished_detection(tmp_path):
    path = runs.run_dir("demo", "sample_base", "base_gan", "default", root=tmp_path)
    assert path == tmp_path / "demo" / "sample_base" / "base_gan" / "default"
    run = runs.Run(path)
    cfg = {"kimg": 2, "seed": 0}
    run.write_config(cfg)
    assert not run.is_finished(cfg)
    run.log_stats({"kimg": 0.5, "loss": 1.0})
    run.log_stats({"kimg": 1.0, "loss": 0.5})
    run.write_metrics({"fid": 12.5, "per_class": {"TUM": 3.0}})
    assert run.read_stats()[-1]["kimg"] == 1.0
    assert run.read_metrics() == {"fid": 12.5, "per_class/TUM": 3.0}
    assert run.is_finished(cfg) and not run.is_finished({**cfg, "seed": 1})
    run.write_env()
    env = runs.read_json(run.env_path)
    assert env["python"] and "torch_version" in env


def test_run_dir_rejects_bad_names(tmp_path):
    with pytest.raises(ValueError, match="stage"):
        runs.run_dir("demo", "ds", "a/b", "r", root=tmp_path)


def test_read_jsonl_ignores_torn_last_line(tmp_path):
    p = tmp_path / "stats.jsonl"
    p.write_text('{"a": 1}\n{"a": 2}\n{"a": ')
    assert runs.read_jsonl(p) == [{"a": 1}, {"a": 2}]


def test_read_json_names_the_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(ValueError, match="bad.json"):
        runs.read_json(bad)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        runs.read_json(tmp_path / "missing.json")


def test_config_hash_is_order_independent():
    assert runs.config_hash({"a": 1, "b": 2}) == runs.config_hash({"b": 2, "a": 1})
    assert runs.config_hash({"a": 1}) != runs.config_hash({"a": 2})


def test_project_path_resolves_from_subfolder(tmp_path, monkeypatch):
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "histlib"\n')
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")
    assert runs.project_root() == tmp_path.resolve()
    assert runs.project_path("data/sample") == tmp_path.resolve() / "data" / "sample"


def test_atomic_dir_gets_the_usual_permissions(tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        with runs.atomic_dir(tmp_path / "made") as tmp:
            (tmp / "x").write_text("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "made").stat().st_mode) == 0o755  # not mkdtemp's 0700


def test_display_path_is_relative_to_the_project(tmp_path):
    inside = runs.project_root() / "results" / "x" / "y.json"
    assert runs.display_path(inside) == "results/x/y.json"
    assert runs.display_path(tmp_path / "a") == (tmp_path / "a").as_posix()
    assert runs.display_path(tmp_path / "a" / "b", start=tmp_path) == "a/b"


@pytest.mark.parametrize("name, words", [
    ("../../y", "path separator"), ("/abs/dir", "path separator"), ("a\\b", "path separator"),
    (".", "relative folder"), ("..", "relative folder"), ("", "is empty"), ("a\x00b", "control"),
    ("a\nb", "control"), (".hidden", "starts with '.'"), ("x" * 256, "255 bytes"), (3, "not a string"),
])
def test_check_name_refuses_what_could_be_a_path(name, words):
    with pytest.raises(ValueError) as e:
        runs.check_name(name, "some/file.csv")
    assert str(e.value).startswith(f"some/file.csv: class name {name!r}") and words in str(e.value)
    assert "\n" not in str(e.value)


def test_check_name_keeps_ordinary_names():
    assert runs.check_names(["ADI", "tumor stroma", "Ü-ß", "BACK-1"], "f") == ["ADI", "tumor stroma", "Ü-ß", "BACK-1"]
    with pytest.raises(ValueError, match="f: class names 'ADI': expected a list"):
        runs.check_names("ADI", "f")


class _FullDisk:
    """A file object whose writes fail with ENOSPC once ``room`` bytes are written (a disk that fills up)."""

    def __init__(self, path, room):
        self.f, self.room = open(path, "wb"), room

    def write(self, data):
        if self.room < len(data):
            raise OSError(28, "No space left on device")
        self.room -= len(data)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def test_a_full_disk_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    import torch

    path = tmp_path / "ck" / "latest.pt"
    runs.atomic_torch_save({"x": torch.zeros(10)}, path)
    old = path.read_bytes()
    monkeypatch.setattr(runs, "open", lambda p, mode="r", **kw: _FullDisk(p, 4096), raising=False)
    with pytest.raises(OSError) as e:
        runs.atomic_torch_save({"x": torch.zeros(100_000)}, path)  # torch.save to a path: 'basic_ios::clear'
    assert e.value.errno == 28 and e.value.filename == str(path) and "MiB free there" in e.value.strerror
    assert path.read_bytes() == old and sorted(p.name for p in path.parent.iterdir()) == ["latest.pt"]
    with pytest.raises(OSError, match="no space left") as e:
        with runs.atomic_dir(tmp_path / "made") as tmp:
            runs.atomic_write_bytes(tmp / "a.bin", b"x" * 10_000)
    assert e.value.filename == str(tmp_path / "made")  # the folder being made, not a temporary file in it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]
