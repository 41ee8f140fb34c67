"""Geometry and determinism of clip sampling: segments, crops, flips, fragments, normalisation."""

import numpy as np
import pytest

from internvqa_jax.data import sampling


def coord_frames(t: int, h: int, w: int) -> np.ndarray:
    """Frames whose pixels spell their own position: R = row, G = column, B = frame (all < 256)."""
    assert h <= 256 and w <= 256 and t <= 256
    y, x = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    frames = np.empty((t, h, w, 3), np.uint8)
    frames[..., 0] = y
    frames[..., 1] = x
    frames[..., 2] = np.arange(t)[:, None, None]
    return frames


# --------------------------------------------------------------------------- temporal


def test_train_segments_one_per_segment_and_seeded():
    for total, n in [(100, 8), (16, 8), (7, 8), (300, 16)]:
        a = sampling.train_segment_indices(total, n, np.random.default_rng(3))
        b = sampling.train_segment_indices(total, n, np.random.default_rng(3))
        np.testing.assert_array_equal(a, b)
        assert a.shape == (n,) and a.min() >= 0 and a.max() < total
        stride = total / n
        # Each index falls inside its own segment [i*stride, (i+1)*stride).
        seg = np.floor(a / stride + 1e-9).astype(int) if total >= n else None
        if seg is not None:
            np.testing.assert_array_equal(seg, np.arange(n))
    offsets = {tuple(sampling.train_segment_indices(100, 8, np.random.default_rng(s))) for s in range(20)}
    assert len(offsets) > 1, "the random offset never moved"


def test_test_segments_deterministic_distinct_in_range():
    idx = sampling.test_segment_indices(64, 8, 4)
    assert idx.shape == (4, 8)
    # stride 8: clip k sits at offset (k+0.5)/4 of each segment, i.e. 1, 3, 5, 7 within it.
    np.testing.assert_array_equal(idx[:, 0], [1, 3, 5, 7])
    np.testing.assert_array_equal(idx[2], np.arange(8) * 8 + 5)
    np.testing.assert_array_equal(idx, sampling.test_segment_indices(64, 8, 4))
    short = sampling.test_segment_indices(3, 8, 2)
    assert short.min() >= 0 and short.max() <= 2
    with pytest.raises(ValueError, match="num_total"):
        sampling.evenly_spaced_indices(0, 8)


# --------------------------------------------------------------------------- crops


def test_resize_short_side_keeps_aspect():
    frames = coord_frames(2, 90, 160)
    out = sampling.resize_short_side(frames, 45)
    assert out.shape == (2, 45, 80, 3)
    tall = sampling.resize_short_side(coord_frames(1, 160, 90), 45)
    assert tall.shape == (1, 80, 45, 3)


def test_three_crops_left_centre_right_and_top_centre_bottom():
    frames = coord_frames(2, 50, 120)
    crops = sampling.three_crops(frames, 50)
    lefts = [int(c[0, 0, 0, 1]) for c in crops]
    assert lefts == [0, 35, 70]
    assert all(c.shape == (2, 50, 50, 3) for c in crops)
    crops = sampling.three_crops(coord_frames(1, 120, 50), 50)
    assert [int(c[0, 0, 0, 0]) for c in crops] == [0, 35, 70]


def test_random_and_centre_crop_are_contiguous_windows():
    frames = coord_frames(3, 60, 100)
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(30):
        c = sampling.random_crop(frames, 40, rng)
        top, left = int(c[0, 0, 0, 0]), int(c[0, 0, 0, 1])
        seen.add((top, left))
        np.testing.assert_array_equal(c, frames[:, top : top + 40, left : left + 40])
    assert len(seen) > 5
    c = sampling.center_crop(frames, 40)
    assert (int(c[0, 0, 0, 0]), int(c[0, 0, 0, 1])) == (10, 30)
    with pytest.raises(ValueError, match="smaller than crop"):
        sampling.center_crop(frames, 80)


def test_flip_mirrors_columns_for_whole_clip():
    frames = coord_frames(2, 4, 6)
    flipped = [sampling.random_flip(frames, np.random.default_rng(s)) for s in range(20)]
    n_flipped = sum(int(f[0, 0, 0, 1]) == 5 for f in flipped)
    assert 0 < n_flipped < 20
    f = next(f for f in flipped if int(f[0, 0, 0, 1]) == 5)
    np.testing.assert_array_equal(f, frames[:, :, ::-1])


def test_spatial_train_resize_crop_shape():
    frames = coord_frames(4, 72, 128)
    out = sampling.spatial_train(frames, 32, "resize_crop", np.random.default_rng(0))
    assert out.shape == (4, 32, 32, 3) and out.dtype == np.uint8 and out.flags.c_contiguous
    with pytest.raises(ValueError, match="spatial mode"):
        sampling.spatial_train(frames, 32, "zoom", np.random.default_rng(0))


# --------------------------------------------------------------------------- fragments


def check_mosaic(out: np.ndarray, frames: np.ndarray, grid: int, patch: int) -> list[tuple[int, int]]:
    """Asserts every mosaic cell is an unscaled native patch from its own grid cell, same in all frames."""
    _, h, w, _ = frames.shape
    corners = []
    for i in range(grid):
        for j in range(grid):
            block = out[:, i * patch : (i + 1) * patch, j * patch : (j + 1) * patch]
            y0, x0 = int(block[0, 0, 0, 0]), int(block[0, 0, 0, 1])
            np.testing.assert_array_equal(block, frames[:, y0 : y0 + patch, x0 : x0 + patch])
            assert (i * h) // grid <= y0 and y0 + patch <= ((i + 1) * h) // grid
            assert (j * w) // grid <= x0 and x0 + patch <= ((j + 1) * w) // grid
            corners.append((y0, x0))
    return corners


def test_fragments_native_patches_in_their_cells_aligned_over_time():
    frames = coord_frames(4, 240, 250)
    out = sampling.sample_fragments(frames, np.random.default_rng(1))
    assert out.shape == (4, 224, 224, 3)
    corners = check_mosaic(out, frames, 7, 32)
    # The frame channel proves every frame keeps its own content at the shared positions.
    np.testing.assert_array_equal(out[:, :, :, 2], np.broadcast_to(np.arange(4)[:, None, None], (4, 224, 224)))
    other = check_mosaic(sampling.sample_fragments(frames, np.random.default_rng(2)), frames, 7, 32)
    assert corners != other, "positions did not depend on the seed"


def test_fragment_positions_on_1080p_cover_the_frame():
    ys, xs = sampling.fragment_positions(1080, 1920, np.random.default_rng(0))
    assert ys.shape == xs.shape == (7, 7)
    for i in range(7):
        assert np.all(ys[i] >= (i * 1080) // 7) and np.all(ys[i] + 32 <= ((i + 1) * 1080) // 7)
        assert np.all(xs[:, i] >= (i * 1920) // 7) and np.all(xs[:, i] + 32 <= ((i + 1) * 1920) // 7)
    # Positions are independent per cell, not one offset for the whole grid.
    assert len(set((ys - (np.arange(7)[:, None] * 1080) // 7).ravel())) > 1


def test_small_frames_are_upscaled_before_fragments():
    frames = coord_frames(2, 100, 150)
    out = sampling.sample_fragments(frames, np.random.default_rng(0))
    assert out.shape == (2, 224, 224, 3)
    up = sampling.upscale_for_fragments(frames)
    assert up.shape[1:3] == (224, 336)
    with pytest.raises(ValueError, match="too small"):
        sampling.fragment_positions(100, 150, np.random.default_rng(0))


def test_custom_fragment_size_and_test_views():
    frames = coord_frames(16, 120, 200)
    fragments = sampling.ViewProtocol(8, 64, "fragments", num_segments=3)
    views = sampling.test_views(frames, fragments, seed=7)
    assert views.shape == (3, 8, 64, 64, 3)
    np.testing.assert_array_equal(views, sampling.test_views(frames, fragments, seed=7))
    assert not np.array_equal(views, sampling.test_views(frames, fragments, seed=8))
    crops = sampling.test_views(frames, sampling.ViewProtocol(8, 64, "resize_crop", num_segments=2))
    assert crops.shape == (6, 8, 64, 64, 3)
    assert sampling.ViewProtocol(8, 64, "resize_crop", 2).num_views == 6 and fragments.num_views == 3
    with pytest.raises(ValueError, match="multiple of the patch"):
        sampling.test_views(frames, sampling.ViewProtocol(8, 50, "fragments", 1))
    with pytest.raises(ValueError, match="protocol 'bogus' unknown"):
        sampling.ViewProtocol(name="bogus")


# --------------------------------------------------------------------------- normalisation


def test_normalize_numpy_and_jax_agree():
    import jax
    import jax.numpy as jnp

    x = np.random.default_rng(0).integers(0, 256, (2, 3, 4, 4, 3), dtype=np.uint8)
    ref = (x.astype(np.float64) - np.array([0.485, 0.456, 0.406]) * 255) / (np.array([0.229, 0.224, 0.225]) * 255)
    out = sampling.normalize(x)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    out_j = jax.jit(sampling.normalize)(jnp.asarray(x))
    assert isinstance(out_j, jax.Array) and out_j.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(out_j), ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="channels-last"):
        sampling.normalize(np.zeros((2, 3, 4, 4), np.uint8))


def test_fragments_from_a_list_of_frames_equal_the_array_path():
    for h, w in [(240, 250), (100, 150)]:  # native path and upscaled path
        frames = coord_frames(3, h, w)
        a = sampling.spatial_train(frames, 224, "fragments", np.random.default_rng(5))
        b = sampling.spatial_train(list(frames), 224, "fragments", np.random.default_rng(5))
        np.testing.assert_array_equal(a, b)
    crop_a = sampling.spatial_train(frames, 64, "resize_crop", np.random.default_rng(1))
    crop_b = sampling.spatial_train(list(frames), 64, "resize_crop", np.random.default_rng(1))
    np.testing.assert_array_equal(crop_a, crop_b)
    with pytest.raises(ValueError, match="share one"):
        sampling.sample_fragments([frames[0], frames[0, :50]], np.random.default_rng(0))
