"""The built-in synthetic video dataset: deterministic, in range, moving, labelled."""

from __future__ import annotations

import numpy as np
import pytest

from latte_rs.data import SyntheticVideos


def test_clips_are_deterministic_shaped_and_in_range() -> None:
    ds = SyntheticVideos(num_clips=6, num_frames=5, image_size=24, seed=3)
    video, label = ds[2]
    assert video.shape == (5, 3, 24, 24) and video.dtype == np.float32
    assert video.min() >= -1.0 and video.max() <= 1.0
    again, label_again = SyntheticVideos(num_clips=6, num_frames=5, image_size=24, seed=3)[2]
    np.testing.assert_array_equal(video, again)
    assert label == label_again == ds.label(2)
    other, _ = SyntheticVideos(num_clips=6, num_frames=5, image_size=24, seed=4)[2]
    assert not np.array_equal(video, other)
    np.testing.assert_array_equal(ds[-1][0], ds[5][0])


def test_shapes_move_and_stay_inside_the_frame() -> None:
    ds = SyntheticVideos(num_clips=4, num_frames=40, image_size=32, speed=0.1)
    for i in range(len(ds)):
        video, _ = ds[i]
        assert np.abs(np.diff(video, axis=0)).max() > 0  # it moves
        background = np.isclose(video, -0.8).all(axis=1)  # (F, H, W)
        visible = (~background).reshape(40, -1).sum(axis=1)
        assert visible.min() > 0.5 * visible.max()  # bouncing keeps the whole shape in view


@pytest.mark.parametrize("label_by", ["shape", "motion"])
def test_labels_cover_the_classes(label_by: str) -> None:
    ds = SyntheticVideos(num_clips=64, num_frames=2, image_size=16, label_by=label_by, num_classes=3)
    labels = {ds.label(i) for i in range(len(ds))}
    assert labels == {0, 1, 2}
    assert len(ds.class_names) == 3


def test_shape_size_sets_the_area_and_class_colours_the_colour() -> None:
    from latte_rs.data.synthetic import BACKGROUND, CLASS_COLOURS

    small = SyntheticVideos(num_clips=16, num_frames=1, image_size=32, shape_size=(0.08, 0.1), seed=1)
    large = SyntheticVideos(num_clips=16, num_frames=1, image_size=32, shape_size=(0.25, 0.3), seed=1)
    painted = SyntheticVideos(num_clips=16, num_frames=1, image_size=32, shape_size=(0.25, 0.3), seed=1,
                              class_colours=True)

    def area(ds):
        return np.mean([(~np.isclose(ds[i][0], BACKGROUND).all(axis=1)).sum() for i in range(len(ds))])

    assert area(large) > 4 * area(small)
    for i in range(len(painted)):
        video, label = painted[i]
        same, _ = large[i]
        mask = ~np.isclose(same, BACKGROUND).all(axis=1)  # the same clip, only the colour differs
        np.testing.assert_array_equal(~np.isclose(video, BACKGROUND).all(axis=1), mask)
        pixels = video.transpose(0, 2, 3, 1)[mask]  # (N, 3)
        np.testing.assert_allclose(pixels, np.broadcast_to(CLASS_COLOURS[label], pixels.shape), rtol=1e-6)


def test_motion_label_is_the_opening_direction_of_motion() -> None:
    ds = SyntheticVideos(num_clips=16, num_frames=3, image_size=64, label_by="motion", speed=0.05)
    for i in range(len(ds)):
        video, label = ds[i]
        mask = ~np.isclose(video, -0.8).all(axis=1)
        ys, xs = [], []
        for f in range(2):
            r, c = np.nonzero(mask[f])
            ys.append(r.mean())
            xs.append(c.mean())
        dy, dx = ys[1] - ys[0], xs[1] - xs[0]
        direction = ("right" if dx > 0 else "left") if abs(dx) > abs(dy) else ("down" if dy > 0 else "up")
        assert direction == ds.class_names[label]


@pytest.mark.parametrize(
    "kwargs, word",
    [
        (dict(num_clips=0), "num_clips"),
        (dict(num_frames=0), "num_frames"),
        (dict(image_size=4), "image_size"),
        (dict(label_by="colour"), "label_by"),
        (dict(num_classes=5), "num_classes"),
        (dict(speed=0), "speed"),
        (dict(shape_size=(0.3, 0.2)), "shape_size"),
        (dict(shape_size=(0.0, 0.2)), "shape_size"),
        (dict(shape_size=0.2), "shape_size"),
    ],
)
def test_bad_arguments(kwargs: dict, word: str) -> None:
    with pytest.raises(ValueError, match=word):
        SyntheticVideos(**kwargs)
    with pytest.raises(IndexError):
        SyntheticVideos(num_clips=2)[2]


def test_torch_dataloader_with_workers_gives_the_same_batches() -> None:
    torch = pytest.importorskip("torch")
    ds = SyntheticVideos(num_clips=8, num_frames=3, image_size=16)
    single = [b for b in torch.utils.data.DataLoader(ds, batch_size=4, num_workers=0)]
    multi = [b for b in torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2)]
    for (v1, l1), (v2, l2) in zip(single, multi, strict=True):
        assert torch.equal(v1, v2) and torch.equal(l1, l2)
