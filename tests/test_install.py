"""The install must not put the checkout's generic top-level packages on other programs' import path."""

import json
import os
import subprocess
import sys
import tempfile

from tests.conftest import REPO

PROBE = """
import importlib.util, json
print(json.dumps({name: getattr(importlib.util.find_spec(name), "origin", None)
                  for name in ("engine", "datasets", "models")}))
"""


def test_engine_datasets_models_are_not_importable_outside_the_checkout():
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    with tempfile.TemporaryDirectory() as elsewhere:
        result = subprocess.run([sys.executable, "-c", PROBE], cwd=elsewhere, env=env, capture_output=True,
                                text=True, check=True)
    for name, origin in json.loads(result.stdout).items():
        assert origin is None or not os.path.abspath(origin).startswith(REPO), (name, origin)
