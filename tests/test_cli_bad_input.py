"""Every command of ``python -m histlib`` over a table of bad inputs: one error naming the file or field, exit
status 2 (download: 1), no traceback, nothing half-written."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from histlib.__main__ import main

TINY = dict(G_kwargs=dict(z_dim=16, w_dim=16, mapping_layers=1, channel_base=128, channel_max=16),
            D_kwargs=dict(channel_base=128, channel_max=16, embed_dim=16))


def _images(root, classes=("a", "b"), n=6, size=32):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Raw and prepared images, a 16 px GAN checkpoint, config files, bad files of several kinds."""
    from histlib.data.prepare import PrepareConfig, prepare_dataset
    from histlib.gan.config import TrainConfig
    from histlib.gan.launch import train_gan

    w = tmp_path_factory.mktemp("cli")
    raw = _images(w / "raw")
    prepare_dataset(PrepareConfig(source=str(raw), out=str(w / "prepared"), val_fraction=0.34, group_by="patch"),
                    progress=False)
    truncated = _images(w / "truncated")
    data = (truncated / "a" / "1.png").read_bytes()
    (truncated / "a" / "1.png").write_bytes(data[:len(data) // 2])
    cfg = TrainConfig.from_profile("demo", **TINY, data_dir=str(w / "prepared"), resolution=16, batch_size=8,
                                      kimg=0.016, tick_kimg=0.016, progress=False, grid_columns=2)
    train_gan(cfg, w / "gan16")
    (w / "gan.json").write_text(json.dumps({**TINY, "data_dir": str(w / "prepared"), "resolution": 32, "kimg": 0.016,
                                            "batch_size": 8, "progress": False,
                                            "resume_from": str(w / "gan16" / "checkpoints" / "latest.pt")}))
    (w / "bad_kimg.json").write_text(json.dumps({"kimg": "three"}))
    (w / "list.json").write_text("[1, 2]")
    (w / "not.json").write_text("{kimg: ")
    (w / "broken.pt").write_bytes(b"\x80\x02garbage")
    (w / "classify.json").write_text(json.dumps({"real_dir": str(w / "prepared"), "image_size": 32}))
    (w / "a_file").write_text("x")
    (w / "study.yaml").write_text("name: s\nbase: {name: b, prepare: {patch: 64}}\n")
    _hostile_names(w)
    _bad_values(w)
    return w


# study values that only their step's config refuses: `study plan` builds every step's config and checks it
STUDY_EDITS = {
    "st_kimg": ("finetune:\n  variants: [pretrained, freeze_d1]\n  KIMG: 2",
                "finetune:\n  variants: [pretrained]\n  KIMG: -3"),
    "st_epochs": ("  EPOCHS: 2", "  EPOCHS: 0"),
    "st_valfrac": ("VAL_FRACTION: 0.25, GROUP_BY: source, SEED: 0}", "VAL_FRACTION: 1.5, GROUP_BY: source, SEED: 0}"),
    "st_res33": ("base_gan: {RESOLUTION: 32,", "base_gan: {RESOLUTION: 33,"),
    "st_res64": ("  KIMG: 2\n  RESOLUTION: 32", "  KIMG: 2\n  RESOLUTION: 64"),
    "st_models": ("MODELS: [resnet34]", "MODELS: [resnet9999]"),
    "st_nosource": ("    source: data/sample/kather2016\n", ""),
    "st_gone": ("source: data/sample/kather2016", "source: data/sample/no_such_folder"),
    "st_ckpt": ("base_gan: {RESOLUTION: 32, SEED: 0, KIMG: 5}", "base_gan: {checkpoint: {w}/passwd}"),
}


def _bad_values(w):
    from histlib.runs import project_root

    demo = (project_root() / "studies" / "demo.yaml").read_text()
    (w / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")  # a file that is not a checkpoint
    for name, (old, new) in STUDY_EDITS.items():
        assert old in demo, name
        (w / f"{name}.yaml").write_text(demo.replace(old, new.replace("{w}", str(w))))


def _hostile_names(w):
    """Class names that would be write paths: an edited checkpoint, manifests, a folder with a newline."""
    import shutil

    import torch

    ck = torch.load(w / "gan16" / "checkpoints" / "latest.pt", weights_only=True)
    ck["classes"] = [str(w / "escaped_abs"), "../../y"]  # data only: it still loads under weights_only
    torch.save(ck, w / "evil.pt")
    for name, cls in (("evil_manifest", "../../../../x"), ("abs_manifest", str(w / "escaped_m")),
                      ("nul_manifest", "a\x00b")):
        shutil.copytree(w / "prepared", w / name)
        text = (w / name / "manifest.csv").read_text().splitlines()
        text[1] = text[1].replace(",a,", f",{cls},", 1)
        (w / name / "manifest.csv").write_text("\n".join(text) + "\n")
    _images(w / "newline_class", classes=("a", "b\nc"))
    import os
    import shutil

    shutil.copytree(w / "prepared", w / "dup_rows")
    rows = (w / "dup_rows" / "manifest.csv").read_text().splitlines()
    (w / "dup_rows" / "manifest.csv").write_text("\n".join(rows + rows[1:2]) + "\n")  # one image listed twice
    shutil.copytree(w / "prepared", w / "latin1_manifest")
    text = (w / "latin1_manifest" / "manifest.csv").read_text().replace(",a,", ",caf\xe9,", 1)
    (w / "latin1_manifest" / "manifest.csv").write_bytes(text.encode("latin-1"))
    _images(w / "linked")
    os.symlink(w / "raw" / "a" / "0.png", w / "linked" / "a" / "out.png")  # a link out of the folder
    _images(w / "badname")
    os.rename(w / "badname" / "a" / "0.png", os.fsdecode(bytes(w / "badname" / "a") + b"/caf\xe9.png"))
    (w / "classify_noval.json").write_text(json.dumps({"real_dir": str(w / "raw"), "image_size": 32}))
    latin = _images(w / "latin1_groups")
    (latin / "MANIFEST.tsv").write_bytes("relpath\tpatient\na/0.png\tJos\xe9\n".encode("latin-1"))
    twice = _images(w / "twice_groups")
    listing = [f"{c}/{i}.png\tp{c}{i % 2}" for c in "ab" for i in range(6)] + ["a/0.png\tp9"]
    (twice / "MANIFEST.tsv").write_text("relpath\tpatient\n" + "\n".join(listing) + "\n")
    partial = _images(w / "partial_groups")  # MANIFEST.tsv gives a patient to only some images
    (partial / "MANIFEST.tsv").write_text("relpath\tpatient\na/0.png\tp1\nb/0.png\tp2\n")
    bomb = ["name: s", "base: {name: b}", "classify:", "  SEEDS:", "    - &a0 [1, 2, 3, 4, 5, 6, 7, 8, 9]"]
    bomb += [f"    - &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]  # 9 ** 10 values expanded
    (w / "bomb.yaml").write_text("\n".join(bomb) + "\n")
    (w / "recursive.yaml").write_text("name: s\nbase: &b {name: b, x: [*b]}\n")
    (w / "twice.yaml").write_text("name: s\nbase: {name: b}\nprepare: {PATCH: 32}\nprepare: {PATCH: 64}\n")
    (w / "latin1.yaml").write_bytes("name: s\ndescription: caf\xe9\nbase: {name: b}\n".encode("latin-1"))
    (w / "classify_evil.json").write_text(json.dumps({"real_dir": str(w / "evil_manifest"), "image_size": 32}))


CASES = [
    # (argv with {w} for the fixture folder, words that must appear in the error)
    ("prepare --source {w}/nope --out {w}/o1", ["nope", "not found"]),
    ("prepare --source {w}/raw --out {w}/o2 --patch 0", ["patch=0"]),
    ("prepare --source {w}/raw --out {w}/o3 --val-fraction 0.5 --test-fraction 0.6", ["test_fraction=0.6"]),
    ("prepare --source {w}/truncated --out {w}/o4 --patch 16", ["1.png", "cannot read image"]),
    ("prepare --source {w}/truncated --out {w}/o5 --patch 16 --workers 2", ["1.png", "cannot read image"]),
    ("prepare --source {w}/raw --out {w}/a_file/o6", ["a_file", "a file is in the way"]),
    ("prepare --source {w}/raw --out {w}/o7 --split-from guess", ["split_from='guess'"]),
    ("merge --source {w}/nope --name x --source {w}/raw --name y --out {w}/m1", ["nope"]),
    ("download NCT-CRC-HE-1M --to {w}/dl", ["NCT-CRC-HE-1M", "NCT-CRC-HE-100K"]),
    ("download PATH-DT-MSU --to {w}/dl", ["PATH-DT-MSU", "by hand"]),
    ("train-gan --config {w}/nope.json --run-dir {w}/t1", ["nope.json"]),
    ("train-gan --config {w}/bad_kimg.json --run-dir {w}/t2", ["TrainConfig.kimg='three'", "a number"]),
    ("train-gan --config {w}/list.json --run-dir {w}/t3", ["list.json"]),
    ("train-gan --config {w}/not.json --run-dir {w}/t4", ["not.json"]),
    ("train-gan --config {w}/gan.json --run-dir {w}/t5", ["16 px", "32 px"]),
    ("train-gan --config {w}/classify.json --run-dir {w}/t6", ["TrainConfig", "real_dir"]),
    ("generate --checkpoint {w}/broken.pt --run-dir {w}/g1", ["broken.pt", "cannot read checkpoint"]),
    ("generate --checkpoint {w}/gan16 --run-dir {w}/g2 --images-per-class -3", ["images_per_class"]),
    ("metrics --real {w}/nope --fake {w}/raw", ["nope", "not found"]),
    ("metrics --real {w}/raw --fake {w}/raw --k 0", ["--k 0"]),
    ("metrics --real {w}/raw --fake {w}/raw --k 20", ["12 real and 12 generated", "k=20"]),
    ("metrics --real {w}/raw --fake {w}/raw --extractor domain:{w}/broken.pt", ["broken.pt"]),
    ("classify --config {w}/classify.json --run-dir {w}/c1 --set epochs=two", ["ClassifyConfig.epochs='two'"]),
    ("classify --config {w}/classify.json --run-dir {w}/c2 --set 'image_size=\"32\"'",
     ["ClassifyConfig.image_size='32'", "an integer"]),
    ("classify --config {w}/classify.json --run-dir {w}/c3 --set epoch=2", ["epoch", "did you mean 'epochs'"]),
    ("study run {w}/study.yaml", ["base.prepare", "'patch'", "did you mean 'PATCH'"]),
    ("study plan {w}/missing.yaml", ["missing.yaml", "not found"]),
    ("study plan {w}/bomb.yaml", ["bomb.yaml", "aliases expand to more than"]),
    ("study plan {w}/recursive.yaml", ["recursive.yaml", "alias inside itself"]),
    ("study plan {w}/twice.yaml", ["twice.yaml", "key 'prepare' given twice", "line 4"]),
    ("study plan {w}/latin1.yaml", ["latin1.yaml", "not UTF-8"]),
    # the smaller items
    ("metrics --real {w}/raw --fake {w}/raw --max-per-class 0", ["--max-per-class 0", "a positive integer"]),
    ("metrics --real {w}/raw --fake {w}/raw --max-per-class -1", ["--max-per-class -1", "a positive integer"]),
    ("classify --config {w}/classify_noval.json --run-dir {w}/c5", ["no rows with split='val'"]),
    ("metrics --real {w}/dup_rows --fake {w}/raw", ["dup_rows/manifest.csv", "1 image(s) listed more than once"]),
    ("metrics --real {w}/latin1_manifest --fake {w}/raw", ["latin1_manifest/manifest.csv", "not UTF-8"]),
    ("metrics --real {w}/linked --fake {w}/raw", ["linked", "'a/out.png' leads outside the dataset folder"]),
    ("prepare --source {w}/badname --out {w}/o11", ["caf\\xe9.png", "not UTF-8; rename it"]),
    ("prepare --source {w}/latin1_groups --out {w}/o12 --group-by patient",
     ["latin1_groups/MANIFEST.tsv", "not UTF-8"]),
    ("prepare --source {w}/twice_groups --out {w}/o13 --group-by patient",
     ["twice_groups/MANIFEST.tsv: 'a/0.png' is listed twice with different 'patient' ('pa0' and 'p9')"]),
    ("study plan {w}/st_kimg.yaml", ["st_kimg.yaml", "03_finetune__sample_target__pretrained", "kimg=-3"]),
    ("study plan {w}/st_epochs.yaml", ["05_classify__sample_target__real", "ClassifyConfig.epochs=0"]),
    ("study plan {w}/st_valfrac.yaml", ["01_data_prep__sample_base", "val_fraction=1.5"]),
    ("study plan {w}/st_res33.yaml", ["02_base_gan__sample_base", "resolution=33", "a power of two"]),
    ("study plan {w}/st_res64.yaml", ["03_finetune", "resolution 64 px", "is 32 px", "RESOLUTION: 32"]),
    ("study plan {w}/st_models.yaml", ["05_classify", "['resnet9999'] not timm model name"]),
    ("study plan {w}/st_nosource.yaml", ["01_data_prep__sample_target", "no 'source' to prepare"]),
    ("study plan {w}/st_gone.yaml", ["data/sample/no_such_folder: not found", "--allow-missing-sources"]),
    ("study plan {w}/st_ckpt.yaml", ["base_gan.checkpoint", "passwd: cannot read checkpoint"]),
    # names read from files never become write paths (class names of checkpoints, manifests, folders)
    ("generate --checkpoint {w}/evil.pt --run-dir {w}/g3", ["evil.pt", "class name", "path separator"]),
    ("merge --source {w}/evil_manifest --name x --source {w}/prepared --name y --out {w}/m2",
     ["evil_manifest/manifest.csv", "'../../../../x'", "path separator"]),
    ("merge --source {w}/abs_manifest --name x --source {w}/prepared --name y --out {w}/m3",
     ["abs_manifest/manifest.csv", "escaped_m'", "path separator"]),
    ("merge --source {w}/nul_manifest --name x --source {w}/prepared --name y --out {w}/m4",
     ["nul_manifest/manifest.csv", "'a\\x00b'", "control"]),
    ("merge --source {w}/prepared --name .. --source {w}/raw --name y --out {w}/m5", ["dataset name '..'"]),
    ("metrics --real {w}/evil_manifest --fake {w}/raw", ["evil_manifest/manifest.csv", "'../../../../x'"]),
    ("classify --config {w}/classify_evil.json --run-dir {w}/c4", ["evil_manifest/manifest.csv", "'../../../../x'"]),
    ("prepare --source {w}/newline_class --out {w}/o8", ["newline_class", "'b\\nc'", "control"]),
    ("prepare --source {w}/raw --out {w}/o9 --group-by patient", ["group_by='patient'", "MANIFEST.tsv"]),
    ("prepare --source {w}/partial_groups --out {w}/o10 --group-by patient --val-fraction 0.3",
     ["group_by='patient': 10 of 12 source image(s) have no 'patient'", "--allow-missing-group"]),
]


@pytest.mark.parametrize("argv, words", CASES, ids=[c[0].split()[0] + ":" + c[0].split()[-1] for c in CASES])
def test_bad_input_gets_one_clear_error(world, capsys, argv, words):
    import shlex

    args = [a.replace("{w}", str(world)) for a in shlex.split(argv)]
    before = _tree(world)
    code = main(args)
    after = _tree(world)
    err = capsys.readouterr().err
    assert code in (1, 2), err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    for word in words:
        assert word in err, (word, err)
    out = args[args.index("--out") + 1] if "--out" in args else args[args.index("--run-dir") + 1] \
        if "--run-dir" in args else None
    if out and not out.endswith("/o6"):
        from pathlib import Path

        p = Path(out)
        assert not p.exists() or not any(p.iterdir()), f"{out} left behind: {list(p.iterdir())}"
    outside = sorted(p for p in after - before if not (out and p.startswith(out)))
    assert not outside, f"written outside the output: {outside}"


def _tree(root) -> set[str]:
    """Every path under ``root`` (files and folders), to see what a command wrote."""
    import os

    out = set()
    for d, dirs, files in os.walk(root):
        out.update(os.path.join(d, n) for n in dirs + files)
    return out


def _one_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_a_full_disk_says_so_and_where(world, capsys, monkeypatch):
    """ENOSPC while writing (simulated: the real case was checked on a 3 MB tmpfs): one line naming the file or the
    folder being made, never 'cannot be decoded' or torch's 'basic_ios::clear'."""
    import errno

    from histlib import runs
    from histlib.data import prepare

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    before = _tree(world)
    monkeypatch.setattr(prepare, "_save", full)
    for extra in ([], ["--workers", "2"]):
        assert main(["prepare", "--source", str(world / "raw"), "--out", str(world / "full1"), *extra]) == 2
        line = _one_error(capsys)
        assert f"{world / 'full1'}: no space left on the device" in line and "the disk is full" in line, line
    assert _tree(world) == before

    real_open = open

    def filling(path, mode="r", *a, **k):  # checkpoints hit the full disk, everything else is written
        f = real_open(path, mode, *a, **k)
        if ".pt." in str(path) and "w" in mode:
            def write(data):
                raise OSError(errno.ENOSPC, "No space left on device")
            f.write = write
        return f

    monkeypatch.setattr(runs, "open", filling, raising=False)
    (world / "plain.json").write_text(json.dumps({**TINY, "data_dir": str(world / "prepared"), "resolution": 16,
                                                  "kimg": 0.016, "tick_kimg": 0.016, "batch_size": 8,
                                                  "progress": False}))
    assert main(["train-gan", "--config", str(world / "plain.json"), "--run-dir", str(world / "full2")]) == 2
    line = _one_error(capsys)
    assert f"{world / 'full2' / 'checkpoints'}" in line and ".pt: no space left on the device" in line, line
    assert not list((world / "full2").rglob("*.pt")) and not list((world / "full2").rglob("*.tmp"))
