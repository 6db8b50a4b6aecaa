"""Work-arounds for upstream Keras bugs, each applied only where it is needed and removable on its own.

keras-team/keras#20585, `Model.fit` under `MultiWorkerMirroredStrategy` (Keras 3.15, TF 2.21), two faults:
1. fit takes its first batch and cross-worker-reduces the whole nested batch just to learn its shapes; the
   collective reduce rejects the structure ("Attempt to convert a value (PerReplica...)"). Shapes only need
   one local replica's batch.
2. the step reduces its scalar logs with `strategy.reduce("MEAN", v, axis=0)`, which fails on scalars
   ("Invalid reduction dimension 0 for input with 0 dimensions"); a cross-replica mean is `axis=None`.
tests/test_multi_worker.py fails without these.

keras-team/keras#19246, `steps_per_execution > 1` under `MirroredStrategy` (and multi-worker): Keras' multi-step
loop runs each step inside a `tf.cond` (to stop at the end of the data), and a step whose replicas merge (the
optimizer's all-reduce) fails there ("You must feed a value for placeholder tensor"). The replacement runs the
steps in a `tf.while_loop` whose condition checks for the next batch, with no `tf.cond` around a step.
tests/test_train.py fails without it.
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


_keras_make_function = keras_tf_trainer.TensorFlowTrainer._make_function


def _make_multi_step_function(self, step_function):
    """Keras' train/test function for `steps_per_execution` > 1: up to that many steps per call, the next batch
    fetched as an optional and checked by the loop's condition, not by a `tf.cond` around the step."""
    if self.steps_per_execution == 1:
        return _keras_make_function(self, step_function)
    steps = self.steps_per_execution

    @tf.function(reduce_retracing=True, jit_compile=self.jit_compile)
    def one_step_on_data(data):
        outputs = self.distribute_strategy.run(step_function, args=(data,))
        return keras_tf_trainer.reduce_per_replica(outputs, self.distribute_strategy, reduction="auto")

    @tf.function(reduce_retracing=True)
    def multi_step_on_iterator(iterator):
        first = one_step_on_data(iterator.get_next())  # at the end of the data: OutOfRange, the epoch's end

        def body(step, outputs, next_inputs):
            outputs = one_step_on_data(next_inputs.get_value())
            next_inputs = tf.cond(step + 1 < steps, iterator.get_next_as_optional, lambda: next_inputs)
            return step + 1, outputs, next_inputs

        _, outputs, _ = tf.while_loop(lambda step, _, next_inputs: (step < steps) & next_inputs.has_value(), body,
                                      (tf.constant(1), first, iterator.get_next_as_optional()))
        return outputs

    return multi_step_on_iterator


def patch_for(strategy: tf.distribute.Strategy, steps_per_execution: int = 1) -> None:
    """Applies the work-arounds that `strategy` with `steps_per_execution` needs."""
    multi_worker = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
    if multi_worker:
        keras_tf_trainer.TensorFlowTrainer._maybe_symbolic_build = _build_from_local_batch
        keras_tf_trainer.reduce_per_replica = _reduce_per_replica
    if steps_per_execution > 1 and (multi_worker or isinstance(strategy, tf.distribute.MirroredStrategy)):
        keras_tf_trainer.TensorFlowTrainer._make_function = _make_multi_step_function
