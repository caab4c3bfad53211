"""PAB and FasterCache side by side with diffusers' own hooks, on a Latte-1-shaped transformer (Latte-1's width:
16 heads × 72, caption 4096; fewer layers so that it runs here) with the same random weights, in one run.

Both sides sample one video with classifier-free guidance (4.5) over ``--steps`` DDIM steps from the same starting
noise and the same random caption features: diffusers as ``LattePipeline``'s loop does (its transformer, its
``DDIMScheduler``, the hooks enabled with ``transformer.enable_cache(config)`` and ``current_timestep_callback``
reading the loop's timestep), latte-rs through ``LatteT2VPipeline`` with ``cache=``. Each side's cached latents are
compared with its own uncached ones (latent MSE, and PSNR over the uncached latents' range); the speed-up is over
its own uncached run, in the process's CPU time (all threads; steadier than wall time on a shared machine).
Settings: diffusers' defaults (PAB: spatial 2, which on Latte-1 also broadcasts the temporal attention, see
docs/caching.md, so latte-rs runs ``PyramidAttentionBroadcast(2, 2)``; FasterCache: the defaults on both sides).

    python benches/bench_cache_diffusers.py [--layers 2] [--frames 16] [--size 16] [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_t2v import LATTE1  # noqa: E402
from common import cpu_label, host, write_results  # noqa: E402

import latte_rs  # noqa: E402


def psnr(a: np.ndarray, ref: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - ref) ** 2))
    peak = float(ref.max() - ref.min())
    return float("inf") if mse == 0 else 10 * np.log10(peak**2 / mse)


def diffusers_loop(transformer, latents, embeds, negative, steps, guidance, clock):
    """LattePipeline's denoising loop (prompt embeddings given): [uncond | cond] batch, guidance, the learned
    variance dropped, a DDIM step; ``clock["t"]`` holds the current timestep for the hooks' callback."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(beta_schedule="linear", clip_sample=False)
    scheduler.set_timesteps(steps)
    both = torch.cat([negative, embeds])
    x = latents * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        clock["t"] = int(t)
        model_input = scheduler.scale_model_input(torch.cat([x, x]), t)
        with torch.no_grad():
            out = transformer(model_input, encoder_hidden_states=both, timestep=t.expand(2), return_dict=False)[0]
        uncond, cond = out.chunk(2)
        out = uncond + guidance * (cond - uncond)
        out = out.chunk(2, dim=1)[0]
        x = scheduler.step(out, t, x).prev_sample
    return x.numpy()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=16, help="latent height and width")
    p.add_argument("--tokens", type=int, default=120)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--clock", choices=("cpu", "wall"), default="wall",
                   help="the time the speed-ups are from: wall (an idle machine) or the process's CPU time (a shared "
                   "one; it also counts threads waiting for work)")
    args = p.parse_args()
    now = time.perf_counter if args.clock == "wall" else time.process_time
    torch.set_num_threads(os.cpu_count() or 1)
    from diffusers import FasterCacheConfig, LatteTransformer3DModel, PyramidAttentionBroadcastConfig

    guidance = 4.5
    rng = np.random.default_rng(0)
    latents = rng.standard_normal((1, 4, args.frames, args.size, args.size), dtype=np.float32)
    embeds = rng.standard_normal((1, args.tokens, 4096), dtype=np.float32)
    negative = rng.standard_normal((1, args.tokens, 4096), dtype=np.float32)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        ref = LatteTransformer3DModel(**{**LATTE1, "num_layers": args.layers, "video_length": args.frames}).eval()
        ref.save_pretrained(f"{tmp}/transformer")
        ours = latte_rs.LatteT2VTransformer.from_pretrained(f"{tmp}/transformer")
        pipe = latte_rs.LatteT2VPipeline(ours, latte_rs.DDIMScheduler(beta_schedule="linear", clip_sample=False))

        clock = {"t": None}

        def timestep():
            return clock["t"]

        def run_diffusers(config):
            if config is not None:
                ref.enable_cache(config)
            start = now()
            out = diffusers_loop(ref, torch.from_numpy(latents), torch.from_numpy(embeds),
                                 torch.from_numpy(negative), args.steps, guidance, clock)
            seconds = now() - start
            if config is not None:
                ref.disable_cache()
            return seconds, out

        def run_ours(cache):
            start = now()
            out = pipe(prompt_embeds=embeds, negative_prompt_embeds=negative, guidance_scale=guidance,
                       num_inference_steps=args.steps, latents=latents, video_length=args.frames,
                       height=8 * args.size, width=8 * args.size, output_type="latent", progress=False,
                       cache=cache)
            return now() - start, out

        settings = [
            ("none", None, None),
            ("PAB (diffusers' default)", PyramidAttentionBroadcastConfig(
                spatial_attention_block_skip_range=2, spatial_attention_timestep_skip_range=(100, 800),
                current_timestep_callback=timestep), lambda: latte_rs.PyramidAttentionBroadcast(2, 2)),
            ("FasterCache (default)", FasterCacheConfig(current_timestep_callback=timestep,
                                                        attention_weight_callback=lambda _: 0.5),
             lambda: latte_rs.FasterCache()),
        ]
        run_ours(None)  # warm-up
        reference, outputs = {}, {}
        workload = (f"Latte-1-shaped transformer ({args.layers} layers, width 1152), 1 video {args.frames}x"
                    f"{args.size}x{args.size} latents, {args.steps} DDIM steps, guidance {guidance}")
        for name, config, make in settings:
            for engine in ("diffusers", "latte-rs"):
                report = None
                if engine == "diffusers":
                    seconds, out = run_diffusers(config)
                else:
                    seconds, result = run_ours(None if make is None else make())
                    out, report = result.latents, result.cache_report
                if name == "none":
                    reference[engine] = (seconds, out)
                base_s, base = reference[engine]
                row = {"workload": workload, "engine": f"{engine} {name}", "median_s": seconds, "clock": args.clock,
                       "peak_rss_mib": None,
                       "ratio": base_s / seconds, "setting": name, "speedup": base_s / seconds,
                       "latent_mse": float(np.mean((out - base) ** 2)), "psnr": psnr(out, base)}
                if report is not None:
                    row["summary"] = report.summary()
                outputs[(name, engine)] = out
                if engine == "latte-rs":
                    # The same rule on the same weights: the two engines' cached latents should agree as closely
                    # as their uncached ones do.
                    row["mse_to_diffusers_same_setting"] = float(np.mean((out - outputs[(name, "diffusers")]) ** 2))
                rows.append(row)
                print(json.dumps(row), flush=True)
        diff = float(np.abs(reference["latte-rs"][1] - reference["diffusers"][1]).max())
        print(f"uncached latte-rs vs diffusers: max abs difference of the latents {diff:.2e}")

    print(f"\n## {workload}\n\nhost: {cpu_label(host())}\n")
    print(f"| engine | cache | {args.clock} s | speed-up | latent PSNR dB (to own uncached) | latent MSE | "
          "MSE to diffusers |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        engine = r["engine"].split(" ")[0]
        psnr_text = "∞" if np.isinf(r["psnr"]) else f"{r['psnr']:.1f}"
        cross = r.get("mse_to_diffusers_same_setting")
        cross_text = "–" if cross is None else f"{cross:.1e}"
        print(f"| {engine} | {r['setting']} | {r['median_s']:.1f} | {r['speedup']:.2f}x | {psnr_text} | "
              f"{r['latent_mse']:.2e} | {cross_text} |")
    out_rows = [{**r, "psnr": None if np.isinf(r["psnr"]) else r["psnr"]} for r in rows]
    print(f"\nwrote {write_results('bench_cache_diffusers', out_rows)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
