"""Regression tests for every defect the fuzzing campaign found (issue 15), one or more asserts each.

The campaign itself runs in ``test_fuzz.py``; these pin the individual findings: sizes refused before they are
allocated, hostile files refused, panics turned into exceptions, values checked, NumPy's defaults accepted, and
concurrent forwards during training seeing whole steps.
"""

from __future__ import annotations

import json
import os
import struct
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest

import latte_rs
from conftest import T2V_VIDEO, T5_GATED, TINY_VAE, tiny_config

VAE = TINY_VAE


def _x(cfg: latte_rs.LatteConfig, batch: int = 2, seed: int = 0) -> np.ndarray:
    shape = (batch, cfg.num_frames, cfg.in_channels, cfg.input_size, cfg.input_size)
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------------
# Limits before allocation: absurd sizes are ValueError naming the field, too-large workloads MemoryError.


def test_absurd_config_sizes_are_value_errors_naming_the_field():
    for field, value in [("hidden_size", 10**6), ("depth", 10**6), ("num_frames", 10**9), ("input_size", 2**40)]:
        with pytest.raises(ValueError, match=field):
            latte_rs.LatteConfig(**{field: value})
    with pytest.raises(ValueError, match="fits in 64 bits"):
        latte_rs.LatteConfig(depth=2**70)


def test_models_larger_than_memory_are_memory_errors_before_allocation():
    cfg = latte_rs.LatteConfig(depth=4096, hidden_size=65536, num_heads=16)
    with pytest.raises(MemoryError, match="parameters need more than"):
        cfg.num_parameters()
    with pytest.raises(MemoryError):
        latte_rs.LatteModel(cfg)


def test_huge_schedules_shapes_and_sample_counts_are_refused():
    with pytest.raises(ValueError, match="diffusion_steps"):
        latte_rs.GaussianDiffusion(diffusion_steps=10**12)
    with pytest.raises(ValueError, match="num_train_timesteps"):
        latte_rs.DDPMScheduler(num_train_timesteps=10**12)
    g = latte_rs.Generator(0)
    with pytest.raises(ValueError, match="2\\^40"):
        g.randn([10**7, 10**6])
    with pytest.raises(MemoryError):
        g.randn([2**20, 2**19])  # 2^39 values: allowed in principle, more than this machine has
    model = latte_rs.LatteModel(tiny_config(), seed=0)
    with pytest.raises((MemoryError, ValueError)):
        latte_rs.sample(model, latte_rs.GaussianDiffusion(timestep_respacing="2"), 10**9, progress=False)


def test_a_training_pass_larger_than_memory_is_a_memory_error():
    cfg = tiny_config(depth=4096, hidden_size=16, num_heads=2)
    trainer = latte_rs.Trainer(latte_rs.LatteModel(cfg, seed=0), latte_rs.GaussianDiffusion())
    with pytest.raises(MemoryError, match="training pass"):
        trainer.step(_x(cfg, batch=32768))  # about 1 TB of activations by the lower bound


# ---------------------------------------------------------------------------------------------------------------
# Hostile files.


def _rewrite_safetensors_metadata(path: Path, edit) -> None:
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + n])
    header["__metadata__"]["latte_config"] = json.dumps(edit(json.loads(header["__metadata__"]["latte_config"])))
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n :])


def _saved_checkpoint(tmp_path: Path) -> Path:
    """A freshly saved trainer checkpoint of the tiny model (step 0)."""
    ckpt = tmp_path / "ckpt"
    latte_rs.Trainer(latte_rs.LatteModel(tiny_config(), seed=0), latte_rs.GaussianDiffusion()).save(ckpt)
    return ckpt


def _refresh_manifest(ckpt: Path) -> None:
    """Recomputes the manifest's sizes and CRC-32s, as a hostile author of a checkpoint would."""
    manifest = json.loads((ckpt / "trainer.json").read_text())
    for name, entry in manifest["files"].items():
        data = (ckpt / name).read_bytes()
        entry["bytes"], entry["crc32"] = len(data), zlib.crc32(data)
    (ckpt / "trainer.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(("edit", "error"), [
    (lambda c: {**c, "hidden_size": 10**6}, ValueError),
    (lambda c: {**c, "hidden_size": 65536, "num_heads": 16, "depth": 4096}, MemoryError),
])
def test_a_model_file_declaring_a_huge_model_is_refused_everywhere(tmp_path, edit, error):
    model = latte_rs.LatteModel(tiny_config(), seed=0)
    path = tmp_path / "m.safetensors"
    model.save(path)
    _rewrite_safetensors_metadata(path, edit)
    with pytest.raises(error):
        latte_rs.LatteModel.load(path)
    with pytest.raises(error):
        latte_rs.LatteModel.from_checkpoint(path)
    trainer = latte_rs.Trainer(model, latte_rs.GaussianDiffusion())
    ckpt = tmp_path / "ckpt"
    trainer.save(ckpt)
    _rewrite_safetensors_metadata(ckpt / "model.safetensors", edit)
    _refresh_manifest(ckpt)  # valid checksums: only the sizes can stop it
    with pytest.raises(error):
        latte_rs.Trainer.resume(ckpt)


def test_a_text_to_video_config_with_a_huge_layer_count_is_refused(tmp_path):
    import shutil

    folder = tmp_path / "t2v"
    shutil.copytree(T2V_VIDEO, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["num_layers"] = 10**9
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="num_layers"):
        latte_rs.LatteT2VTransformer.from_pretrained(folder)


def test_named_pipes_and_devices_are_refused_without_blocking(tmp_path):
    fifo = tmp_path / "model.safetensors"
    os.mkfifo(fifo)
    result = {}

    def load():
        try:
            latte_rs.LatteModel.load(fifo)
        except Exception as e:  # noqa: BLE001 - the type is asserted below
            result["error"] = e

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    worker.join(10)
    assert not worker.is_alive(), "loading a named pipe blocked"
    assert isinstance(result.get("error"), ValueError) and "regular file" in str(result["error"])
    with pytest.raises(ValueError, match="regular file"):
        latte_rs.LatteModel.from_checkpoint("/dev/zero")


def test_a_manifest_cannot_point_resume_outside_the_checkpoint(tmp_path):
    ckpt = _saved_checkpoint(tmp_path)
    manifest = json.loads((ckpt / "trainer.json").read_text())
    for name in ("/dev/zero", "../outside.safetensors"):
        files = dict(manifest["files"])
        files[name] = files.pop("ema.safetensors")
        (ckpt / "trainer.json").write_text(json.dumps({**manifest, "files": files}))
        with pytest.raises(ValueError, match="not a file name inside the checkpoint"):
            latte_rs.Trainer.resume(ckpt)


def test_from_checkpoint_on_a_trainer_folder_verifies_the_checksums(tmp_path):
    ckpt = _saved_checkpoint(tmp_path)
    latte_rs.LatteModel.from_checkpoint(ckpt)
    data = bytearray((ckpt / "ema.safetensors").read_bytes())
    data[-5] ^= 0x10  # a flipped bit in a weight: still a valid safetensors file
    (ckpt / "ema.safetensors").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="CRC-32"):
        latte_rs.LatteModel.from_checkpoint(ckpt)


def test_a_corrupt_official_pickle_is_a_value_error(tmp_path):
    torch = pytest.importorskip("torch")
    import zipfile

    model = latte_rs.LatteModel(tiny_config(), seed=0)
    path = tmp_path / "official.pt"
    torch.save({"model": {k: torch.from_numpy(v) for k, v in model.state_dict().items()}}, path)
    with zipfile.ZipFile(path) as z:
        entries = {n: z.read(n) for n in z.namelist()}
    pkl = next(n for n in entries if n.endswith("data.pkl"))
    for damage in (lambda b: b[: len(b) // 2], lambda b: b[:2] + b"\xff" * 8 + b[10:], lambda b: b.replace(b"q", b"r")):
        bad = tmp_path / "bad.pt"
        with zipfile.ZipFile(bad, "w") as z:
            for n, data in entries.items():
                z.writestr(n, damage(data) if n == pkl else data)
        with pytest.raises(ValueError):
            latte_rs.LatteModel.from_checkpoint(bad, preset="Latte-S/2", **_tiny_overrides())


def _tiny_overrides() -> dict:
    cfg = tiny_config()
    return dict(depth=cfg.depth, hidden_size=cfg.hidden_size, num_heads=cfg.num_heads, num_frames=cfg.num_frames,
                input_size=cfg.input_size, in_channels=cfg.in_channels)


def test_a_vae_config_with_zero_groups_is_a_value_error(tmp_path):
    import shutil

    folder = tmp_path / "vae"
    shutil.copytree(VAE, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["norm_num_groups"] = 0
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="norm_num_groups"):
        latte_rs.VideoVAE.from_pretrained(folder)


def test_a_resumed_diffusion_table_shorter_than_its_schedule_is_refused(tmp_path):
    ckpt = _saved_checkpoint(tmp_path)
    diffusion = json.loads((ckpt / "diffusion.json").read_text())
    diffusion["posterior_mean_coef1"] = diffusion["posterior_mean_coef1"][:10]
    (ckpt / "diffusion.json").write_text(json.dumps(diffusion))
    _refresh_manifest(ckpt)
    with pytest.raises(ValueError, match="posterior_mean_coef1"):
        latte_rs.Trainer.resume(ckpt)


# ---------------------------------------------------------------------------------------------------------------
# No panic crosses the boundary, no crash.


def test_vae_frames_with_a_side_of_one_pixel_are_a_value_error():
    vae = latte_rs.VideoVAE.from_pretrained(VAE)
    for shape in [(1, 3, 1, 2), (1, 1, 3, 1, 8), (1, 3, 8, 1)]:
        with pytest.raises(ValueError, match="H, W >="):
            vae.encode(np.zeros(shape, np.float32))
    with pytest.raises(ValueError, match="chunk_size"):
        vae.decode(np.zeros((1, 2, 4, 2, 2), np.float32), chunk_size=0)


def test_an_mlp_of_width_zero_is_a_value_error():
    with pytest.raises(ValueError, match="MLP of width 0"):
        tiny_config(mlp_ratio=0.01)


def test_t5_inputs_that_used_to_panic_or_give_nan_are_value_errors():
    # A mask value other than 0/1 overflowed T5's additive mask into NaN; a huge max_length overflowed a capacity.
    t5 = latte_rs.T5TextEncoder.from_pretrained(T5_GATED)
    with pytest.raises(ValueError, match="attention_mask"):
        t5(np.array([[3, 4, 1]]), np.array([[1, 3, 0]]))
    with pytest.raises((ValueError, MemoryError)):
        t5.empty_prompt(2**64 - 1)


# ---------------------------------------------------------------------------------------------------------------
# Values checked.


def test_trainer_hyper_parameters_that_cannot_work_are_refused():
    model = latte_rs.LatteModel(tiny_config(), seed=0)
    d = latte_rs.GaussianDiffusion()
    for kw in [dict(eps=1e-300), dict(eps=float("nan")), dict(lr=float("inf")), dict(betas=(0.9, 1.0)),
               dict(weight_decay=-1.0), dict(ema_decay=1.5), dict(grad_accumulation=0)]:
        with pytest.raises(ValueError, match=next(iter(kw))):
            latte_rs.Trainer(model, d, **kw)
    with pytest.raises(ValueError, match="1e-300"):
        latte_rs.Trainer(model, d, eps=1e-300)


def test_an_update_that_would_overflow_the_weights_changes_nothing():
    model = latte_rs.LatteModel(tiny_config(), seed=0)
    trainer = latte_rs.Trainer(model, latte_rs.GaussianDiffusion(), lr=1e38, weight_decay=1e10)
    before = model.state_dict()
    with pytest.raises(ValueError, match="non-finite"):
        trainer.step(_x(tiny_config()))
    after = model.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)
    assert trainer.step_count == 0
    skipping = latte_rs.Trainer(model, latte_rs.GaussianDiffusion(), lr=1e38, weight_decay=1e10, skip_nonfinite=True)
    stats = skipping.step(_x(tiny_config()))
    assert stats["skipped"] and all(np.isfinite(v).all() for v in model.state_dict().values())


def test_a_step_counter_at_its_maximum_refuses_to_wrap(tmp_path):
    ckpt = _saved_checkpoint(tmp_path)
    manifest = json.loads((ckpt / "trainer.json").read_text())
    assert "step" in manifest, sorted(manifest)
    manifest["step"] = 2**64 - 1
    (ckpt / "trainer.json").write_text(json.dumps(manifest))
    resumed = latte_rs.Trainer.resume(ckpt)
    assert resumed.step_count == 2**64 - 1
    with pytest.raises(ValueError, match="maximum"):
        resumed.step(_x(tiny_config()))


def test_nan_betas_and_negative_norm_eps_are_refused():
    with pytest.raises(ValueError, match="beta_start"):
        latte_rs.GaussianDiffusion(noise_schedule="scaled_linear", beta_start=float("nan"))
    with pytest.raises(ValueError, match="beta"):
        latte_rs.DDPMScheduler(beta_end=float("nan"))
    with pytest.raises(ValueError, match="trained_betas"):
        latte_rs.DDPMScheduler(num_train_timesteps=2, trained_betas=[0.1, float("nan")])
    with pytest.raises(ValueError, match="alphas_cumprod reaches 0"):
        latte_rs.DPMSolverMultistepScheduler(beta_end=0.5)
    with pytest.raises(ValueError, match="norm_eps"):
        latte_rs.LatteT2VTransformer(dict(num_layers=1, norm_eps=-1.0, num_attention_heads=2, attention_head_dim=4,
                                          cross_attention_dim=8, caption_channels=6, sample_size=4, video_length=2))
    d = latte_rs.GaussianDiffusion(timestep_respacing="ddim2", learn_sigma=False)
    x = np.zeros((1, 2, 4, 2, 2), np.float32)
    with pytest.raises(ValueError, match="eta"):
        d.ddim_sample(x, x, np.array([1]), x, eta=5.0)


def test_float64_training_state_round_trips_exactly(tmp_path):
    model = latte_rs.LatteModel(tiny_config(), dtype="float64", seed=0)
    d = latte_rs.GaussianDiffusion(timestep_respacing="37", noise_schedule="squaredcos_cap_v2")
    trainer = latte_rs.Trainer(model, d)
    trainer.save(tmp_path / "ckpt")
    back = latte_rs.Trainer.resume(tmp_path / "ckpt").diffusion.tables()
    for name, table in d.tables().items():
        assert table.dtype == np.float64
        assert np.array_equal(table.view(np.uint64), back[name].view(np.uint64)), name


def test_nonfinite_outputs_from_finite_inputs_are_errors():
    model = latte_rs.LatteModel(tiny_config(), seed=0)
    with pytest.raises(ValueError, match="range of"):
        model(np.full((1, 4, 4, 8, 8), 1e300), np.array([3]))  # finite in float64, infinite in float32
    with pytest.raises(ValueError, match="output"):
        model(np.full((1, 4, 4, 8, 8), 3e38, np.float32), np.array([3]))
    vae = latte_rs.VideoVAE.from_pretrained(VAE)
    with pytest.raises(ValueError):
        vae.decode(np.full((1, 2, 4, 2, 2), 3e38, np.float32))
    from latte_rs.evaluation.metrics import frechet_distance

    with pytest.raises(ValueError, match="overflowed"):
        frechet_distance(np.full(2, 1e200), np.eye(2) * 1e300, np.zeros(2), np.eye(2))
    with pytest.raises(TypeError, match="real-valued"):
        frechet_distance(np.zeros(2), np.eye(2, dtype=complex), np.zeros(2), np.eye(2))


# ---------------------------------------------------------------------------------------------------------------
# NumPy's defaults.


def test_float64_noise_with_float32_latents_just_works():
    s = latte_rs.DDPMScheduler()
    s.set_timesteps(10)
    x = np.zeros((1, 4, 8, 8), np.float32)
    noise = np.random.default_rng(0).standard_normal((1, 4, 8, 8))  # float64, NumPy's default
    assert s.add_noise(x, noise, np.array([3])).dtype == np.float32
    assert s.step(noise, int(s.timesteps[0]), x).prev_sample.dtype == np.float32
    d = latte_rs.GaussianDiffusion()
    x5 = np.zeros((2, 2, 4, 2, 2), np.float32)
    n5 = np.random.default_rng(0).standard_normal(x5.shape)
    assert np.allclose(d.q_sample(x5, np.array([5, 7]), n5), d.q_sample(x5, np.array([5, 7]), n5.astype(np.float32)))


def test_big_endian_arrays_give_the_native_result():
    model = latte_rs.LatteModel(tiny_config(), seed=0)
    x = _x(tiny_config(), batch=1)
    native = model(x, np.array([10]))
    assert np.array_equal(model(x.astype(">f4"), np.array([10], ">i8")), native)


def test_errors_name_their_argument():
    with pytest.raises(ValueError, match="mlp_ratio: invalid type: null"):
        latte_rs.LatteConfig.from_json('{"mlp_ratio": null}')
    with pytest.raises(ValueError) as info:
        latte_rs.GaussianDiffusion(diffusion_steps=-1)
    assert "while processing 'diffusion_steps'" in getattr(info.value, "__notes__", [])
    with pytest.raises(TypeError) as info:
        latte_rs.Generator("seed")
    assert "while processing 'seed'" in info.value.__notes__
    with pytest.raises(ValueError, match=r"\[1\]: expected an integer"):
        latte_rs.Generator(0).randn([2, -3])
    with pytest.raises(NotImplementedError, match="flash-attn"):
        latte_rs.LatteConfig(attention="flash")


# ---------------------------------------------------------------------------------------------------------------
# Concurrency.


def test_forwards_during_training_see_whole_steps():
    """A forward on the trained model from another thread sees the weights of one step, never a mixture."""
    cfg = tiny_config()
    model = latte_rs.LatteModel(cfg, seed=0)
    trainer = latte_rs.Trainer(model, latte_rs.GaussianDiffusion(), lr=1e-2, seed=0)
    probe, t = _x(cfg, batch=1, seed=5), np.array([500])
    snapshots = [model.state_dict()]
    outputs: list[np.ndarray] = []
    stop = threading.Event()

    def forwards():
        while not stop.is_set():
            outputs.append(model(probe, t))

    reader = threading.Thread(target=forwards)
    reader.start()
    try:
        for i in range(6):
            trainer.step(_x(cfg, seed=i))
            snapshots.append(model.state_dict())
    finally:
        stop.set()
        reader.join()
    check = latte_rs.LatteModel(cfg, seed=0)
    expected = []
    for sd in snapshots:
        check.load_state_dict(sd)
        expected.append(check(probe, t))
    assert len(outputs) > 0
    for out in outputs:
        assert any(np.array_equal(out, e) for e in expected), "a forward saw a half-applied step"


def test_a_damaged_latent_cache_is_a_value_error(tmp_path):
    from latte_rs.data import LatentClips, SyntheticVideos, encode_dataset

    vae = latte_rs.VideoVAE.from_pretrained(VAE)
    out = tmp_path / "cache"
    encode_dataset(SyntheticVideos(num_clips=2, num_frames=2, image_size=8), vae, out, shard_size=1)
    shard = sorted(out.glob("shard-*.safetensors"))[1]
    shard.write_bytes(b"\xff" * 16 + shard.read_bytes()[16:])
    cache = LatentClips(out)
    cache[0]
    with pytest.raises(ValueError, match="unreadable shard"):
        cache[1]
    index = json.loads((out / "index.json").read_text())
    index["shards"][0]["file"] = "../../etc/passwd"
    (out / "index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="not a shard of this cache"):
        LatentClips(out)
