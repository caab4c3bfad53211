"""How much does a text-to-video model's training loss depend on the caption? The built-in recipe's measurement
(README, "The built-in text-to-video model"): the denoising loss on clips of the training combinations at fixed
noise levels, with the right captions and with one attribute (colour, shape or direction) swapped for another.
A model whose loss barely moves with the caption at high noise has no reason to use the caption there, where a
clip's layout and motion are decided.

    python benches/t2v_caption_sensitivity.py                                   # the installed built-in model
    python benches/t2v_caption_sensitivity.py --checkpoint run/checkpoints/0008000

The target is what the model predicts (``latte_rs.open_model(path).prediction_type``): the noise, or the velocity
sqrt(alpha_bar) * noise - sqrt(1 - alpha_bar) * x0; the noise and timesteps are fixed by ``--seed``.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from latte_rs import GaussianDiffusion, tiny_t2v
from latte_rs.data.synthetic import CaptionedSyntheticVideos, synthetic_caption


def swaps(combination: tuple[int, int, int]) -> dict[str, tuple[int, int, int]]:
    """The combination as it is, and with each attribute replaced by another value (direction by its opposite)."""
    c, s, d = combination
    return {"right": (c, s, d), "colour": ((c + 1) % 4, s, d), "shape": (c, (s + 1) % 4, d), "direction": (c, s, d ^ 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="a checkpoint of a run of the recipe (default: the installed model)")
    parser.add_argument("--clips", type=int, default=64)
    parser.add_argument("--timesteps", type=int, nargs="+", default=[200, 500, 800])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    pipe = tiny_t2v.pipeline(args.checkpoint)
    prediction_type = pipe.scheduler.config["prediction_type"]
    if prediction_type not in ("epsilon", "v_prediction"):
        raise ValueError("--checkpoint: expected a model that predicts the noise or the velocity, got "
                         f"{prediction_type!r}")
    ds = CaptionedSyntheticVideos(num_clips=args.clips, combinations="train", seed=123)
    x0 = np.stack([ds[i]["video"].transpose(1, 0, 2, 3) for i in range(len(ds))])  # (B, C, F, H, W)
    variants = [swaps(ds.combination(i)) for i in range(len(ds))]
    features = {}
    for name in variants[0]:
        embeds, _ = tiny_t2v.encode_prompts(pipe, [synthetic_caption(*v[name]) for v in variants])
        features[name] = embeds
    noise = np.random.default_rng(args.seed).standard_normal(x0.shape).astype(np.float32)
    alphas_cumprod = GaussianDiffusion().tables()["alphas_cumprod"]  # the trainer's process (the recipe's)
    rows = []
    for t in args.timesteps:
        a, b = np.sqrt(alphas_cumprod[t]), np.sqrt(1 - alphas_cumprod[t])
        x_t = (a * x0 + b * noise).astype(np.float32)
        target = noise if prediction_type == "epsilon" else a * noise - b * x0
        losses = {}
        for name, f in features.items():
            out = pipe.transformer(x_t, np.full(len(x0), t), f)[:, : x0.shape[1]]
            losses[name] = float(((out - target) ** 2).mean())
        rows.append({"t": t, **losses})
    print(f"prediction_type {prediction_type}, {len(x0)} training clips; loss with the right caption and with one "
          "attribute swapped")
    print("| t | right | colour swapped | shape swapped | direction swapped |")
    print("|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['t']} | {r['right']:.2g} | {r['colour']:.2g} | {r['shape']:.2g} | {r['direction']:.2g} |")
    print(json.dumps({"prediction_type": prediction_type, "checkpoint": args.checkpoint, "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
