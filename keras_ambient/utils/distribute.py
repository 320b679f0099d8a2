"""Replica-aware helpers for multi-device training.

- JAX (`keras.distribution.DataParallel` / `ModelParallel`): one SPMD program
  over the global batch; nothing here applies (one replica).
- TensorFlow (`tf.distribute.MirroredStrategy`): `train_step` runs once per
  replica on `global_batch / num_replicas` samples and the gradients are
  SUMMED across replicas, so a custom `compute_loss` must divide its loss by
  the number of replicas (Keras's built-in losses do the same) and each replica
  must draw its own noise.
- PyTorch (`torchrun`, one process per device): each process is a replica;
  the rank comes from `torch.distributed`.
"""

import keras

# Replica k adds k * REPLICA_STRIDE to the first seed component: 0x9E3779B9 as a
# signed 32-bit integer, so the streams of different replicas lie far apart also
# on torch (which seeds its generator with first + second component).
REPLICA_STRIDE = -1640531527


def replica_id_and_count():
    """`(replica_id, num_replicas)`; `(0, 1)` outside multi-replica training.

    Under a TensorFlow strategy `replica_id` is a tensor inside the replica
    function. Under torch it is the process rank when `torch.distributed` is
    initialised with more than one process.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        if not tf.distribute.has_strategy():
            return 0, 1
        ctx = tf.distribute.get_replica_context()
        if ctx is None:  # cross-replica context
            return 0, tf.distribute.get_strategy().num_replicas_in_sync
        return ctx.replica_id_in_sync_group, ctx.num_replicas_in_sync
    if backend == "torch":
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
    return 0, 1


def scale_loss_for_replicas(loss):
    """Divides `loss` by the number of TensorFlow replicas (gradients are summed
    across replicas); a no-op on JAX and torch and on one device."""
    if keras.backend.backend() != "tensorflow":
        return loss
    import tensorflow as tf

    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    if replicas > 1:
        loss = keras.ops.multiply(loss, keras.ops.cast(1.0 / replicas, loss.dtype))
    return loss
