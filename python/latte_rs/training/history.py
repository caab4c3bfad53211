"""The training history: the loss log (CSV, rewritten atomically) and its plot (PNG)."""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .._files import atomic_write

CSV_FIELDS = ["step", "loss", "mse", "vb", "grad_norm", "lr", "steps_per_sec", "skipped_steps"]


def plot_loss(history: list[Mapping[str, float]], path: str | Path, title: str = "training loss") -> Path:
    """Writes the loss curve (log scale, with the MSE part when present) as a PNG and returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(steps, [h["loss"] for h in history], label="loss", color="tab:blue")
    if history and history[0].get("mse") is not None:
        ax.plot(steps, [h["mse"] for h in history], label="mse", color="tab:orange", alpha=0.7)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if history and all(h["loss"] > 0 for h in history):
        ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        plt.close(fig)


def read_history(path: Path, upto: int) -> list[dict[str, float]]:
    if not path.is_file():
        return []
    with path.open() as f:
        rows = list(csv.DictReader(f))
    out = []
    for r in rows:
        row = {k: (float(v) if v not in ("", "None") else None) for k, v in r.items()}
        row["step"] = int(row["step"])
        if row["step"] <= upto:
            out.append(row)
    return out


def write_history(path: Path, history: list[Mapping[str, Any]]) -> None:
    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
            w.writeheader()
            for h in history:
                w.writerow({k: h.get(k) for k in CSV_FIELDS})

    atomic_write(path, write)
