"""Keeps TensorFlow's native start-up noise off the console unless the user asks for it.

This module must not import TensorFlow: it runs before TensorFlow is imported.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from typing import Iterator


def wants_native_logs() -> bool:
    """True when the user asked for TensorFlow's C++ logs with TF_CPP_MIN_LOG_LEVEL=0 or 1."""
    return os.environ.get("TF_CPP_MIN_LOG_LEVEL") in ("0", "1")


@contextlib.contextmanager
def quiet_native_stderr(enabled: bool = True) -> Iterator[None]:
    """Silences C++ writes to stderr (TF's start-up and CUDA probe lines) unless `enabled` is False.

    TF 2.21 prints these before absl logging is initialised, so TF_CPP_MIN_LOG_LEVEL does not reach them.
    What was captured is replayed if the block raises.
    """
    if not enabled:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def import_tensorflow_quietly() -> None:
    """Imports TensorFlow and probes its devices with native stderr silenced (see `wants_native_logs`)."""
    quiet = not wants_native_logs()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with quiet_native_stderr(quiet):
        import tensorflow as tf

        tf.config.list_physical_devices()
    if not wants_native_logs():
        tf.get_logger().setLevel("WARNING")  # tf.distribute logs every device and all-reduce at INFO
