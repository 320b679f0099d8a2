"""A `keras.random.SeedGenerator` whose state is saved with the model.

Keras's own `SeedGenerator` is tracked by layers (its state is part of
`model.variables`, so it advances inside compiled train steps on every
backend) but it is not a `KerasSaveable`: `model.save_weights`,
`model.save` and `keras.callbacks.BackupAndRestore` skip it and a reloaded
model restarts its random stream at `[seed, 0]`. A resumed training run then
draws the noise of step 0 again instead of the noise of the step it resumes
at. `SavedSeedGenerator` adds the two saving hooks.

It also gives each replica its own stream in multi-replica training where
every replica runs its own copy of the train step (TensorFlow
`MirroredStrategy`, one torch process per device): replica `k` draws with the
seed `[seed + k * REPLICA_STRIDE, counter]`, so the replicas do not add the
same noise to their shards of the batch. Replica 0 and single-device training
use the plain stream. (JAX `keras.distribution` runs one program over the
global batch: one stream, nothing to do.)
"""

import keras

# Private Keras API (with utils/backend_fast_paths.py's `in_stateless_scope`, the
# library's only imports from `keras.src`): no public class marks
# an object whose state `save_weights` / `save` must write. Tested on Keras 3.15.1
# (pyproject.toml bounds keras below 3.16 until the suite passes on a newer minor);
# tests/test_resume.py and the seed-state tests in tests/test_reliability.py fail if it
# stops working.
from keras.src.saving.keras_saveable import KerasSaveable

from keras_ambient.utils.distribute import REPLICA_STRIDE, replica_id_and_count


class SavedSeedGenerator(keras.random.SeedGenerator, KerasSaveable):
    """A `SeedGenerator` whose state is written by `save_weights` / `save`.

    Files written before this class existed (no entry for the generator) load
    too: the state is then left as initialised (`[seed, 0]`).

    Example:
    ```python
    self.seed_generator = SavedSeedGenerator(seed, name="training_seed")
    noise = keras.random.normal(shape, seed=self.seed_generator)
    ```
    """

    def _obj_type(self):
        # Only used by Keras to pick which attributes to walk: a plain object.
        return "Operation"

    def next(self, ordered=True):
        seed = super().next(ordered=ordered)
        if self.uses_plain_stream():
            return seed
        replica, count = replica_id_and_count()
        offset = keras.ops.cast(replica, seed.dtype) * keras.ops.cast(
            REPLICA_STRIDE, seed.dtype
        )
        zero = keras.ops.zeros_like(offset)
        return seed + keras.ops.stack([offset, zero])

    def uses_plain_stream(self):
        """Whether `next` is `keras.random.SeedGenerator.next` here (one replica)."""
        count = replica_id_and_count()[1]
        return isinstance(count, int) and count <= 1

    def save_own_variables(self, store):
        store["0"] = self.state

    def load_own_variables(self, store):
        if "0" in store:
            self.state.assign(store["0"])
