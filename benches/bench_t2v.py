"""Text-to-video speed on this machine, one run:

1. latte-rs's LatteT2VTransformer and T5TextEncoder against diffusers' LatteTransformer3DModel and transformers'
   T5EncoderModel, same random weights and inputs, outputs checked. Latte-1's transformer width (16 heads × 72,
   caption 4096) with fewer layers, 16 frames of 32×32 latents (256 px) and a 120-token caption, batch 2
   (classifier-free guidance); T5 at T5-base size (12 layers, d_model 768) on 120 tokens.
2. The text-to-video pipeline's time per denoising step (DDIM, guidance 4.5, prompt embeddings given), before and
   after the sampling loop moved into Rust: "before" is the loop LatteT2VPipeline ran until then, in Python (the
   guidance batch built in NumPy, the prompt embeddings converted at every step, guidance and the variance split
   in NumPy, a scheduler step through the Python wrapper); "after" is the pipeline now (one call into the core's
   loop). Both at Latte-1's width and at a small width where the per-step overhead is visible; results equal.

    python benches/bench_t2v.py [--layers 2] [--repeat 3] [--steps 5]

Writes benches/results/bench_t2v.json.
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
from bench_forward import peak_rss_mib  # noqa: E402
from common import cpu_name, write_results  # noqa: E402

import latte_rs  # noqa: E402
from latte_rs.pipelines import LatteT2VPipeline  # noqa: E402

LATTE1 = dict(num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, cross_attention_dim=1152,
              attention_bias=True, sample_size=64, patch_size=2, activation_fn="gelu-approximate",
              num_embeds_ada_norm=1000, norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6,
              caption_channels=4096, video_length=16)
SMALL = {**LATTE1, "num_attention_heads": 2, "attention_head_dim": 32, "cross_attention_dim": 64,
         "caption_channels": 256, "num_layers": 1}


def timed(fn, repeat):
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def python_loop(transformer, scheduler, latents, embeds, negative, guidance, steps):
    """The per-step work LatteT2VPipeline did in Python before the loop moved into the core."""
    generator = latte_rs.Generator(0)
    scheduler.set_timesteps(steps)
    both = np.concatenate([negative, embeds], axis=0)
    latents = latents * np.float32(scheduler.init_noise_sigma)
    c = transformer.config["in_channels"]
    for t in scheduler.timesteps:
        x = np.concatenate([latents, latents])
        x = scheduler.scale_model_input(x, t)
        out = transformer(x, np.full(x.shape[0], t), both, True)
        uncond, text = np.split(out, 2)
        out = uncond + guidance * (text - uncond)
        out = out[:, :c] if out.shape[1] == 2 * c else out
        latents = scheduler.step(out, t, latents, generator=generator).prev_sample
    return latents


def pipeline_rows(name: str, cfg: dict, frames: int, size: int, tokens: int, steps: int, repeat: int, tmp: str):
    torch.manual_seed(0)
    from diffusers import LatteTransformer3DModel

    LatteTransformer3DModel(**cfg).save_pretrained(f"{tmp}/{name}")
    transformer = latte_rs.LatteT2VTransformer.from_pretrained(f"{tmp}/{name}")
    scheduler = latte_rs.DDIMScheduler(beta_schedule="linear", clip_sample=False)
    pipe = LatteT2VPipeline(transformer, scheduler)
    rng = np.random.default_rng(0)
    embeds = rng.standard_normal((1, tokens, cfg["caption_channels"]), dtype=np.float32)
    negative = rng.standard_normal((1, tokens, cfg["caption_channels"]), dtype=np.float32)
    latents = rng.standard_normal((1, 4, frames, size, size), dtype=np.float32)
    kwargs = dict(prompt_embeds=embeds, negative_prompt_embeds=negative, num_inference_steps=steps,
                  guidance_scale=4.5, video_length=frames, height=8 * size, width=8 * size, latents=latents,
                  output_type="latent", progress=False)
    before, want = timed(lambda: python_loop(transformer, scheduler, latents, embeds, negative, 4.5, steps), repeat)
    after, got = timed(lambda: pipe(**kwargs).latents, repeat)
    err = float(np.abs(got - want).max() / np.abs(want).max())
    workload = f"T2V pipeline per step, {name} ({cfg['num_layers']} layers), 1 video {frames}×{size}×{size}, CFG"
    return [
        {"workload": workload, "engine": "latte-rs, Python loop (before)", "median_s": before / steps,
         "peak_rss_mib": peak_rss_mib(), "ratio": None, "max_rel_diff": err},
        {"workload": workload, "engine": "latte-rs, Rust loop (after)", "median_s": after / steps,
         "peak_rss_mib": peak_rss_mib(), "ratio": before / after, "max_rel_diff": err},
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--steps", type=int, default=5)
    args = p.parse_args()
    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    from diffusers import LatteTransformer3DModel
    from transformers import T5Config, T5EncoderModel

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cfg = {**LATTE1, "num_layers": args.layers}
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
        err = float(np.abs(got - want).max() / np.abs(want).max())
        workload = f"Latte-1 transformer ({args.layers} layers), B=2, 16×32×32"
        rows += [{"workload": workload, "engine": "diffusers", "median_s": tr, "peak_rss_mib": peak_rss_mib(),
                  "ratio": None, "max_rel_diff": err},
                 {"workload": workload, "engine": "latte-rs", "median_s": lr, "peak_rss_mib": peak_rss_mib(),
                  "ratio": tr / lr, "max_rel_diff": err}]

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
        err = float(np.abs(got - want).max() / np.abs(want).max())
        workload = "T5 encoder (base size, gated-GELU), B=2, 120 tokens"
        rows += [{"workload": workload, "engine": "transformers", "median_s": tt, "peak_rss_mib": peak_rss_mib(),
                  "ratio": None, "max_rel_diff": err},
                 {"workload": workload, "engine": "latte-rs", "median_s": lt, "peak_rss_mib": peak_rss_mib(),
                  "ratio": tt / lt, "max_rel_diff": err}]

        rows += pipeline_rows("Latte-1 width", {**LATTE1, "num_layers": args.layers}, 16, 32, 120, args.steps,
                              args.repeat, tmp)
        rows += pipeline_rows("small width", SMALL, 16, 16, 120, args.steps * 4, args.repeat, tmp)

    path = write_results("bench_t2v", rows)
    print(f"CPU: {cpu_name()}, {threads} threads, torch {torch.__version__}, median of {args.repeat}\n")
    print("| workload | engine | seconds | speed ratio | max rel. diff |\n|---|---|---:|---:|---:|")
    for r in rows:
        ratio = f"{r['ratio']:.2f}x" if r["ratio"] is not None else ""
        print(f"| {r['workload']} | {r['engine']} | {r['median_s']:.4f} | {ratio} | {r['max_rel_diff']:.1e} |")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
