"""Classification stage on CUDA: AMP + channels_last training and evaluation (``-m gpu``)."""

import json

import numpy as np
import pytest
import torch

from histlib.classify.config import ClassifyConfig
from histlib.classify.train import train_classifier
from histlib.classify.weights import load_classifier

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _needs_cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")


def _folder(root):
    import pandas as pd
    from PIL import Image

    rng = np.random.default_rng(0)
    rows = []
    for ci, cls in enumerate("abc"):
        (root / cls).mkdir(parents=True)
        for i in range(24):
            img = np.full((32, 32, 3), 60.0)
            img[..., ci] = 190
            Image.fromarray((img + rng.normal(0, 20, img.shape)).clip(0, 255).astype(np.uint8)).save(
                root / cls / f"{i}.png")
            rows.append({"path": f"{cls}/{i}.png", "class": cls, "split": "val" if i < 6 else "train",
                         "group": f"{cls}{i}", "source": "t"})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root


def test_amp_channels_last_run(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    real = _folder(tmp_path / "real")
    cfg = ClassifyConfig(model="test_resnet", real_dir=str(real), image_size=32, epochs=3, batch_size=16,
                         lr=3e-3, pretrained=False, num_workers=2)
    metrics = train_classifier(cfg, tmp_path / "run", progress=False)
    env = json.loads((tmp_path / "run" / "env.json").read_text())
    assert env["amp"] is True and env["channels_last"] is True and metrics["device"].startswith("cuda")
    assert np.isfinite(metrics["val_loss"]) and metrics["accuracy"] > 0.5  # colour-coded classes are easy
    # the checkpoint holds CPU tensors, so it loads on a machine without a GPU
    model, ckpt = load_classifier(tmp_path / "run" / "checkpoints" / "best.pt")
    assert all(v.device.type == "cpu" for v in ckpt["state_dict"].values())
