"""A Hugging Face Hub cache written by hand, laid out exactly as ``huggingface_hub`` lays out its downloads, so that
Hub ids resolve offline (``HF_HUB_CACHE`` pointing here, ``HF_HUB_OFFLINE=1``).

huggingface_hub has no offline way to put files into its cache (every writer downloads), so this follows its
``file_download.py`` (``hf_hub_download`` and ``_create_symlink``) and ``_snapshot_download.py``::

    <cache>/models--<org>--<name>/
        blobs/<etag>                        the file's bytes, named by its etag: the sha256 of the content for
                                            LFS files (weights, spiece.model), git's blob sha1 for the others
        refs/<branch or tag>                the commit hash it points at (no newline)
        snapshots/<commit>/<path in repo>   a relative symlink to ../../blobs/<etag> (one more ../ per folder)

``huggingface_hub.scan_cache_dir`` reads it back (tests/hub/test_hub.py checks that it does).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path

# Extensions the Hub's default .gitattributes stores in LFS (those whose etag is the content's sha256).
LFS = (".safetensors", ".pt", ".pth", ".bin", ".model", ".ckpt")


def etag(name: str, data: bytes) -> str:
    """The etag the Hub serves for a file: sha256 for LFS files, the git blob sha1 otherwise."""
    if name.endswith(LFS):
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def folder_files(folder: Path, prefix: str = "") -> dict[str, bytes]:
    """Every file under ``folder`` as ``{path in repo: bytes}``, under ``prefix``."""
    return {prefix + p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def add_commit(cache: Path, repo_id: str, files: Mapping[str, bytes], refs: tuple[str, ...] = ()) -> str:
    """Adds one commit of ``repo_id`` holding ``files`` (path in repo → bytes) to the cache, points each of
    ``refs`` (branches or tags) at it, and returns its commit hash."""
    storage = cache / ("models--" + repo_id.replace("/", "--"))
    tags = {path: etag(path, data) for path, data in sorted(files.items())}
    commit = hashlib.sha1(repr(sorted(tags.items())).encode()).hexdigest()
    for path, data in files.items():
        blob = storage / "blobs" / tags[path]
        blob.parent.mkdir(parents=True, exist_ok=True)
        if not blob.exists():
            blob.write_bytes(data)
        link = storage / "snapshots" / commit / path
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink():
            link.symlink_to(os.path.relpath(blob, link.parent))
    for ref in refs:
        (storage / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (storage / "refs" / ref).write_text(commit)
    return commit
