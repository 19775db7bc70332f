"""HED-space stain jitter (histlib.data.stain_augment): exact round trip, the Tellez formula, seeding, errors."""

import numpy as np
import pytest
import torch
from PIL import Image

from histlib.data.stain_augment import DEFAULT_STAIN_STRENGTH, RGB_FROM_HED, HEDJitter, hed_jitter


def _image(seed=0, size=32):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=g)  # [3, H, W]


def test_zero_jitter_returns_the_image_bit_for_bit():
    img = _image()
    out = hed_jitter(img, torch.ones(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64))
    assert out.dtype == torch.uint8 and torch.equal(out, img)
    torch.manual_seed(0)
    assert torch.equal(HEDJitter(0.0)(img), img)


def test_matches_a_per_pixel_formula():
    """Against an independent per-pixel computation: solve for the stain densities, jitter, mix back."""
    img = _image(1, size=6)
    alpha = torch.tensor([1.1, 0.93, 1.04], dtype=torch.float64)
    beta = torch.tensor([0.05, -0.03, 0.01], dtype=torch.float64)
    out = hed_jitter(img, alpha, beta).numpy()
    m = RGB_FROM_HED.numpy()  # rows: stains
    x = img.numpy().astype(np.float64)
    for i in range(6):
        for j in range(6):
            od = -np.log((x[:, i, j] + 1) / 256)
            conc = np.linalg.solve(m.T, od)  # od = m.T @ conc
            rgb = 256 * np.exp(-(m.T @ (conc * alpha.numpy() + beta.numpy()))) - 1
            want = np.clip(np.rint(rgb), 0, 255)
            assert np.abs(out[:, i, j] - want).max() <= 1  # float32 vs float64 rounding


def test_more_haematoxylin_darkens_every_channel():
    img = _image(2)
    out = hed_jitter(img, torch.ones(3, dtype=torch.float64), torch.tensor([0.2, 0.0, 0.0], dtype=torch.float64))
    assert (out.int() <= img.int()).all() and (out.int() < img.int()).float().mean() > 0.9


def test_draws_stay_in_range_and_follow_torch_seed():
    jitter = HEDJitter(0.2)
    torch.manual_seed(0)
    draws = [jitter.draw() for _ in range(200)]
    alpha = torch.stack([a for a, _ in draws])
    beta = torch.stack([b for _, b in draws])
    assert alpha.min() >= 0.8 and alpha.max() <= 1.2 and beta.abs().max() <= 0.2
    assert alpha.std() > 0.05 and beta.std() > 0.05  # spread over the range, not constant
    img = _image(3)
    torch.manual_seed(5)
    a = jitter(img)
    torch.manual_seed(5)
    assert torch.equal(jitter(img), a) and not torch.equal(a, img)


def test_pil_and_tv_tensor_inputs():
    from torchvision import tv_tensors

    img = _image(4)
    pil = Image.fromarray(img.permute(1, 2, 0).numpy())
    torch.manual_seed(1)
    out_pil = HEDJitter()(pil)
    torch.manual_seed(1)
    out_tv = HEDJitter()(tv_tensors.Image(img))
    assert isinstance(out_pil, Image.Image) and isinstance(out_tv, tv_tensors.Image)
    assert np.array_equal(np.asarray(out_pil), out_tv.permute(1, 2, 0).numpy())


@pytest.mark.parametrize("strength", [-0.1, 1.0, "0.1", True, None])
def test_bad_strength_is_refused(strength):
    with pytest.raises(ValueError, match="strength"):
        HEDJitter(strength)


def test_bad_input_is_refused():
    with pytest.raises(TypeError, match="uint8 tensor"):
        HEDJitter()(torch.zeros(3, 4, 4))
    assert repr(HEDJitter()) == f"HEDJitter(strength={DEFAULT_STAIN_STRENGTH:g})"
