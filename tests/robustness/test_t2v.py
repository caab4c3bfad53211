"""The text-to-video transformer and the T5 text encoder: regressions for defects the fuzzing campaign found (issue 15;
the campaign runs in test_fuzz.py), one or more asserts each.

A config declaring a huge layer count or a negative norm_eps is refused, and T5 inputs that used to panic or give NaN
(mask values other than 0/1, an absurd max_length) are ValueErrors.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import latte_rs
from conftest import T2V_VIDEO, T5_GATED


def test_a_text_to_video_config_with_a_huge_layer_count_is_refused(tmp_path):
    folder = tmp_path / "t2v"
    shutil.copytree(T2V_VIDEO, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["num_layers"] = 10**9
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="num_layers"):
        latte_rs.LatteT2VTransformer.from_pretrained(folder)


def test_a_negative_norm_eps_is_refused():
    with pytest.raises(ValueError, match="norm_eps"):
        latte_rs.LatteT2VTransformer(dict(num_layers=1, norm_eps=-1.0, num_attention_heads=2, attention_head_dim=4,
                                          cross_attention_dim=8, caption_channels=6, sample_size=4, video_length=2))


def test_t5_inputs_that_used_to_panic_or_give_nan_are_value_errors():
    # A mask value other than 0/1 overflowed T5's additive mask into NaN; a huge max_length overflowed a capacity.
    t5 = latte_rs.T5TextEncoder.from_pretrained(T5_GATED)
    with pytest.raises(ValueError, match="attention_mask"):
        t5(np.array([[3, 4, 1]]), np.array([[1, 3, 0]]))
    with pytest.raises((ValueError, MemoryError)):
        t5.empty_prompt(2**64 - 1)


@pytest.mark.parametrize("text", ["[]", "3", '"a string"', "null", "[1, 2]"])
def test_a_config_that_is_not_a_json_object_is_refused_by_name(tmp_path, text):
    # Issue 30: `[]` was read as "no keys", i.e. Latte-1's full defaults (2.7 GB allocated before the weights were
    # found not to match).
    folder = tmp_path / "t2v"
    shutil.copytree(T2V_VIDEO, folder)
    (folder / "config.json").write_text(text)
    with pytest.raises(ValueError, match="config.json: expected a JSON object of config keys, got"):
        latte_rs.LatteT2VTransformer.from_pretrained(folder)
    with pytest.raises(ValueError, match="expected a JSON object"):
        latte_rs.LatteT2VConfig.from_json(text)
    with pytest.raises(ValueError, match="LatteConfig: expected a JSON object"):
        latte_rs.LatteConfig.from_json(text)
