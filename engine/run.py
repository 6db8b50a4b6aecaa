"""Mode dispatch: what `--mode` runs (`launch.py` calls `run`)."""

from __future__ import annotations

import time

from datasets import tools
from engine import benchmark, data_service, data_tools, evaluate, export, fit, predict, serve
from engine.config import Config
from engine.job import prepare


def run(config: Config) -> dict:
    """Runs `config.mode`; returns the summary (train modes), the evaluation metrics (eval), the data report
    (inspect), the shards' metadata (convert), the benchmark, the preview paths, the export report, the
    prediction summary, or (serve) the page's exit status."""
    started = time.perf_counter()
    if config.mode == "convert":
        return data_tools.convert(config)
    if config.mode == "inspect":
        return data_tools.inspect(config)
    if config.mode == "export":
        return export.run(config)
    if config.mode == "predict":
        return predict.run(config)
    if config.mode == "serve":
        return serve.run(config)
    if config.mode in ("data_dispatcher", "data_worker"):
        return data_service.serve(config)
    job = prepare(config)
    if config.mode == "preview":
        return {"previews": data_tools.preview(job)}
    model = fit.build_model(job)
    with tools.naming_bad_files(job.source):
        if config.mode == "eval":
            return evaluate.run(job, model)
        if config.mode == "benchmark":
            return benchmark.run(job, model)
        return fit.train(job, model, started)
