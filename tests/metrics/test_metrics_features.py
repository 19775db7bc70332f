"""Feature extractors: TF1 resize and Inception/VGG16 networks against torch-fidelity, weights handling."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from histlib.metrics import features as F


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No downloads, and empty weight folders (so a developer's cached weights do not change the test)."""
    monkeypatch.setenv("HISTLIB_OFFLINE", "1")
    monkeypatch.setenv("HISTLIB_WEIGHTS", str(tmp_path / "weights"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    return tmp_path


def _randomise_bn(net: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(0)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


def _spec_for(path: Path, like: F.WeightsSpec) -> F.WeightsSpec:
    return F.WeightsSpec(path.name, F._sha256(path), (), like.description)


@pytest.mark.parametrize("size", [(299, 299), (224, 224), (17, 40), (8, 8)])
def test_tf1_resize_matches_torch_fidelity(size):
    tfi = pytest.importorskip("torch_fidelity.interpolate_compat_tensorflow")
    x = torch.rand(2, 3, 37, 53, generator=torch.Generator().manual_seed(0)) * 255
    ref = tfi.interpolate_bilinear_2d_like_tensorflow1x(x, size=size, align_corners=False)
    assert torch.equal(F.resize_bilinear_tf1(x, size), ref)


def test_inception_matches_torch_fidelity_with_random_weights(tmp_path, monkeypatch):
    tfx = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")
    torch.manual_seed(0)
    net = F.InceptionV3FIDNet()
    _randomise_bn(net)
    path = tmp_path / "inception-random.pth"
    torch.save(net.state_dict(), path)
    monkeypatch.setattr(F, "INCEPTION_FID_WEIGHTS", _spec_for(path, F.INCEPTION_FID_WEIGHTS))
    mine = F.InceptionFeatures(weights=path, device="cpu")
    theirs = tfx.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(path))
    images = torch.randint(0, 256, (2, 3, 40, 48), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    out = mine(images)
    assert out.shape == (2, 2048) and out.dtype == torch.float32
    torch.testing.assert_close(out, theirs(images)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_vgg16_matches_torch_fidelity_with_random_weights(tmp_path, monkeypatch):
    import torchvision

    tfx = pytest.importorskip("torch_fidelity.feature_extractor_vgg16")
    torch.manual_seed(0)
    path = tmp_path / "vgg16-random.pth"
    torch.save(torchvision.models.vgg16(weights=None).state_dict(), path)
    monkeypatch.setattr(F, "VGG16_WEIGHTS", _spec_for(path, F.VGG16_WEIGHTS))
    mine = F.VGG16Features(weights=path, device="cpu")
    theirs = tfx.FeatureExtractorVGG16("vgg16", ["fc2_relu"], feature_extractor_weights_path=str(path))
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(mine(images), theirs(images)[0], rtol=1e-5, atol=1e-5)


def test_random_test_extractor_interface():
    ex = F.get_extractor("random-test", device="cpu")
    assert isinstance(ex, F.FeatureExtractor) and ex.name == "random-test" and ex.dim == 64
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 256, (5, 3, 40, 30), dtype=torch.uint8, generator=g)
    f1 = ex(a)
    assert f1.shape == (5, 64) and f1.dtype == torch.float32
    assert torch.equal(f1, F.RandomTestFeatures(device="cpu")(a))  # seeded: the same network every time
    assert not torch.allclose(f1[0], f1[1])  # different images, different features
    with pytest.raises(ValueError, match="uint8"):
        ex(a.float())


def test_domain_extractor_from_classifier_checkpoint(tmp_path):
    timm = pytest.importorskip("timm")
    model = timm.create_model("test_resnet", num_classes=3)
    ckpt = {"model_name": "test_resnet", "num_classes": 3, "state_dict": model.state_dict(), "image_size": 32}
    path = tmp_path / "classifier.pt"
    torch.save(ckpt, path)
    ex = F.get_extractor(f"domain:{path}", device="cpu")
    assert ex.name.startswith("domain-") and ex.dim == model.num_features
    images = torch.randint(0, 256, (3, 3, 48, 48), dtype=torch.uint8)
    out = ex(images)
    x = torch.nn.functional.interpolate(images.float() / 255, size=(32, 32), mode="bilinear", antialias=True)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    x = (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    model.eval()
    with torch.no_grad():
        ref = model.forward_head(model.forward_features(x), pre_logits=True)
    torch.testing.assert_close(out, ref)
    with pytest.raises(ValueError, match="model_name"):
        torch.save({"state_dict": {}}, tmp_path / "bad.pt")
        F.DomainFeatures(tmp_path / "bad.pt")


def test_missing_weights_offline_give_one_clear_error(offline):
    with pytest.raises(F.WeightsNotFoundError) as e:
        F.get_extractor("inception")
    msg = str(e.value)
    assert F.INCEPTION_FID_WEIGHTS.filename in msg and F.INCEPTION_FID_WEIGHTS.sha256 in msg
    assert str(offline / "weights") in msg


def test_weights_lookup_checks_the_checksum(offline, monkeypatch):
    folder = offline / "weights"
    folder.mkdir()
    good = folder / "good.pth"
    good.write_bytes(b"weights")
    spec = F.WeightsSpec("good.pth", F._sha256(good), (), "test weights")
    assert F.find_weights(spec) == good
    bad = F.WeightsSpec("good.pth", "0" * 64, (), "test weights")
    with pytest.raises(F.WeightsNotFoundError, match="wrong checksum"):
        F.find_weights(bad)
    with pytest.raises(F.WeightsNotFoundError, match="does not match"):
        F.find_weights(bad, path=good)


def _real_weights(spec):
    try:
        return F.find_weights(spec, download=False)
    except F.WeightsNotFoundError:
        return None


@pytest.mark.slow
@pytest.mark.parametrize("name", ["inception", "vgg16"])
def test_real_weights_when_present(name):
    spec = F.INCEPTION_FID_WEIGHTS if name == "inception" else F.VGG16_WEIGHTS
    path = _real_weights(spec)
    if path is None:
        pytest.skip(f"{spec.filename} not present locally")
    assert F._sha256(path) == spec.sha256
    ex = F.get_extractor(name, device="cpu")
    out = ex(torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8))
    assert out.shape == (2, ex.dim) and torch.isfinite(out).all()
    if name == "vgg16":
        assert (out >= 0).all()  # fc2 after ReLU


@pytest.mark.online
@pytest.mark.slow
def test_download_inception_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("HISTLIB_WEIGHTS", raising=False)
    monkeypatch.delenv("HISTLIB_OFFLINE", raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    path = F.find_weights(F.INCEPTION_FID_WEIGHTS)
    assert path.is_file() and F._sha256(path) == F.INCEPTION_FID_WEIGHTS.sha256
    assert os.path.getsize(path) > 50e6
    assert np.isfinite(F.InceptionFeatures(device="cpu")(torch.zeros(1, 3, 32, 32, dtype=torch.uint8)).numpy()).all()
