"""The curve of speed-up against fidelity per caching method on the built-in text-to-video model, from the rows
``bench_teacache.py`` and ``bench_cache.py`` wrote (``benches/results/``), as the SVG the caching page shows.

    python benches/plot_cache.py [--output docs/caching-speed-fidelity.svg]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
DOCS = Path(__file__).resolve().parents[1] / "docs"


#: Short point labels for bench_cache.py's settings.
SHORT = {"pab": "default", "pab-pyramid": "2/3/4", "pab-wide": "4/6/8 wide", "fastercache": "default",
         "fastercache-temporal": "+temporal"}


def points() -> dict[str, list[tuple[float, float, str]]]:
    """(speed-up, PSNR, label) per method; the uncached run is (1, none) and left out."""
    series: dict[str, list[tuple[float, float, str]]] = {}
    teacache = json.loads((RESULTS / "bench_teacache.json").read_text())["rows"]
    for r in teacache:
        if r["engine"].startswith("teacache") and r.get("psnr") is not None and r["engine"].count(" ") == 1:
            series.setdefault("TeaCache (wall time, idle machine)", []).append(
                (r["speedup"], r["psnr"], r["engine"].split(" ")[1]))
    cache = json.loads((RESULTS / "bench_cache.json").read_text())["rows"]
    for r in cache:
        if r.get("psnr") is None:
            continue
        method = {"pab": "PAB", "fastercache": "FasterCache"}.get(r["engine"].split("-")[0])
        if method:
            label = SHORT.get(r["engine"], r["engine"])
            series.setdefault(f"{method} (CPU time, shared machine)", []).append((r["speedup"], r["psnr"], label))
    return {k: sorted(v) for k, v in series.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=DOCS / "caching-speed-fidelity.svg")
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matplotlib.rcParams["svg.hashsalt"] = "latte-rs"  # the same file for the same data
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for (name, pts), marker in zip(points().items(), "osD^v", strict=False):
        xs, ys, labels = zip(*pts, strict=True)
        ax.plot(xs, ys, marker=marker, label=name)
        for i, (x, y, label) in enumerate(pts):
            # Alternate above and below, so that neighbouring points' labels do not overlap.
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4 if i % 2 == 0 else -10), fontsize=7)
    ax.axhline(28, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("speed-up over the uncached sampling loop")
    ax.set_ylabel("PSNR to the uncached frames (dB)")
    ax.set_title("Built-in text-to-video model, 50 DDPM steps, guidance 4")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.output, metadata={"Date": None})
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
