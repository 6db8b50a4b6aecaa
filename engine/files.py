"""The engine's files through tf.io.gfile, so that local paths, gs:// (Cloud TPU) and ram:// (TensorFlow's
in-memory file system, which the tests use) work alike.

A file the engine may write again (config.json, summary.json, eval.json, the report, checkpoints, backups) is
written to a partial file beside it and renamed into place (`write_atomically`): a run killed mid-write keeps
the previous file whole, and a rewrite replaces the file on every file system (writing an existing ram:// file
appends to it).
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Callable

import tensorflow as tf


def partial_path(path: str) -> str:
    """Where a write of `path` goes before it is renamed into place (same folder, same extension)."""
    return os.path.join(os.path.dirname(path), "partial-" + os.path.basename(path))


def write_atomically(path: str, write: Callable[[str], Any]) -> None:
    """`write(partial)` into a fresh partial file (one a killed run left is removed first), then the partial
    file renamed onto `path`."""
    partial = partial_path(path)
    if tf.io.gfile.exists(partial):
        tf.io.gfile.remove(partial)
    write(partial)
    tf.io.gfile.rename(partial, path, overwrite=True)


def write_file(path: str, content: str | bytes) -> None:
    """Writes `content` (text as UTF-8) as the whole of `path`, atomically."""
    def write(partial: str) -> None:
        with tf.io.gfile.GFile(partial, "wb") as f:
            f.write(content)

    write_atomically(path, write)


def write_json(path: str, value: Any, **options: Any) -> None:
    """Writes `value` as JSON (`options` as json.dumps takes them, e.g. indent) as the whole of `path`."""
    write_file(path, json.dumps(value, **options))


def read_json(path: str) -> Any:
    """The JSON value in the file at `path`."""
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def write_through_local(path: str, write: Callable[[str], Any]) -> None:
    """`write(local)` into a local temporary folder, then the file copied into place at `path`: for writers
    that take local paths only (the LiteRT and ONNX exporters)."""
    with tempfile.TemporaryDirectory() as folder:
        local = os.path.join(folder, os.path.basename(path))
        write(local)
        write_atomically(path, lambda partial: tf.io.gfile.copy(local, partial))
