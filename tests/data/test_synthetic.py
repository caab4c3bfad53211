"""The built-in synthetic video dataset: deterministic, in range, moving, labelled."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from latte_rs.data import SyntheticVideos
from latte_rs.data.synthetic import BACKGROUND, CLASS_COLOURS, TARGET_COLOUR
from latte_rs.evaluation.prompt_following import measure, motion_consistency


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


def test_the_default_stream_is_unchanged_by_the_time_setting() -> None:
    # The clips of the options that existed before the "time" setting, as they were rendered then.
    digest = hashlib.sha256()
    for kwargs in ({}, {"label_by": "motion", "num_shapes": 3}, {"class_colours": True, "num_shapes": 2}):
        ds = SyntheticVideos(num_clips=8, num_frames=6, image_size=24, seed=3, **kwargs)
        for i in range(8):
            video, label = ds[i]
            digest.update(video.tobytes())
            digest.update(str(label).encode())
    assert digest.hexdigest() == "c457000bbfe20610e9fa07fb562e201fbdd7d2e4d00e720a78ac0867ebc59df4"


def test_time_setting_labels_by_the_opening_motion_of_the_white_shape_only() -> None:
    ds = SyntheticVideos.setting("time", num_clips=48, num_frames=16, image_size=16, shape_size=(0.12, 0.2),
                                 speed=1 / 16, seed=5)
    again = SyntheticVideos.setting("time", num_clips=48, num_frames=16, image_size=16, shape_size=(0.12, 0.2),
                                    speed=1 / 16, seed=5)
    np.testing.assert_array_equal(ds[7][0], again[7][0])  # deterministic from the seed
    videos = [(ds[i][0].transpose(0, 2, 3, 1) + 1) / 2 for i in range(len(ds))]
    labels = [ds[i][1] for i in range(len(ds))]
    assert sorted(set(labels)) == [0, 1, 2, 3]
    # The labelled shape is found by its colour, which is the same in every class: the direction it opens moving in
    # is the label, read off the frames in order.
    read = [measure(v, TARGET_COLOUR) for v in videos]
    assert np.mean([r[2] == y for r, y in zip(read, labels, strict=True)]) == 1.0
    shuffled = [v[np.random.default_rng(i).permutation(16)] for i, v in enumerate(videos)]  # the frames out of order
    assert np.mean([measure(v, TARGET_COLOUR)[2] == y for v, y in zip(shuffled, labels, strict=True)]) < 0.6
    assert motion_consistency(videos, speed=1.0, colour=TARGET_COLOUR) > 0.8
    # Distractors pass in front of the labelled shape in some clips and behind it in others: the same clips with
    # the labelled shape always at the bottom differ, and where they do the white shape is on top in some clips.
    bottom = SyntheticVideos(num_clips=48, num_frames=16, image_size=16, label_by="motion", num_shapes=3,
                             target_colour=True, shape_size=(0.12, 0.2), speed=1 / 16, seed=5)
    white = np.asarray(TARGET_COLOUR, np.float32)[None, :, None, None]
    on_top = [((ds[i][0] != bottom[i][0]).any(axis=1) & (ds[i][0] == white).all(axis=1)).any() for i in range(48)]
    assert 0 < sum(on_top) < 48
    colours = {tuple(c) for i in range(8) for c in ds[i][0].transpose(0, 2, 3, 1).reshape(-1, 3).tolist()}
    palette = {tuple(np.float32(c).tolist()) for c in (TARGET_COLOUR, *CLASS_COLOURS, (BACKGROUND,) * 3)}
    assert colours <= palette


def test_settings_are_named_and_fix_their_options() -> None:
    assert SyntheticVideos.setting("shapes", num_clips=2).label_by == "shape"
    with pytest.raises(ValueError, match=r"setting: expected one of \['shapes', 'time'\], got 'motion'"):
        SyntheticVideos.setting("motion")
    with pytest.raises(ValueError, match=r"setting: 'time' fixes \['num_shapes'\]"):
        SyntheticVideos.setting("time", num_shapes=1)
    with pytest.raises(ValueError, match="target_colour: expected False with class_colours=True"):
        SyntheticVideos(class_colours=True, target_colour=True)
