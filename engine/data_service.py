"""The tf.data service (`--data_service`): servers that make the training batches on other machines' CPUs.

    python launch.py --mode=data_dispatcher --port=5050 [--data_service_dir=DIR]
    python launch.py --mode=data_worker --dispatcher=HOST:5050 --port=5051      (one per worker machine)
    python launch.py --strategy=mirrored --data_service=grpc://HOST:5050 ...    (the trainer)

The trainer sends the serialisable part of its training pipeline (`datasets/pipeline.py:batches`, graph ops
only) to the dispatcher. Distributed-epoch mode: the dispatcher hands each epoch's chunks (rows, or TFRecord
shards) to the workers in order, so every example goes out once per epoch across them, and a worker that dies
loses only the chunks it held (at most once). The workers batch per replica; the trainer keeps the input clock
and prefetch (`client_tail`). Evaluation stays local. Parallel-epochs mode (every worker the whole stream) is
not offered: the engine's stream is a function of (seed, epoch), so every worker would make the same examples.
"""

from __future__ import annotations

import tensorflow as tf

from engine.config import Config, FlagError


def serve(config: Config) -> dict:
    """Runs a dispatcher or a worker server until the process is stopped."""
    service = tf.data.experimental.service
    if config.mode == "data_dispatcher":
        journal = config.data_service_dir or None
        server = service.DispatchServer(service.DispatcherConfig(port=config.port, work_dir=journal,
                                                                 fault_tolerant_mode=journal is not None))
        print(f"[data_service] dispatcher at grpc://localhost:{config.port}: start workers with --mode=data_worker "
              f"--dispatcher=HOST:{config.port}, then train with --data_service=grpc://HOST:{config.port}", flush=True)
    else:
        if not config.dispatcher:
            raise FlagError("--mode=data_worker needs --dispatcher=HOST:PORT, the dispatcher's address")
        dispatcher = config.dispatcher.split("://")[-1]  # the worker takes HOST:PORT; grpc:// made it hang
        server = service.WorkerServer(service.WorkerConfig(dispatcher_address=dispatcher, port=config.port))
        print(f"[data_service] worker on port {config.port} serving dispatcher {dispatcher}", flush=True)
    server.join()
    return {}
