"""The latent cache: regressions for defects the fuzzing campaign found (issue 15; the campaign runs in test_fuzz.py),
one or more asserts each.

A damaged shard is a ValueError naming it when read, and an index pointing outside the cache is refused on open.
"""

from __future__ import annotations

import json

import pytest

import latte_rs
from conftest import TINY_VAE
from latte_rs.data import LatentClips, SyntheticVideos, encode_dataset


def test_a_damaged_latent_cache_is_a_value_error(tmp_path):
    vae = latte_rs.VideoVAE.from_pretrained(TINY_VAE)
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
