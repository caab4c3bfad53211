"""Captioned videos (folders with .txt captions, WebVid / Open-Sora manifests), the text side of the latent cache
(captions, T5 features, the null caption), the text fields of training batches, and `latte-rs encode` on captioned
videos. How one caption becomes T5 features (encode_captions) is tested with the prompts, in t2v/test_text.py."""

from __future__ import annotations

import csv
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

import latte_rs
from conftest import T5_GATED, TINY_VAE
from latte_rs.data import CaptionedVideos, LatentClips, SyntheticVideos, VideoClips, encode_dataset
from latte_rs.data.batching import batches, shard
from latte_rs.text import T5Tokenizer, encode_captions

av = pytest.importorskip("av")

T5 = T5_GATED
VAE = TINY_VAE
CLIP = dict(num_frames=4, frame_interval=2, image_size=16)


def _write_mp4(path: Path, frames: int, value: int = 0, size: int = 16) -> None:
    """A small mpeg4 video whose frames brighten from `value` on."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=10)
        s.height = s.width = size
        s.pix_fmt = "yuv420p"
        for i in range(frames):
            img = np.full((size, size, 3), (value + i * 9) % 256, np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def _write_frames(folder: Path, frames: int, value: int, size: int = 8) -> None:
    """A frame folder of PNGs that all hold `value` (lossless: an image frame shows which folder it came from)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(frames):
        Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(folder / f"{i:03d}.png")


def _quiet(fn, *args, **kwargs):
    """`fn(...)` and the warnings it raised (every one, not once per place)."""
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        result = fn(*args, **kwargs)
    return result, [str(w.message) for w in record]


@pytest.fixture(scope="module")
def spiece(tmp_path_factory):
    """A tiny SentencePiece model with T5's special pieces (pad 0, eos 1, unk 2)."""
    spm = pytest.importorskip("sentencepiece")
    folder = tmp_path_factory.mktemp("tokenizer")
    words = "a red fox jumps over the lazy brown dog by the lake while birds sing in tall trees".split()
    rng = np.random.default_rng(1)
    (folder / "corpus.txt").write_text("\n".join(" ".join(rng.choice(words, 7)) for _ in range(300)))
    spm.SentencePieceTrainer.train(input=str(folder / "corpus.txt"), model_prefix=str(folder / "spiece"),
                                   vocab_size=40, hard_vocab_limit=False, minloglevel=2, pad_id=0, eos_id=1,
                                   unk_id=2, bos_id=-1, model_type="unigram")
    return folder


@pytest.fixture(scope="module")
def text(spiece):
    return latte_rs.T5TextEncoder.from_pretrained(T5), T5Tokenizer(spiece)


CAPTIONS = ["A red fox jumps", "the lazy brown dog", "Birds sing in tall trees", "a dog by the lake"]


@pytest.fixture(scope="module")
def captioned_folder(tmp_path_factory):
    """Four 8-frame videos with captions beside them, one in a subfolder."""
    root = tmp_path_factory.mktemp("captioned")
    for k, (name, caption) in enumerate(zip(["a", "b", "sub/c", "sub/d"], CAPTIONS, strict=True)):
        _write_mp4(root / f"{name}.mp4", 8, value=40 * k)
        (root / f"{name}.txt").write_text(f"  {caption}\n")
    return root


# ----------------------------------------------------------------------------- datasets


def test_folder_with_txt_captions(tmp_path):
    _write_mp4(tmp_path / "clip.mp4", 8)
    (tmp_path / "clip.txt").write_text("a red fox jumps\n")
    _write_frames(tmp_path / "frames", 10, 200, size=16)
    (tmp_path / "frames.txt").write_text("birds sing")
    _write_mp4(tmp_path / "sub" / "b.mp4", 9, value=100)
    (tmp_path / "sub" / "b.txt").write_text("the lazy dog")
    ds, messages = _quiet(CaptionedVideos, tmp_path, **CLIP, seed=4)
    assert messages == []  # the .txt captions are not "files that are neither videos nor frames"
    assert [p.relative_to(tmp_path).as_posix() for p in ds.sources] == ["clip.mp4", "frames", "sub/b.mp4"]
    assert ds.captions == ["a red fox jumps", "birds sing", "the lazy dog"] and ds.bad == {}
    same = VideoClips(tmp_path, **CLIP, labels=None, seed=4, sources=ds.sources)
    for i in range(len(ds)):
        item = ds[i]
        assert sorted(item) == ["caption", "video", "video_name"]
        assert item["video"].shape == (4, 3, 16, 16) and item["video"].dtype == np.float32
        assert -1 <= item["video"].min() and item["video"].max() <= 1
        assert item["caption"] == ds.caption(i) and item["video_name"] == 0
        np.testing.assert_array_equal(item["video"], same[i][0])  # VideoClips' sampling and transforms
    assert repr(ds).startswith(f"CaptionedVideos({str(tmp_path)!r}, clips=3")


def _manifest(path: Path, rows: list[dict], columns: list[str] | None = None) -> Path:
    if path.suffix == ".csv":
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns or list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows))
    else:
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


@pytest.mark.parametrize("kind", ["opensora_csv", "webvid_csv", "json", "jsonl", "absolute_jsonl"])
def test_manifests(kind, tmp_path):
    videos = tmp_path / "videos"
    names = ["00001/111", "00001/222", "00002/333"]
    for k, name in enumerate(names):
        _write_mp4(videos / f"{name}.mp4", 8, value=50 * k)
    caps = CAPTIONS[:3]
    manifest_dir = tmp_path / "meta"
    manifest_dir.mkdir()
    kwargs = {}
    if kind == "opensora_csv":  # Open-Sora: path, text and more columns; paths relative to the manifest's folder
        shutil.move(str(videos), manifest_dir / "videos")
        rows = [{"path": f"videos/{n}.mp4", "text": c, "num_frames": 8} for n, c in zip(names, caps, strict=True)]
        source = _manifest(manifest_dir / "train.csv", rows)
    elif kind == "webvid_csv":  # WebVid: videoid, contentUrl, duration, page_dir, name (the caption)
        rows = [{"videoid": n.split("/")[1], "contentUrl": "https://example.invalid/v.mp4", "duration": "PT00H00M08S",
                 "page_dir": n.split("/")[0], "name": c} for n, c in zip(names, caps, strict=True)]
        source = _manifest(manifest_dir / "results_2M_train.csv", rows)
        kwargs["video_root"] = videos
    elif kind == "json":
        rows = [{"video": f"{n}.mp4", "caption": c} for n, c in zip(names, caps, strict=True)]
        source = _manifest(manifest_dir / "data.json", rows)
        kwargs["video_root"] = videos
    elif kind == "jsonl":
        rows = [{"video_path": f"{n}.mp4", "prompt": c, "fps": 10} for n, c in zip(names, caps, strict=True)]
        source = _manifest(manifest_dir / "data.jsonl", rows)
        kwargs["video_root"] = videos
    else:
        rows = [{"file": str(videos / f"{n}.mp4"), "text": c} for n, c in zip(names, caps, strict=True)]
        source = _manifest(manifest_dir / "data.jsonl", rows)
    ds, messages = _quiet(CaptionedVideos, source, **CLIP, **kwargs)
    assert messages == [] and ds.bad == {}
    root = manifest_dir / "videos" if kind == "opensora_csv" else videos
    assert ds.sources == [root / f"{n}.mp4" for n in names]
    assert ds.captions == caps and [ds[i]["caption"] for i in range(3)] == caps
    assert ds[2]["video"].shape == (4, 3, 16, 16)


def test_manifest_columns_are_found_or_named(tmp_path):
    _write_mp4(tmp_path / "v.mp4", 8)
    source = _manifest(tmp_path / "m.csv", [{"clip_file": "v.mp4", "description": "a fox"}])
    with pytest.raises(ValueError, match=r"no path column.*\['clip_file', 'description'\].*'video_path'"):
        CaptionedVideos(source, **CLIP)
    with pytest.raises(ValueError, match=r"no caption column.*\['clip_file', 'description'\].*'prompt'"):
        CaptionedVideos(source, **CLIP, path_key="clip_file")
    with pytest.raises(ValueError, match="caption_key: 'caption' is not a column"):
        CaptionedVideos(source, **CLIP, path_key="clip_file", caption_key="caption")
    ds = CaptionedVideos(source, **CLIP, path_key="clip_file", caption_key="description")
    assert ds.captions == ["a fox"] and ds.sources == [tmp_path / "v.mp4"]
    with pytest.raises(ValueError, match="video_root: only for a manifest"):
        CaptionedVideos(tmp_path, **CLIP, video_root=tmp_path)
    with pytest.raises(FileNotFoundError, match="source: no such folder or manifest"):
        CaptionedVideos(tmp_path / "nothing.csv", **CLIP)
    with pytest.raises(FileNotFoundError, match="video_root: no such directory"):
        CaptionedVideos(source, **CLIP, video_root=tmp_path / "none")
    (tmp_path / "m.txt").write_text("v.mp4,a fox")
    with pytest.raises(ValueError, match=r"source: expected a folder or a manifest ending in \.csv"):
        CaptionedVideos(tmp_path / "m.txt", **CLIP)
    (tmp_path / "d.json").write_text('{"path": "v.mp4", "caption": "a fox"}')
    with pytest.raises(ValueError, match="JSON list of rows, got a dict"):
        CaptionedVideos(tmp_path / "d.json", **CLIP)


def test_bad_sources_are_reported_once_and_left_out(tmp_path):
    _write_mp4(tmp_path / "good.mp4", 8)
    (tmp_path / "good.txt").write_text("a red fox")
    _write_mp4(tmp_path / "no_caption.mp4", 8)
    _write_mp4(tmp_path / "empty.mp4", 8)
    (tmp_path / "empty.txt").write_text("  \n\t")
    (tmp_path / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(4000))
    (tmp_path / "corrupt.txt").write_text("noise")
    _write_mp4(tmp_path / "short.mp4", 2)
    (tmp_path / "short.txt").write_text("too short")
    ds, messages = _quiet(CaptionedVideos, tmp_path, **CLIP)
    assert len(messages) == 1
    assert "2 of 5" in messages[0] and "no_caption.mp4" in messages[0] and "empty.mp4" in messages[0]
    assert {Path(k).name: v for k, v in ds.bad.items()} == {"no_caption.mp4": "no caption file no_caption.txt",
                                                           "empty.mp4": "empty caption in empty.txt"}
    assert sorted(p.name for p in ds.sources) == ["corrupt.mp4", "good.mp4", "short.mp4"]
    # Unreadable and too-short videos are found when read: warned about once each, the next good one served.
    items, messages = _quiet(lambda: [ds[i] for i in range(len(ds))] + [ds[i] for i in range(len(ds))])
    assert len(messages) == 2 and any("corrupt.mp4" in m for m in messages) and any("short.mp4" in m for m in messages)
    assert all(item["caption"] == "a red fox" and item["video"].shape == (4, 3, 16, 16) for item in items)
    assert sorted(Path(k).name for k in ds.bad) == ["corrupt.mp4", "empty.mp4", "no_caption.mp4", "short.mp4"]


def test_bad_manifest_rows_are_reported_once_and_left_out(tmp_path):
    _write_mp4(tmp_path / "a.mp4", 8)
    _write_mp4(tmp_path / "b.mp4", 8, value=90)
    lines = [json.dumps({"path": "a.mp4", "caption": "a red fox"}),
             json.dumps({"path": "missing.mp4", "caption": "gone"}),
             json.dumps({"path": "b.mp4", "caption": "   "}),
             "{not json",
             json.dumps({"caption": "no path"}),
             json.dumps(["a.mp4", "a list"]),
             "",
             json.dumps({"path": "b.mp4", "caption": "the lazy dog"})]
    (tmp_path / "m.jsonl").write_text("\n".join(lines))
    ds, messages = _quiet(CaptionedVideos, tmp_path / "m.jsonl", **CLIP)
    assert len(messages) == 1 and "leaving out 5 of 7" in messages[0]
    assert sorted(ds.bad) == ["row 2", "row 3", "row 4", "row 5", "row 6"]
    assert "missing.mp4" in ds.bad["row 2"] and "'caption'" in ds.bad["row 3"] and "'path'" in ds.bad["row 5"]
    assert ds.captions == ["a red fox", "the lazy dog"]
    assert [ds[i]["caption"] for i in range(2)] == ["a red fox", "the lazy dog"]
    # CSV: a row with an empty cell; nothing left at all is an error naming the source.
    _manifest(tmp_path / "m.csv", [{"path": "a.mp4", "text": ""}, {"path": "", "text": "x"}])
    with pytest.raises(ValueError, match=r"source: none of the 2 videos of .*m\.csv.*row 1: no 'text'"):
        CaptionedVideos(tmp_path / "m.csv", **CLIP)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="source: no video files"):
        CaptionedVideos(empty, **CLIP)


def test_joint_image_captions_come_from_the_image_frames_sources(tmp_path):
    values = [30, 90, 150, 210]
    for k, v in enumerate(values):
        _write_frames(tmp_path / f"clip{k}", 8, v)
        (tmp_path / f"clip{k}.txt").write_text(f"caption {k}")
    kw = dict(num_frames=2, frame_interval=2, image_size=8, resize="none", seed=5, use_image_num=3)
    ds = CaptionedVideos(tmp_path, **kw)
    plain = VideoClips(tmp_path, **kw, labels=None, sources=ds.sources)
    seen = set()
    for i in range(len(ds)):
        item = ds[i]
        assert item["video"].shape == (5, 3, 8, 8) and item["caption"] == f"caption {i}"
        assert len(item["image_captions"]) == 3
        np.testing.assert_array_equal(item["video"], plain[i]["video"])  # the frames VideoClips appends
        for frame, caption in zip(item["video"][2:], item["image_captions"], strict=True):
            source = values.index(int(round((frame[0, 0, 0] * 0.5 + 0.5) * 255)))
            assert caption == f"caption {source}"
            seen.add(source)
    assert len(seen) > 1


# ----------------------------------------------------------------------------- the text side of the cache


@pytest.fixture(scope="module")
def text_cache(captioned_folder, text, tmp_path_factory):
    encoder, tokenizer = text
    ds = CaptionedVideos(captioned_folder, **CLIP, seed=2)
    vae = latte_rs.VideoVAE.from_pretrained(VAE)
    out = encode_dataset(ds, vae, tmp_path_factory.mktemp("cache") / "c", shard_size=3, seed=7, chunk_size=2,
                         progress=False, text_encoder=encoder, tokenizer=tokenizer, max_length=8)
    return ds, vae, LatentClips(out)


def test_encode_dataset_stores_captions_features_and_the_null_caption(text, text_cache):
    from safetensors import safe_open

    encoder, tokenizer = text
    ds, vae, cache = text_cache
    assert len(cache) == 4 and [s["count"] for s in cache.index["shards"]] == [3, 1]
    assert cache.index["captions"] is True
    assert cache.index["text"] == {"max_length": 8, "d_model": encoder.d_model, "dtype": "float32",
                                   "null": "null_caption.safetensors"}
    with safe_open(str(cache.path / "shard-00000.safetensors"), framework="numpy") as f:
        assert json.loads(f.metadata()["captions"]) == CAPTIONS[:3]
        assert f.get_tensor("text_embeddings").shape == (3, 8, encoder.d_model)
        assert f.get_tensor("text_mask").dtype == np.int64
    for i in range(4):
        item = cache[i]
        assert sorted(item) == ["caption", "text_embedding", "text_mask", "video", "video_name"]
        assert item["caption"] == CAPTIONS[i] == ds.caption(i) == cache.caption(i)
        tokens = tokenizer([CAPTIONS[i].lower()], max_length=8)
        direct = encoder(tokens["input_ids"], tokens["attention_mask"])[0]
        assert item["text_embedding"].dtype == np.float32 and item["text_embedding"].shape == (8, encoder.d_model)
        np.testing.assert_allclose(item["text_embedding"], direct, rtol=0, atol=1e-6)
        np.testing.assert_array_equal(item["text_mask"], tokens["attention_mask"][0])
        assert item["text_mask"].dtype == np.int64 and item["video_name"] == 0
        np.testing.assert_array_equal(item["video"], vae.encode(ds[i]["video"][None], seed=7 + i)[0])
    null, mask = cache.null_caption
    want, want_mask = encoder.empty_prompt(8)
    assert null.shape == (1, 8, encoder.d_model) and null.dtype == np.float32 and mask.dtype == np.int64
    np.testing.assert_allclose(null, want, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(mask, want_mask)
    assert not np.allclose(cache[0]["text_embedding"], null[0])  # a caption is not the empty prompt


def test_captions_without_text_float16_and_refusals(captioned_folder, text, tmp_path):
    encoder, tokenizer = text
    ds = CaptionedVideos(captioned_folder, **CLIP)
    vae = latte_rs.VideoVAE.from_pretrained(VAE)
    plain = LatentClips(encode_dataset(ds, vae, tmp_path / "plain", progress=False))
    assert plain.has_captions and plain.text is None and plain.null_caption is None
    assert sorted(plain[1]) == ["caption", "video", "video_name"] and plain[1]["caption"] == CAPTIONS[1]
    half = LatentClips(encode_dataset(ds, vae, tmp_path / "half", progress=False, text_encoder=encoder,
                                      tokenizer=tokenizer, max_length=6, text_dtype="float16"))
    from safetensors import safe_open

    with safe_open(str(half.path / "shard-00000.safetensors"), framework="numpy") as f:
        assert f.get_tensor("text_embeddings").dtype == np.float16
    want, _ = encode_captions(encoder, tokenizer, [CAPTIONS[2]], max_length=6)
    assert half[2]["text_embedding"].dtype == np.float32
    np.testing.assert_allclose(half[2]["text_embedding"], want[0], rtol=2e-3, atol=2e-3)
    assert half.index["text"]["dtype"] == "float16" and half.null_caption[0].shape == (1, 6, encoder.d_model)

    class Loud:
        """A text encoder whose features float16 cannot hold."""

        def __call__(self, ids, mask):
            return np.full((*np.shape(ids), 4), 1e5, np.float32)

    with pytest.raises(ValueError, match="text_dtype: 'float16' cannot hold"):
        encode_dataset(ds, vae, tmp_path / "loud", progress=False, text_encoder=Loud(), tokenizer=tokenizer,
                       text_dtype="float16")
    with pytest.raises(ValueError, match="tokenizer: encoding captions needs a text encoder and its tokenizer"):
        encode_dataset(ds, vae, tmp_path / "x", text_encoder=encoder)
    with pytest.raises(ValueError, match="text_dtype: expected 'float32' or 'float16', got 'bfloat16'"):
        encode_dataset(ds, vae, tmp_path / "x", text_encoder=encoder, tokenizer=tokenizer, text_dtype="bfloat16")
    with pytest.raises(ValueError, match="text_encoder: the dataset's items carry no captions"):
        encode_dataset(SyntheticVideos(num_clips=2, num_frames=4, image_size=16), vae, tmp_path / "x",
                       progress=False, text_encoder=encoder, tokenizer=tokenizer)
    joint = CaptionedVideos(captioned_folder, **CLIP, use_image_num=2)
    with pytest.raises(ValueError, match="without use_image_num"):
        encode_dataset(joint, vae, tmp_path / "x", progress=False)
    with pytest.raises(ValueError, match="without use_image_num"):  # a joint dict item from any dataset
        encode_dataset([joint[0]], vae, tmp_path / "x", progress=False)


# ----------------------------------------------------------------------------- batches


def test_batches_carry_the_text_fields_and_resume(text_cache):
    _, _, cache = text_cache
    features = {cache[i]["caption"]: cache[i]["text_embedding"] for i in range(len(cache))}
    masks = {cache[i]["caption"]: cache[i]["text_mask"] for i in range(len(cache))}
    full = [b for _, b in zip(range(5), batches(cache, 2, seed=3), strict=False)]
    for step, b in enumerate(full):
        epoch, offset = divmod(step, 2)
        idx = shard(len(cache), 3, epoch)[offset * 2:offset * 2 + 2]
        assert b.captions == [CAPTIONS[i] for i in idx]
        assert b.text_embeddings.shape == (2, 8, 12) and b.text_mask.shape == (2, 8)
        assert b.text_embeddings.dtype == np.float32 and b.text_mask.dtype == np.int64
        np.testing.assert_array_equal(b.text_embeddings, np.stack([features[c] for c in b.captions]))
        np.testing.assert_array_equal(b.text_mask, np.stack([masks[c] for c in b.captions]))
        assert b.image_captions is None
    later = [b for _, b in zip(range(2), batches(cache, 2, seed=3, start_step=3), strict=False)]
    for a, b in zip(full[3:], later, strict=True):
        assert a.captions == b.captions
        np.testing.assert_array_equal(a.latents, b.latents)
        np.testing.assert_array_equal(a.text_embeddings, b.text_embeddings)
    # Joint: the image frames from other clips bring those clips' captions and features.
    joint = [b for _, b in zip(range(3), batches(cache, 2, seed=3, use_image_num=3, num_frames=4), strict=False)]
    videos = {cache[i]["caption"]: cache[i]["video"] for i in range(len(cache))}
    for b in joint:
        assert b.latents.shape == (2, 7, 4, 8, 8)
        assert b.text_embeddings.shape == (2, 4, 8, 12) and b.text_mask.shape == (2, 4, 8)
        assert len(b.image_captions) == 2 and all(len(c) == 3 for c in b.image_captions)
        for j in range(2):
            np.testing.assert_array_equal(b.text_embeddings[j, 0], features[b.captions[j]])
            for k, caption in enumerate(b.image_captions[j]):
                np.testing.assert_array_equal(b.text_embeddings[j, 1 + k], features[caption])
                np.testing.assert_array_equal(b.text_mask[j, 1 + k], masks[caption])
                frame = b.latents[j, 4 + k]
                assert any(np.array_equal(frame, f) for f in videos[caption]), "frame not from its caption's clip"
    resumed = [b for _, b in zip(range(2), batches(cache, 2, seed=3, use_image_num=3, num_frames=4, start_step=1),
                                  strict=False)]
    for a, b in zip(joint[1:], resumed, strict=True):
        assert a.image_captions == b.image_captions
        np.testing.assert_array_equal(a.text_embeddings, b.text_embeddings)
        np.testing.assert_array_equal(a.latents, b.latents)


def test_batches_of_captioned_pixels_and_of_class_data(captioned_folder):
    ds = CaptionedVideos(captioned_folder, **CLIP, use_image_num=2)
    b = next(batches(ds, 2, seed=0, use_image_num=2, num_frames=4))
    assert b.latents.shape == (2, 6, 3, 16, 16) and b.text_embeddings is None and b.text_mask is None
    assert all(c in CAPTIONS for c in b.captions) and len(b.image_captions) == 2
    assert all(len(c) == 2 and set(c) <= set(CAPTIONS) for c in b.image_captions)
    synthetic = SyntheticVideos(num_clips=4, num_frames=4, image_size=8, seed=0)
    for b in (next(batches(synthetic, 2, seed=1)), next(batches(synthetic, 2, seed=1, use_image_num=2, num_frames=4))):
        assert b.labels.shape == (2,)
        assert (b.text_embeddings, b.text_mask, b.captions, b.image_captions) == (None, None, None, None)


# ----------------------------------------------------------------------------- command line


def test_cli_encode_a_captioned_folder(captioned_folder, spiece, tmp_path, capsys):
    from latte_rs.cli import main

    shutil.copytree(T5, tmp_path / "Latte-1" / "text_encoder")
    (tmp_path / "Latte-1" / "tokenizer").mkdir()
    shutil.copy(spiece / "spiece.model", tmp_path / "Latte-1" / "tokenizer" / "spiece.model")
    base = ["encode", "--vae", str(VAE), "--set", "num_frames=4", "--set", "image_size=16", "--set",
            "frame_interval=2", "--no-progress"]
    argv = base + ["--dataset", "captions", "--root", str(captioned_folder), "--text-encoder",
                   str(tmp_path / "Latte-1" / "text_encoder"), "--max-length", "8", "--output", str(tmp_path / "c")]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["clips"] == 4 and summary["captions"] is True and summary["max_length"] == 8
    cache = LatentClips(tmp_path / "c")
    assert [cache[i]["caption"] for i in range(4)] == CAPTIONS and cache[0]["text_embedding"].shape == (8, 12)
    assert cache.index["text"]["dtype"] == "float32" and cache.null_caption[1].shape == (1, 8)
    # Errors name the option: no tokenizer beside the text encoder, manifest options on a non-caption dataset.
    shutil.copytree(T5, tmp_path / "alone" / "text_encoder")
    assert main(base + ["--dataset", "captions", "--root", str(captioned_folder), "--text-encoder",
                        str(tmp_path / "alone" / "text_encoder"), "--output", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("latte-rs: error: --tokenizer") and "spiece.model" in err
    assert main(base + ["--dataset", "synthetic", "--caption-key", "text", "--output", str(tmp_path / "e")]) == 2
    assert "--caption-key: only with --dataset captions" in capsys.readouterr().err
    assert not (tmp_path / "d").exists() and not (tmp_path / "e").exists()
