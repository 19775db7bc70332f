"""histlib.data.tiling: grid positions, exact counts and names."""

from __future__ import annotations

import numpy as np
import pytest

from histlib.data.tiling import count_patches, patch_name, patch_stem, tile_array, tile_positions


def _brute_force(width, height, patch, stride):
    """Every (x, y) on the stride lattice whose patch fits, by exhaustive search (independent of the library)."""
    return [(x, y) for y in range(height) for x in range(width)
            if x % stride == 0 and y % stride == 0 and x + patch <= width and y + patch <= height]


def test_bach_count_35():
    pos = tile_positions(2048, 1536, 512, 256)
    assert len(pos) == 35 == count_patches(2048, 1536, 512, 256)
    assert 300 * len(pos) == 10_500 and 100 * len(pos) == 3_500  # BACH train/val patch counts of the paper
    assert pos[0] == (0, 0) and pos[-1] == (1536, 1024)


@pytest.mark.parametrize("w,h,p,s", [(224, 224, 64, 32), (150, 150, 64, 32), (224, 224, 224, 112),
                                     (100, 37, 10, 7), (64, 64, 64, None), (63, 80, 64, 32)])
def test_counts_match_brute_force(w, h, p, s):
    expect = _brute_force(w, h, p, s or p)
    got = tile_positions(w, h, p, s)
    assert sorted(got, key=lambda t: (t[1], t[0])) == got  # row-major order
    assert sorted(got) == sorted(expect) and count_patches(w, h, p, s) == len(expect)


def test_demo_counts():
    assert count_patches(224, 224, 64, 32) == 36
    assert count_patches(150, 150, 64, 32) == 9


def test_tile_array_content():
    img = np.arange(2048 * 1536 * 3, dtype=np.uint32).reshape(1536, 2048, 3)
    tiles = list(tile_array(img, 512, 256))
    assert len(tiles) == 35
    x, y, t = tiles[8]  # second row, second column
    assert (x, y) == (256, 256) and t.shape == (512, 512, 3)
    assert t[0, 0, 0] == img[256, 256, 0] and t[-1, -1, -1] == img[767, 767, 2]


def test_names():
    assert patch_name("ADI-AAQ", 256, 512) == "ADI-AAQ__x00256_y00512.png"
    assert patch_name("s", 123456, 0, "jpg") == "s__x123456_y00000.jpg"
    assert patch_stem("sub/dir/img one.tif") == "sub--dir--img_one"
    assert patch_stem("img.tif") == "img"


def test_bad_arguments():
    with pytest.raises(ValueError, match="patch=0"):
        tile_positions(10, 10, 0)
    with pytest.raises(ValueError, match="stride=-1"):
        tile_positions(10, 10, 4, -1)
    assert tile_positions(10, 10, 20) == []
