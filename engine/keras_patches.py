"""Work-arounds for upstream Keras bugs, each applied only where it is needed and removable on its own.

keras-team/keras#20585, `Model.fit` under `MultiWorkerMirroredStrategy` (Keras 3.15, TF 2.21), two faults:
1. fit takes its first batch and cross-worker-reduces the whole nested batch just to learn its shapes; the
   collective reduce rejects the structure ("Attempt to convert a value (PerReplica...)"). Shapes only need
   one local replica's batch.
2. the step reduces its scalar logs with `strategy.reduce("MEAN", v, axis=0)`, which fails on scalars
   ("Invalid reduction dimension 0 for input with 0 dimensions"); a cross-replica mean is `axis=None`.
tests/test_multi_worker.py fails without these.
"""

from __future__ import annotations

import tensorflow as tf
from keras.src import tree
from keras.src.backend.tensorflow import trainer as keras_tf_trainer

_keras_reduce_per_replica = keras_tf_trainer.reduce_per_replica


def _build_from_local_batch(self, iterator=None, data_batch=None):
    if self._distribute_strategy is None:
        return
    if iterator is not None:
        for _, _, it in iterator:
            data_batch = tree.map_structure(
                lambda v: self.distribute_strategy.experimental_local_results(v)[0]
                if isinstance(v, tf.distribute.DistributedValues) else v,
                next(it))
            break
    with self.distribute_strategy.scope():
        self._symbolic_build(data_batch=data_batch)


def _reduce_per_replica(values, strategy, reduction="auto"):
    if reduction in ("auto", "mean") and isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return tree.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), values)
    return _keras_reduce_per_replica(values, strategy, reduction)


def patch_for(strategy: tf.distribute.Strategy) -> None:
    """Applies the work-arounds that `strategy` needs (currently only multi-worker ones)."""
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        keras_tf_trainer.TensorFlowTrainer._maybe_symbolic_build = _build_from_local_batch
        keras_tf_trainer.reduce_per_replica = _reduce_per_replica
