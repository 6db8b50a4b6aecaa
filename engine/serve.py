"""`--mode=serve`: the prediction page (engine/page.py) of an exported model, started with Streamlit.

The page loads the export's SavedModel alone, so what it shows is what TensorFlow Serving would answer:

    python launch.py --mode=serve --model_dir=RUN          # RUN/export, written by --mode=export
    python launch.py --mode=serve --export=DIR --port=8502  # an export directory or its saved_model/
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys

from engine.config import Config, FlagError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGE = os.path.join(REPO, "engine", "page.py")


def export_dir(config: Config) -> str:
    """The export directory the page serves: --export (its parent when it names the saved_model directory),
    else --model_dir/export; it must hold a saved_model/."""
    if config.export:
        found = os.path.abspath(config.export.rstrip("/"))
        if os.path.basename(found) == "saved_model":
            found = os.path.dirname(found)
    elif config.model_dir:
        found = os.path.abspath(os.path.join(config.model_dir, "export"))
    else:
        raise FlagError("--mode=serve needs --model_dir=RUN (a run exported with --mode=export) or --export=DIR")
    if not os.path.isdir(os.path.join(found, "saved_model")):
        run = config.model_dir or "RUN"
        raise FlagError(f"{found} holds no saved_model/: run `python launch.py --mode=export --model_dir={run}` first")
    return found


def page_command(export: str, port: int) -> list[str]:
    """The command that serves the page of `export` on `port`."""
    return [sys.executable, "-m", "streamlit", "run", PAGE, f"--server.port={port}", "--server.headless=true",
            "--browser.gatherUsageStats=false", "--", f"--export={export}"]


def page_env() -> dict[str, str]:
    """The page's environment: the repository importable (datasets.drawing) and TensorFlow's C++ logs quiet."""
    path = os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}


def run(config: Config) -> int:
    """Serves the prediction page of the run's export until Streamlit exits, Ctrl-C or SIGTERM; returns its exit
    status (0 after Ctrl-C)."""
    if importlib.util.find_spec("streamlit") is None:
        raise FlagError('--mode=serve needs Streamlit: pip install -e ".[app]"')
    export = export_dir(config)
    page = subprocess.Popen(page_command(export, config.port), cwd=REPO, env=page_env())
    signal.signal(signal.SIGTERM, lambda signum, frame: page.terminate())  # a stopped server stops its page
    print(f"[serve] http://localhost:{config.port} (Ctrl-C stops)", flush=True)
    try:
        return page.wait()
    except KeyboardInterrupt:
        page.terminate()
        page.wait()
        return 0
