"""Fixtures shared by the whole test suite."""

from __future__ import annotations

import os
from pathlib import Path

# OpenMP threads that busy-wait make small torch ops many times slower when the cores are shared with other
# processes (the test suite's own subprocesses included); the suite runs beside its own subprocesses, so it takes
# passive waiting (steady) over histlib's short spin (faster alone; docs/benchmarks.md, "CPU contention").
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
TEST_DATA = PROJECT_ROOT / "tests" / "data"


@pytest.fixture
def shared_data() -> Path:
    """The development data folder ``../shared/data`` beside the project; the test is skipped when it is absent."""
    path = (PROJECT_ROOT / ".." / "shared" / "data").resolve()
    if not path.is_dir():
        pytest.skip("development data ../shared/data not present")
    return path


@pytest.fixture
def test_data() -> Path:
    """``tests/data``: the CC0 slide, its GeoJSON annotations and other small fixtures."""
    return TEST_DATA


@pytest.fixture
def sample_data() -> Path:
    """The embedded CC BY sample ``data/sample`` (``nct_crc_he``, ``kather2016``); never skipped."""
    return PROJECT_ROOT / "data" / "sample"


@pytest.fixture
def make_image_folder(tmp_path):
    """Factory writing a small random ``<root>/<class>/<image>.png`` folder.

    ``make_image_folder({"a": 3, "b": 2}, size=(48, 40))`` → root with 3 images in ``a`` and 2 in ``b``, each
    ``48 × 40`` (width × height) RGB with seeded random pixels. Returns the root path.
    """
    import numpy as np
    from PIL import Image

    counter = iter(range(1_000_000))

    def make(counts: dict[str, int], size: tuple[int, int] = (48, 40), name: str | None = None, seed: int = 0) -> Path:
        root = tmp_path / (name or f"images{next(counter)}")
        rng = np.random.default_rng(seed)
        for cls, n in counts.items():
            (root / cls).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                a = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
                Image.fromarray(a).save(root / cls / f"{cls}_{i:03d}.png")
        return root

    return make
