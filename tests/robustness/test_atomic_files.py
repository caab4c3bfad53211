"""Every file the package writes goes through ``latte_rs._files.atomic_write``: a failed write leaves the old file
as it was and no temporary file behind; the new file gets the permissions of a newly created one."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest

from latte_rs._files import atomic_write, atomic_write_text
from latte_rs.video_io import save_gif, save_mp4, save_png


def test_a_failed_write_keeps_the_old_file_and_leaves_nothing(tmp_path: Path) -> None:
    path = atomic_write_text(tmp_path / "state.json", "old")

    def fail(tmp: Path) -> None:
        tmp.write_text("half of the new")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, fail)
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_new_files_get_the_umask_permissions_and_keep_their_suffix(tmp_path: Path) -> None:
    seen = []
    path = atomic_write(tmp_path / "stats.npz", lambda tmp: (seen.append(tmp.name), np.savez(tmp, a=np.ones(2))))
    assert seen[0].endswith(".npz")  # np.savez would otherwise append one and miss the rename
    assert np.load(path)["a"].tolist() == [1.0, 1.0]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


@pytest.mark.parametrize("save, suffix", [(save_gif, ".gif"), (save_mp4, ".mp4"), (save_png, ".png")])
def test_the_media_writers_replace_their_files_whole(tmp_path: Path, save, suffix: str) -> None:
    clip = np.zeros((2, 8, 8, 3), np.uint8)
    data = clip[0] if save is save_png else clip
    path = save(data, tmp_path / f"out{suffix}")
    first = path.read_bytes()
    save(data, path)  # over an existing file
    assert path.read_bytes()[:4] == first[:4] and path.stat().st_size > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"out{suffix}"]
