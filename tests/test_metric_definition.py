"""One definition of the GAN metrics everywhere: random synthesis noise, reals at the generator's resolution, the
sample sizes beside the numbers (docs/results.md, "One definition of the GAN metrics")."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from histlib import analysis, fidelity, generate, runs  # noqa: E402
from histlib.metrics import FeatureCache, extract_features, get_extractor  # noqa: E402


def test_study_gan_table_carries_both_sample_sizes(tmp_path):
    root = tmp_path / "study"
    runs.Run(root / "lung3" / "generate" / "pretrained-realism").write_metrics({
        "random-test/fid": 9.0, "random-test/recall": 0.4, "random-test/n_real": 311, "random-test/n_fake": 900,
        "unselected/random-test/recall": 0.3, "random-test/k_pr": 3})
    table = analysis.gan_table(analysis.collect_metrics(root))
    row = table.loc[("lung3", "pretrained-realism", "random-test")]
    assert list(table.columns) == ["n_real", "n_fake", "fid", "recall"]
    assert row["n_real"] == 311 and row["n_fake"] == 900 and len(table) == 1  # 'unselected/…' is not an extractor


def test_real_features_at_the_generator_resolution(make_image_folder, tmp_path):
    from histlib.data.dataset import ImageDataset, to_uint8_tensor

    root = make_image_folder({"a": 3, "b": 2}, size=(16, 16))
    ex = get_extractor("random-test", device="cpu")
    ds = ImageDataset(root, transform=to_uint8_tensor, resolution=8)
    expected = ex(torch.stack([ds[i][0] for i in range(len(ds))])).numpy()
    cache = FeatureCache(tmp_path / "cache")
    feats, _, _ = extract_features(root, ex, resolution=8, cache=cache, progress=False)
    np.testing.assert_allclose(feats, expected, rtol=1e-6)
    native, _, _ = extract_features(root, ex, cache=cache, progress=False)  # another cache entry, not the 8 px one
    assert not np.allclose(native, feats)


def test_generator_fidelity_draws_random_noise_reproducibly():
    from histlib.gan import networks

    kw = dict(z_dim=8, w_dim=8, mapping_layers=1, channel_base=64, channel_max=8, img_resolution=8, img_channels=3,
              num_classes=2)
    torch.manual_seed(0)
    G = networks.Generator(**kw)
    with torch.no_grad():
        for name, p in G.named_parameters():
            if name.endswith("noise_strength"):
                p.fill_(5.0)  # the noise decides the images

    seen = []

    class Recorder:
        classes = ["a", "b"]
        val_accuracy = val_balanced_accuracy = 1.0
        path = "clf.pt"

        def predict(self, images):
            seen.append(images.clone())
            return (images.float().mean((1, 2, 3)) > 127).long().numpy()

    state = torch.random.get_rng_state()
    fidelity.generator_fidelity(G, ["a", "b"], Recorder(), per_class=4, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's RNG is left alone
    fidelity.generator_fidelity(G, ["a", "b"], Recorder(), per_class=4, seed=3)
    fidelity.generator_fidelity(G, ["a", "b"], Recorder(), per_class=4, seed=3, noise_mode="const")
    assert torch.equal(seen[0], seen[2]) and torch.equal(seen[1], seen[3])  # same seed, same images
    assert not torch.equal(seen[0], seen[4])  # random noise is not the constant noise map
    assert generate.GenerateConfig().noise_mode == "random"  # what a generated set is made with
