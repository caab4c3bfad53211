"""`latte_rs.train` on a text-to-video config (``model: LatteT2V``): fine-tuning a Latte-1-shaped folder and
training from scratch, captions encoded by the config's T5 once each, caption dropout to the empty prompt, exact
resume, and the errors that name the key."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import latte_rs

FIXTURES = Path(__file__).parent / "fixtures"
CAPTIONS = ["a red square moving left", "a green disc moving right", "a blue triangle moving up"]


@pytest.fixture(scope="module")
def pipeline_folder(tmp_path_factory) -> Path:
    """A Latte-1-shaped folder: the tiny diffusers transformer (caption_channels 12), the tiny T5 (d_model 12)
    and a SentencePiece tokenizer trained on the captions' words."""
    spm = pytest.importorskip("sentencepiece")
    root = tmp_path_factory.mktemp("latte1")
    shutil.copytree(FIXTURES / "transformer" / "video", root / "transformer")
    shutil.copytree(FIXTURES / "t5" / "gated", root / "text_encoder")
    (root / "tokenizer").mkdir()
    corpus = root / "corpus.txt"
    rng = np.random.default_rng(0)
    words = " ".join(CAPTIONS).split()
    corpus.write_text("\n".join(" ".join(rng.choice(words, 6)) for _ in range(200)))
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(root / "tokenizer" / "spiece"), vocab_size=40,
                                   hard_vocab_limit=False, minloglevel=2, pad_id=0, eos_id=1, unk_id=2, bos_id=-1)
    return root


class Captioned:
    """Latent clips (4, 4, 8, 8) with captions (the items a captioned dataset yields)."""

    def __init__(self, n: int = 6) -> None:
        rng = np.random.default_rng(1)
        self.clips = rng.standard_normal((n, 4, 4, 8, 8)).astype(np.float32)

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int) -> dict:
        return {"video": self.clips[i], "caption": CAPTIONS[i % len(CAPTIONS)], "video_name": 0}


def config(folder: Path, **over) -> dict:
    cfg = dict(model="LatteT2V", pretrained_model_path=str(folder), video_length=4, image_size=64,
               local_batch_size=2, learning_rate=1e-3, max_train_steps=6, ckpt_every=3, log_every=1,
               model_max_length=8, caption_dropout_prob=0.5, global_seed=5)
    return {**cfg, **over}


def _weights(model) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in model.state_dict().items()}


def test_fine_tuning_a_latte1_folder_trains_and_resumes_exactly(pipeline_folder, tmp_path):
    straight = latte_rs.train(config(pipeline_folder), Captioned(), output_dir=tmp_path / "a", progress=False)
    assert isinstance(straight.model, latte_rs.LatteT2VTransformer)
    assert [r["step"] for r in straight.history] == [1, 2, 3, 4, 5, 6]
    assert all(np.isfinite(r["loss"]) for r in straight.history)
    # It starts from the folder's weights, not from a fresh model.
    start = latte_rs.LatteT2VTransformer.from_pretrained(pipeline_folder / "transformer")
    trained = _weights(straight.model)
    assert set(trained) == set(_weights(start))
    assert any(not np.array_equal(trained[k], v) for k, v in _weights(start).items())
    # The null caption is the T5 empty prompt at model_max_length, kept in the checkpoint.
    encoder = latte_rs.T5TextEncoder.from_pretrained(pipeline_folder / "text_encoder")
    features, mask = encoder.empty_prompt(8)
    np.testing.assert_allclose(straight.trainer.null_caption, features * mask[..., None], rtol=0, atol=1e-7)

    latte_rs.train(config(pipeline_folder), Captioned(), output_dir=tmp_path / "b", max_steps=3, progress=False)
    resumed = latte_rs.train(config(pipeline_folder), Captioned(), output_dir=tmp_path / "b", resume=True,
                             progress=False)
    assert resumed.trainer.step_count == 6
    for k, v in _weights(straight.model).items():
        assert np.array_equal(v, np.asarray(resumed.model.state_dict()[k])), k
    a = [r["loss"] for r in straight.history]
    b = [r["loss"] for r in resumed.history]
    assert a == b
    # The checkpoint's EMA loads as a text model for sampling.
    ema = latte_rs.LatteT2VTransformer.from_checkpoint(tmp_path / "a" / "checkpoints" / "0000006")
    assert ema.config == straight.model.config


def test_from_scratch_with_model_config_and_joint_image_captions(pipeline_folder, tmp_path):
    cfg = config(None, text_encoder_path=str(pipeline_folder / "text_encoder"), pixel_space=False,
                 use_image_num=1, max_train_steps=2, ckpt_every=2,
                 model_config=dict(num_layers=1, num_attention_heads=2, attention_head_dim=4,
                                   cross_attention_dim=8, caption_channels=12))
    del cfg["pretrained_model_path"]
    result = latte_rs.train(cfg, Captioned(), output_dir=tmp_path, progress=False)
    c = result.model.config
    assert (c["num_layers"], c["sample_size"], c["video_length"], c["in_channels"], c["out_channels"]) == \
        (1, 8, 4, 4, 8)
    assert result.trainer.step_count == 2


def test_text_configs_name_what_is_missing(pipeline_folder, tmp_path):
    cfg = config(None, max_train_steps=1, model_config=dict(num_layers=1, caption_channels=12))
    del cfg["pretrained_model_path"]
    # Captions without an encoder to turn them into features.
    with pytest.raises(ValueError, match="text_encoder_path"):
        latte_rs.train(cfg, Captioned(), output_dir=tmp_path / "a", progress=False)
    # Features of the wrong width for the model.
    bad = [{"video": np.zeros((4, 4, 8, 8), np.float32), "text_embedding": np.zeros((8, 5), np.float32),
            "text_mask": np.ones(8, np.int64)}] * 2
    with pytest.raises(ValueError, match=r"caption features expected \(L, 12\)"):
        latte_rs.train(dict(cfg, caption_dropout_prob=0.0), bad, output_dir=tmp_path / "b", progress=False)
    # A class model given to a text config.
    with pytest.raises(TypeError, match="LatteT2VTransformer"):
        latte_rs.train(config(pipeline_folder), Captioned(), output_dir=tmp_path / "c", progress=False,
                       model=latte_rs.LatteModel(latte_rs.LatteConfig.preset("Latte-S/2"), seed=0))
    with pytest.raises(ValueError, match="caption_dropout_prob"):
        latte_rs.train(config(pipeline_folder, caption_dropout_prob=2.0), Captioned(), output_dir=tmp_path / "d",
                       progress=False)


def test_mixed_precision_text_training_keeps_f32_master_weights(tmp_path):
    """A bfloat16 text model trains with f32 master weights and resumes exactly, as the class model does."""
    cfg = dict(num_layers=1, num_attention_heads=2, attention_head_dim=4, cross_attention_dim=8, caption_channels=6,
               sample_size=4, video_length=2)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 2, 4, 4, 4)).astype(np.float32)
    text = rng.standard_normal((2, 5, 6)).astype(np.float32)

    def trainer():
        model = latte_rs.LatteT2VTransformer(cfg, seed=0, dtype="bfloat16", init="pixart")
        return latte_rs.Trainer(model, latte_rs.GaussianDiffusion(), lr=1e-3, caption_dropout_prob=0.0)

    a = trainer()
    stats = [a.step(x, encoder_hidden_states=text) for _ in range(4)]
    assert all(np.isfinite(s["loss"]) and not s["skipped"] for s in stats)
    b = trainer()
    for _ in range(2):
        b.step(x, encoder_hidden_states=text)
    b.save(tmp_path / "ckpt")
    b = latte_rs.Trainer.resume(tmp_path / "ckpt")
    rest = [b.step(x, encoder_hidden_states=text) for _ in range(2)]
    assert rest == stats[2:]
    for k, v in a.ema_state_dict().items():
        assert np.array_equal(v, b.ema_state_dict()[k]), k
    with pytest.raises(ValueError, match="init"):
        latte_rs.LatteT2VTransformer(cfg, init="xavier")
