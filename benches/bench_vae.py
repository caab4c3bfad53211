"""VAE throughput: frames per second of latte-rs's VideoVAE against diffusers' AutoencoderKL, same weights.

Builds the Stable Diffusion VAE architecture (block_out_channels 128/256/512/512, 2 layers per block, the
`vae/` of the Latte checkpoints) with random weights from a seed, saves it as a diffusers folder, and times
encode (mean) and decode of 256x256 frames in each engine on this machine, checking the outputs agree.

    python benches/bench_vae.py [--frames 4] [--size 256] [--repeat 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL

import latte_rs

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cpu_name, write_results  # noqa: E402


def timed(fn, repeat: int):
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return out, min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 1)
    ref = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4).eval()
    x = torch.rand(args.frames, 3, args.size, args.size) * 2 - 1
    with tempfile.TemporaryDirectory() as tmp:
        ref.save_pretrained(tmp, safe_serialization=True)
        ours = latte_rs.VideoVAE.from_pretrained(tmp)
        with torch.no_grad():
            mean_ref, t_enc_ref = timed(lambda: ref.encode(x).latent_dist.mean, args.repeat)
            dec_ref, t_dec_ref = timed(lambda: ref.decode(mean_ref).sample, args.repeat)
        xn = x.numpy()
        z, t_enc = timed(lambda: ours.encode(xn, sample=False, chunk_size=args.frames), args.repeat)
        dec, t_dec = timed(lambda: ours.decode(z, chunk_size=args.frames), args.repeat)
    rel = lambda a, b: float(np.abs(a - b).max() / np.abs(b).max())  # noqa: E731
    print(f"\nSD-VAE architecture, {args.frames} frames of {args.size}x{args.size}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}\n")
    print("| op | diffusers frames/s | latte-rs frames/s | ratio | max rel diff |\n|---|---:|---:|---:|---:|")
    print(f"| encode | {args.frames / t_enc_ref:.2f} | {args.frames / t_enc:.2f} | {t_enc_ref / t_enc:.2f}x "
          f"| {rel(z / ours.scaling_factor, mean_ref.numpy()):.1e} |")
    print(f"| decode | {args.frames / t_dec_ref:.2f} | {args.frames / t_dec:.2f} | {t_dec_ref / t_dec:.2f}x "
          f"| {rel(dec, dec_ref.numpy()):.1e} |")
    print(f"\nhost: {cpu_name()}; best of {args.repeat} after a warm-up")
    rows = []
    for op, ref_s, ours_s, err in (("encode", t_enc_ref, t_enc, rel(z / ours.scaling_factor, mean_ref.numpy())),
                                   ("decode", t_dec_ref, t_dec, rel(dec, dec_ref.numpy()))):
        workload = f"SD VAE {op}, {args.frames} frames of {args.size}x{args.size}"
        # Both engines run in this one process, so peak memory is not per engine.
        rows += [{"workload": workload, "engine": "diffusers", "median_s": ref_s, "peak_rss_mib": None, "ratio": None},
                 {"workload": workload, "engine": "latte-rs", "median_s": ours_s, "peak_rss_mib": None,
                  "ratio": ref_s / ours_s, "max_rel_diff": err}]
    print(f"wrote {write_results('bench_vae', rows)}")


if __name__ == "__main__":
    main()
