"""Prompts: the T5 encoder against transformers' T5EncoderModel, the tokenizer against transformers'
T5Tokenizer, caption encoding (encode_captions: the pipeline's prompt encoding, which the latent cache uses too)
and the whole text-to-video pipeline against diffusers' LattePipeline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import latte_rs
from conftest import TINY_VAE, TorchTokenizer
from latte_rs.pipelines import LatteT2VPipeline, load_scheduler
from latte_rs.text import T5Tokenizer, encode_captions

FIXTURES = Path(__file__).parent / "fixtures"


def max_rel_err(a, b) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("name", ["gated", "relu"])
def test_t5_encoder_matches_transformers_golden(name):
    with np.load(FIXTURES / "t5" / f"{name}.npz") as z:
        ids, mask, want = z["ids"], z["mask"], z["out"]
    encoder = latte_rs.T5TextEncoder.from_pretrained(FIXTURES / "t5" / name)  # "gated" is sharded
    assert max_rel_err(encoder(ids, mask), want) <= 1e-5
    # Padding matters: without the mask the padded row changes.
    assert max_rel_err(encoder(ids), want) > 1e-3


@pytest.mark.parametrize("name", ["gated", "relu"])
def test_t5_encoder_matches_transformers_live(name):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    with np.load(FIXTURES / "t5" / f"{name}.npz") as z:
        ids, mask = z["ids"], z["mask"]
    ref = transformers.T5EncoderModel.from_pretrained(FIXTURES / "t5" / name).eval()
    with torch.no_grad():
        want = ref(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).last_hidden_state
    ours = latte_rs.T5TextEncoder.from_pretrained(FIXTURES / "t5" / name)
    assert max_rel_err(ours(ids, mask), want.numpy()) <= 1e-5


def test_t5_errors_name_files_and_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="text_encoder/ folder"):
        latte_rs.T5TextEncoder.from_pretrained(tmp_path / "none")
    encoder = latte_rs.T5TextEncoder.from_pretrained(FIXTURES / "t5" / "relu")
    with pytest.raises(ValueError, match=r"input_ids: expected ids in \[0, 60\), got 60"):
        encoder(np.array([[1, 60]]))
    with pytest.raises(ValueError, match=r"attention_mask: expected shape \[1, 2\]"):
        encoder(np.array([[1, 2]]), np.ones((1, 3), np.int64))


@pytest.fixture(scope="module")
def spiece(tmp_path_factory):
    """A tiny SentencePiece model with T5's special pieces (pad 0, eos 1, unk 2)."""
    spm = pytest.importorskip("sentencepiece")
    folder = tmp_path_factory.mktemp("tokenizer")
    text = folder / "corpus.txt"
    words = "a cat walks on green grass under the blue sky while a dog runs near the river at sunset".split()
    rng = np.random.default_rng(0)
    text.write_text("\n".join(" ".join(rng.choice(words, 8)) for _ in range(300)))
    spm.SentencePieceTrainer.train(input=str(text), model_prefix=str(folder / "spiece"), vocab_size=40,
                                   hard_vocab_limit=False, minloglevel=2, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                   model_type="unigram")
    return folder


def test_tokenizer_follows_t5_rules_over_sentencepiece(spiece):
    """T5's tokenizer (transformers' slow ``T5Tokenizer``): the SentencePiece ids, ``</s>`` appended, truncated to
    ``max_length`` with the ``</s>`` kept, right-padded with ``<pad>``. (transformers 5 no longer reads a bare
    ``spiece.model`` this small, so the reference here is sentencepiece itself.)"""
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=str(spiece / "spiece.model"))
    ours = T5Tokenizer(spiece)
    prompts = ["a cat walks on green grass", "the dog runs near the river at sunset under a blue sky", ""]
    for max_length in (120, 6):
        got = ours(prompts, max_length=max_length)
        assert got["input_ids"].shape == (3, max_length)
        for row, ids, mask in zip(prompts, got["input_ids"], got["attention_mask"], strict=True):
            want = sp.encode(row)[: max_length - 1] + [1]
            assert ids[: len(want)].tolist() == want and (ids[len(want):] == 0).all()
            assert mask.tolist() == [1] * len(want) + [0] * (max_length - len(want))
    assert sp.decode(ours("a cat walks")["input_ids"][0].tolist()) == "a cat walks"


def _pipeline_folder(root: Path, spiece: Path) -> Path:
    import shutil

    shutil.copytree(FIXTURES / "transformer" / "video", root / "transformer")
    shutil.copytree(FIXTURES / "t5" / "gated", root / "text_encoder")
    shutil.copytree(TINY_VAE, root / "vae")
    (root / "tokenizer").mkdir()
    shutil.copy(spiece / "spiece.model", root / "tokenizer" / "spiece.model")
    latte_rs.DDIMScheduler(beta_schedule="linear", clip_sample=False).save_config(root / "scheduler")
    return root


def _diffusers_pipeline(folder: Path):
    """diffusers' LattePipeline over the same components."""
    import diffusers
    import transformers

    return diffusers.LattePipeline(
        tokenizer=TorchTokenizer(T5Tokenizer(folder / "tokenizer")),
        text_encoder=transformers.T5EncoderModel.from_pretrained(folder / "text_encoder"),
        vae=diffusers.AutoencoderKL.from_pretrained(folder / "vae"),
        transformer=diffusers.LatteTransformer3DModel.from_pretrained(folder / "transformer"),
        scheduler=diffusers.DDIMScheduler.from_pretrained(folder / "scheduler"),
    )


@pytest.mark.parametrize("prompts", [["a cat walks on green grass"], ["a dog runs", "the blue sky at sunset"]])
def test_pipeline_matches_diffusers_latte_pipeline(prompts, spiece, tmp_path):
    """The same components in diffusers' LattePipeline and in ours, from the same starting latents: one prompt
    (text features cut to the prompt's tokens) and two prompts (padding zeroed), with guidance."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    pytest.importorskip("transformers")
    folder = _pipeline_folder(tmp_path, spiece)
    ref = _diffusers_pipeline(folder)
    latents = np.random.default_rng(0).standard_normal((len(prompts), 4, 4, 8, 8)).astype(np.float32)
    with torch.no_grad():
        want = ref(prompts, negative_prompt="", num_inference_steps=3, guidance_scale=4.0, video_length=4,
                   height=16, width=16, latents=torch.from_numpy(latents), output_type="np", clean_caption=False,
                   mask_feature=True).frames
    pipe = LatteT2VPipeline.from_pretrained(folder)
    out = pipe(prompts, num_inference_steps=3, guidance_scale=4.0, video_length=4, height=16, width=16,
               latents=latents, progress=False)
    assert out.frames.shape == (len(prompts), 4, 16, 16, 3) == np.asarray(want).shape
    assert max_rel_err(out.frames, np.asarray(want)) <= 1e-4
    # Seeded noise: the same seed gives the same video, another seed another.
    a = pipe(prompts, num_inference_steps=2, video_length=4, height=16, width=16, seed=1, output_type="uint8",
             progress=False)
    b = pipe(prompts, num_inference_steps=2, video_length=4, height=16, width=16, seed=1, output_type="uint8",
             progress=False)
    np.testing.assert_array_equal(a.frames, b.frames)
    assert a.frames.dtype == np.uint8


def test_pipeline_errors(tmp_path, spiece):
    folder = _pipeline_folder(tmp_path, spiece)
    pipe = LatteT2VPipeline.from_pretrained(folder)
    with pytest.raises(ValueError, match="height/width: expected multiples of 4"):
        pipe("a cat", height=18, width=16, video_length=4, progress=False)
    with pytest.raises(ValueError, match="output_type"):
        pipe("a cat", output_type="pil", progress=False)
    bare = LatteT2VPipeline(pipe.transformer, pipe.scheduler)
    with pytest.raises(ValueError, match="pass prompt_embeds"):
        bare("a cat", output_type="latent", progress=False)
    embeds = np.zeros((1, 3, 12), np.float32)
    out = bare(prompt_embeds=embeds, negative_prompt_embeds=embeds, num_inference_steps=2, video_length=4,
               height=16, width=16, output_type="latent", progress=False)
    assert out.latents.shape == (1, 4, 4, 2, 2)
    (folder / "scheduler" / "scheduler_config.json").write_text('{"_class_name": "LMSDiscreteScheduler"}')
    with pytest.raises(ValueError, match="LMSDiscreteScheduler.* is not supported"):
        load_scheduler(folder / "scheduler")


def test_pipeline_ddim_eta_matches_diffusers_with_the_same_step_noise(spiece, tmp_path, monkeypatch):
    """DDIM with eta > 0 in the text-to-video pipeline: diffusers' LattePipeline with its DDIM steps' variance noise
    drawn from latte_rs.Generator(seed), in the order our loop draws it, gives our frames."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    pytest.importorskip("transformers")
    from diffusers.schedulers import scheduling_ddim

    folder = _pipeline_folder(tmp_path, spiece)
    ref = _diffusers_pipeline(folder)
    stream = latte_rs.Generator(5)
    monkeypatch.setattr(scheduling_ddim, "randn_tensor",
                        lambda shape, **_: torch.from_numpy(stream.randn(list(shape))))
    latents = np.random.default_rng(0).standard_normal((1, 4, 4, 8, 8)).astype(np.float32)
    kwargs = dict(num_inference_steps=3, guidance_scale=4.0, video_length=4, height=16, width=16)
    with torch.no_grad():
        want = ref(["a cat walks"], negative_prompt="", latents=torch.from_numpy(latents), output_type="np",
                   clean_caption=False, eta=0.8, **kwargs).frames
    pipe = LatteT2VPipeline.from_pretrained(folder)
    got = pipe(["a cat walks"], latents=latents, eta=0.8, seed=5, progress=False, **kwargs)
    assert max_rel_err(got.frames, np.asarray(want)) <= 1e-4
    still = pipe(["a cat walks"], latents=latents, eta=0.0, seed=5, progress=False, **kwargs)
    assert np.abs(still.frames - got.frames).max() > 1e-3  # eta reached the sampler


def test_the_empty_prompt_is_encoded_in_the_core_as_the_tokenizer_would(spiece):
    """The default negative prompt "" is `</s>` and padding for T5's tokenizer; the core makes it without one."""
    encoder = latte_rs.T5TextEncoder.from_pretrained(FIXTURES / "t5" / "gated")
    features, mask = encoder.empty_prompt(6)
    tokens = T5Tokenizer(spiece)([""], max_length=6)
    np.testing.assert_array_equal(mask, tokens["attention_mask"])
    np.testing.assert_array_equal(features, encoder(tokens["input_ids"], tokens["attention_mask"]))
    assert features.shape == (1, 6, encoder.d_model)
    with pytest.raises(ValueError, match="max_length: expected at least 1"):
        encoder.empty_prompt(0)


def test_encode_captions_is_the_pipelines_prompt_encoding_and_the_null_caption(spiece):
    encoder = latte_rs.T5TextEncoder.from_pretrained(FIXTURES / "t5" / "gated")
    tokenizer = T5Tokenizer(spiece)
    features, mask = encode_captions(encoder, tokenizer, [""], max_length=7)
    null, null_mask = encoder.empty_prompt(7)
    np.testing.assert_allclose(features, null, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(mask, null_mask)
    assert features.dtype == np.float32 and mask.dtype == np.int64 and features.shape == (1, 7, encoder.d_model)
    # Lower-cased and stripped, as LatteT2VPipeline encodes prompts (which goes through the same function).
    shouted, _ = encode_captions(encoder, tokenizer, ["  A RED FOX "], max_length=7)
    quiet, _ = encode_captions(encoder, tokenizer, "a red fox", max_length=7)
    np.testing.assert_array_equal(shouted, quiet)
    pipe = LatteT2VPipeline(None, None, text_encoder=encoder, tokenizer=tokenizer)
    embeds, negative = pipe.encode_prompt(["A red fox", "the dog"], mask_feature=False)
    want, _ = encode_captions(encoder, tokenizer, ["a red fox", "the dog"], max_length=120)
    np.testing.assert_array_equal(embeds, want)
    np.testing.assert_array_equal(negative[0], encoder.empty_prompt(120)[0][0])
    with pytest.raises(TypeError, match="texts: expected str items, got int at position 1"):
        encode_captions(encoder, tokenizer, ["a", 3])
    with pytest.raises(ValueError, match="max_length: expected an int >= 1, got 0"):
        encode_captions(encoder, tokenizer, ["a"], max_length=0)
