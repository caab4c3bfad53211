"""Text-to-video speed: latte-rs's LatteT2VTransformer and T5TextEncoder against diffusers' LatteTransformer3DModel
and transformers' T5EncoderModel on this machine, same random weights and inputs, outputs checked.

Latte-1's transformer width (16 heads × 72, caption 4096) with fewer layers, 16 frames of 32×32 latents (256 px)
and a 120-token caption, batch 2 (classifier-free guidance); T5 at T5-base size (12 layers, d_model 768) on 120
tokens.

    python benches/bench_t2v.py [--layers 2] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_forward import cpu_name  # noqa: E402

import latte_rs  # noqa: E402


def timed(fn, repeat):
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    from diffusers import LatteTransformer3DModel
    from transformers import T5Config, T5EncoderModel

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cfg = dict(num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8,
                   num_layers=args.layers, cross_attention_dim=1152, attention_bias=True, sample_size=64,
                   patch_size=2, activation_fn="gelu-approximate", num_embeds_ada_norm=1000,
                   norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6,
                   caption_channels=4096, video_length=16)
        torch.manual_seed(0)
        ref = LatteTransformer3DModel(**cfg).eval()
        ref.save_pretrained(f"{tmp}/transformer")
        ours = latte_rs.LatteT2VTransformer.from_pretrained(f"{tmp}/transformer")
        rng = np.random.default_rng(0)
        x = rng.standard_normal((2, 4, 16, 32, 32), dtype=np.float32)
        c = rng.standard_normal((2, 120, 4096), dtype=np.float32)
        t = np.array([500, 500])
        with torch.no_grad():
            tr, want = timed(lambda: ref(torch.from_numpy(x), timestep=torch.from_numpy(t),
                                         encoder_hidden_states=torch.from_numpy(c)).sample.numpy(), args.repeat)
        lr, got = timed(lambda: ours(x, t, c), args.repeat)
        err = np.abs(got - want).max() / np.abs(want).max()
        rows.append((f"Latte-1 transformer ({args.layers} layers), B=2, 16×32×32", tr, lr, err))

        t5cfg = T5Config(vocab_size=32128, d_model=768, d_kv=64, d_ff=2048, num_layers=12, num_heads=12,
                         feed_forward_proj="gated-gelu")
        torch.manual_seed(0)
        t5 = T5EncoderModel(t5cfg).eval()
        t5.save_pretrained(f"{tmp}/t5")
        ours_t5 = latte_rs.T5TextEncoder.from_pretrained(f"{tmp}/t5")
        ids = rng.integers(0, 32000, (2, 120))
        mask = np.ones((2, 120), np.int64)
        mask[1, 40:] = 0
        with torch.no_grad():
            tt, want = timed(lambda: t5(input_ids=torch.from_numpy(ids),
                                        attention_mask=torch.from_numpy(mask)).last_hidden_state.numpy(), args.repeat)
        lt, got = timed(lambda: ours_t5(ids, mask), args.repeat)
        err = np.abs(got - want).max() / np.abs(want).max()
        rows.append(("T5 encoder (base size, gated-GELU), B=2, 120 tokens", tt, lt, err))

    print(f"CPU: {cpu_name()}, {threads} threads, torch {torch.__version__}, median of {args.repeat}\n")
    print("| model | PyTorch s | latte-rs s | speed ratio | max rel. diff |\n|---|---:|---:|---:|---:|")
    for name, ref_s, ours_s, err in rows:
        print(f"| {name} | {ref_s:.3f} | {ours_s:.3f} | {ref_s / ours_s:.2f}x | {err:.1e} |")


if __name__ == "__main__":
    main()
