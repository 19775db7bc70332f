"""Fixtures shared by the GAN stage's tests."""

import pytest
import torch
from gan_toys import make_colour_folder


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_colour_folder(tmp_path_factory.mktemp("toy"), {"blue": (40, 60, 200), "red": (210, 50, 40)})


@pytest.fixture
def seeded():
    """Torch's global generator seeded with 0."""
    torch.manual_seed(0)
