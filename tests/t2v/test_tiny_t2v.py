"""The built-in text-to-video model: its captioned synthetic data, the pixel measurement of prompt following, the
reproducible download-free text encoder, prompt following on caption combinations held out of training, and
`latte-rs sample --prompt` out of the box."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import latte_rs
from latte_rs import tiny_t2v
from latte_rs.data.synthetic import HELD_OUT, CaptionedSyntheticVideos, synthetic_caption
from latte_rs.evaluation.prompt_following import measure, prompt_following


def _frames(ds, i):
    return (ds[i]["video"].transpose(0, 2, 3, 1) + 1) / 2


def test_captioned_synthetic_videos_hold_out_combinations():
    train = CaptionedSyntheticVideos(num_clips=300, num_frames=8, image_size=16, seed=1)
    held = CaptionedSyntheticVideos(num_clips=50, num_frames=8, image_size=16, combinations="held_out", seed=1)
    seen = {train.combination(i) for i in range(len(train))}
    assert not seen & set(HELD_OUT) and len(seen) == 64 - len(HELD_OUT) == 56
    assert {held.combination(i) for i in range(len(held))} <= set(HELD_OUT)
    # Every colour, shape and direction, and every pair, of a held-out combination is in the training set.
    for c, s, d in HELD_OUT:
        assert any(x[:2] == (c, s) for x in seen) and any((x[0], x[2]) == (c, d) for x in seen)
        assert any(x[1:] == (s, d) for x in seen)
    item = train[3]
    assert item["caption"] == synthetic_caption(*train.combination(3)) == train.caption(3)
    assert item["video"].shape == (8, 3, 16, 16) and item["video"].dtype == np.float32
    np.testing.assert_array_equal(item["video"], train[3]["video"])  # deterministic
    with pytest.raises(ValueError, match="combinations"):
        CaptionedSyntheticVideos(combinations="some")


def test_the_pixel_measurement_reads_real_clips_exactly():
    """The measurement is the score's reference: on real clips every attribute is read right."""
    ds = CaptionedSyntheticVideos(num_clips=200, num_frames=8, image_size=16, combinations="all", seed=7)
    scores = prompt_following([_frames(ds, i) for i in range(200)], [ds.combination(i) for i in range(200)])
    assert scores == {"colour": 1.0, "shape": 1.0, "direction": 1.0, "all": 1.0, "clips": 200}
    # It is not fooled: a blank clip reads nothing, a mirrored clip the opposite direction, a recoloured clip the
    # new colour.
    assert measure(np.full((8, 16, 16, 3), 0.1)) == (None, None, None)
    i = next(i for i in range(200) if ds.combination(i)[0] == 0 and ds.combination(i)[2] == 0)  # red, right
    s = ds.combination(i)[1]
    assert measure(_frames(ds, i)[:, :, ::-1]) == (0, s, 1)  # left
    assert measure(np.roll(_frames(ds, i), 1, axis=-1))[0] == 1  # red's channels rolled: green
    with pytest.raises(ValueError, match="same non-zero count"):
        prompt_following([], [])


def test_the_text_encoder_and_tokenizer_are_rebuilt_identically(tmp_path):
    """The shipped text side is the recipe's output: rebuilt from scratch, the encoder's weights are identical and
    the tokenizer gives the same ids."""
    from latte_rs.text import T5Tokenizer

    tiny_t2v.build_text_side(tmp_path)
    shipped = tiny_t2v.TINY_T2V
    assert (tmp_path / "text_encoder" / "model.safetensors").read_bytes() == \
        (shipped / "text_encoder" / "model.safetensors").read_bytes()
    assert json.loads((tmp_path / "text_encoder" / "config.json").read_text()) == \
        json.loads((shipped / "text_encoder" / "config.json").read_text())
    texts = tiny_t2v.captions() + [""]
    a = T5Tokenizer(tmp_path / "tokenizer")(texts, max_length=tiny_t2v.MAX_LENGTH)
    b = T5Tokenizer(shipped / "tokenizer")(texts, max_length=tiny_t2v.MAX_LENGTH)
    np.testing.assert_array_equal(a["input_ids"], b["input_ids"])
    # Every word is its own piece (no unknowns), and every caption fits.
    assert (a["input_ids"] != 2).all() and a["attention_mask"].sum(axis=1).max() < tiny_t2v.MAX_LENGTH


@pytest.fixture(scope="module")
def pipe():
    return tiny_t2v.pipeline()


def test_the_builtin_model_follows_held_out_prompts(pipe):
    """Combinations never seen in training: colour, shape and direction, each read off the generated pixels, are
    right far more often than chance (0.25 each; the README has the numbers on more clips)."""
    scores = tiny_t2v.evaluate("held_out", videos_per_combination=2, seed=11, pipe=pipe)
    assert scores["clips"] == 2 * len(HELD_OUT)
    assert scores["colour"] >= 0.9 and scores["direction"] >= 0.8 and scores["shape"] >= 0.8, scores
    # Every attribute comes from the prompt: four prompts that differ in all three, each drawn as asked.
    prompts = [(2, 0, 0), (0, 1, 1), (1, 2, 3), (3, 3, 2)]  # blue square right, red disc left, ...
    videos = tiny_t2v.generate([synthetic_caption(*c) for c in prompts], seed=11, pipe=pipe, progress=False)
    assert [measure(v) for v in videos.frames] == prompts


def test_sample_prompt_works_out_of_the_box(tmp_path, capsys):
    from latte_rs.cli import main

    assert main(["sample", "--prompt", "a green disc moving right", "--num-videos", "2", "--steps", "10",
                 "--no-progress", "--output-dir", str(tmp_path)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["videos"] == 2 and out["frames"] == 8 and out["size"] == [16, 16]
    assert (tmp_path / "grid.png").is_file() and (tmp_path / "sample_001.gif").is_file()
    for argv in (["--classes", "1"], ["--height", "32"]):
        assert main(["sample", "--prompt", "a red cross", "--steps", "2", "--no-progress", "--output-dir",
                     str(tmp_path / "x"), *argv]) != 0
        assert argv[0] in capsys.readouterr().err


def test_the_pipeline_samples_pixel_space_models(pipe):
    embeds, negative = tiny_t2v.encode_prompts(pipe, ["a blue square moving up"])
    assert embeds.shape == (1, tiny_t2v.MAX_LENGTH, 32)
    out = pipe(prompt_embeds=embeds, negative_prompt_embeds=negative, num_inference_steps=3, guidance_scale=2.0,
               progress=False)
    assert out.frames.shape == (1, 8, 16, 16, 3) and out.frames.dtype == np.float32
    assert 0.0 <= out.frames.min() and out.frames.max() <= 1.0
    # Same seed, same video.
    again = pipe(prompt_embeds=embeds, negative_prompt_embeds=negative, num_inference_steps=3, guidance_scale=2.0,
                 progress=False)
    np.testing.assert_array_equal(out.frames, again.frames)
    assert Path(tiny_t2v.CONFIG_FILE).is_file()
    assert isinstance(pipe.transformer, latte_rs.LatteT2VTransformer)


def test_a_run_of_the_recipe_is_evaluated_and_installed_as_the_builtin_model_is(tmp_path, capsys):
    """The recipe's config trains (one step here), its checkpoint is evaluated with the built-in text side and
    a sampler for what it predicts, and `transformer` installs it with that sampler."""
    import yaml

    from latte_rs.cli import main

    cfg = yaml.safe_load((tiny_t2v.TINY_T2V.parent / "tiny_t2v.yaml").read_text())
    cfg.update(text_encoder_path=str(tiny_t2v.TINY_T2V / "text_encoder"), num_clips=8, local_batch_size=2)
    latte_rs.train(cfg, output_dir=tmp_path / "run", max_steps=1, progress=False)
    ckpt = tmp_path / "run" / "checkpoints" / "0000001"
    assert tiny_t2v.pipeline(ckpt).scheduler.config["prediction_type"] == "v_prediction"
    assert main(["tiny-t2v", "evaluate", "--checkpoint", str(ckpt), "--videos", "1", "--steps", "2"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["clips"] == len(HELD_OUT)
    folder = tmp_path / "folder"
    tiny_t2v.install_transformer(tmp_path / "run", folder)
    assert json.loads((folder / "scheduler" / "scheduler_config.json").read_text())["prediction_type"] == "v_prediction"
    installed = latte_rs.LatteT2VTransformer.from_pretrained(str(folder / "transformer")).state_dict()
    ema = latte_rs.LatteT2VTransformer.from_checkpoint(str(ckpt)).state_dict()
    assert installed.keys() == ema.keys()
    for k, v in ema.items():
        np.testing.assert_array_equal(installed[k], v)


def test_the_builtin_models_loss_depends_on_every_attribute_of_the_caption_at_high_noise(capsys):
    """The README's explanation of why the built-in model predicts the velocity, measured by the script that made
    its numbers: at t = 800 the right caption gives a lower loss than any caption with one attribute swapped."""
    import importlib.util

    script = Path(__file__).resolve().parents[2] / "benches" / "t2v_caption_sensitivity.py"
    spec = importlib.util.spec_from_file_location("t2v_caption_sensitivity", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--clips", "16", "--timesteps", "800"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["prediction_type"] == "v_prediction"
    (row,) = result["rows"]
    assert all(row["right"] < 0.9 * row[k] for k in ("colour", "shape", "direction")), row
