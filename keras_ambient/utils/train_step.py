"""Running model code after Keras's optimizer step, on every backend.

The one place where keras_ambient depends on how each backend's trainer calls
`train_step` (Keras 3.15):

- TensorFlow and torch: `train_step(data) -> logs` mutates the variables; code
  that runs after it sees the updated weights.
- JAX: `train_step(state, data) -> (logs, state)` is a pure function of the
  variables' values (it is jitted). Code that reads and assigns variables runs
  inside a `keras.StatelessScope` over the returned state, and the values it
  assigns replace the non-trainable entries of that state.

The public `keras.StatelessScope` does the JAX part; no private Keras API is
used. The state layout (trainable, non-trainable, optimizer, metrics variables,
in the order of `model.trainable_variables` / `model.non_trainable_variables`)
is JAX's trainer contract, tested by `tests/test_model.py` (EMA after the step).
"""

import keras


def train_step_then(model, parent_train_step, args, after):
    """Runs `parent_train_step(*args)`, then `after()` on the updated weights.

    Args:
        model: the Keras model whose `train_step` is running.
        parent_train_step: the bound `super().train_step`.
        args: the arguments Keras passed to `train_step` (`(data,)` or, on JAX,
            `(state, data)`).
        after: a function of no arguments that reads the model's variables and
            updates non-trainable ones with `assign` (e.g. a weight EMA).

    Returns:
        What `train_step` must return on this backend.
    """
    if keras.backend.backend() != "jax":
        logs = parent_train_step(*args)
        after()
        return logs
    logs, state = parent_train_step(*args)
    trainable, non_trainable, optimizer_values, metrics_values = state
    mapping = list(zip(model.trainable_variables, trainable))
    mapping += list(zip(model.non_trainable_variables, non_trainable))
    with keras.StatelessScope(state_mapping=mapping) as scope:
        after()
    updated = []
    for variable, value in zip(model.non_trainable_variables, non_trainable):
        new = scope.get_current_value(variable)
        updated.append(value if new is None else new)
    return logs, (trainable, updated, optimizer_values, metrics_values)


def train_functions_by_phase(model, make_train_function, phases):
    """One compiled train function per phase of the model's training step.

    A phase is a Python value that `train_step` reads while it is traced (e.g.
    "this step runs the consistency loss"). Each phase gets its own function
    from the backend's `make_train_function`, traced with its own step
    function: JAX caches traces by the traced function, so two `jit`s of the
    one bound `train_step` would share a trace; a closure per phase does not.
    The caller sets the phase the model reads before calling a function (its
    first call traces it; torch's eager step reads the phase at every call).

    Args:
        model: the Keras model.
        make_train_function: the bound `super().make_train_function`.
        phases: the phase values.

    Returns:
        A dict from phase to the train function Keras built for it.
    """
    functions = {}
    step = type(model).train_step
    for phase in phases:
        def phase_step(*args):  # a new function object per phase (JAX's trace cache)
            return step(model, *args)

        # The trainers build from `self.train_step` (Keras 3.15: JAX jits it, TensorFlow
        # wraps it in a tf.function; torch calls `self.train_step` at each step).
        object.__setattr__(model, "train_step", phase_step)
        try:
            make_train_function(force=True)
        finally:
            object.__delattr__(model, "train_step")
        functions[phase] = model.train_function
    return functions
