"""Backend-specific fast paths (the only backend-specific module of the library).

`inference_call(net)` returns `call(x, sigma, condition) -> net([x, sigma(,
condition)], training=False)` on backend tensors, compiled where the backend
allows it, for the many calls of one network that sampling makes:

- JAX: `jax.jit` of `net.stateless_call`, with the variables' current values
  passed as arguments (weights changed by training or `set_weights` are used
  and nothing is recompiled for them);
- TensorFlow: a `tf.function` of the call (variables read by reference);
- torch: `torch.jit.trace` of `net.stateless_call` with the variable values as
  inputs, under `no_grad`, traced once per input signature and checked against
  the eager call on its first inputs; a trace that fails or disagrees is
  dropped for the eager call;
- the generic fallback (any other backend, `set_enabled(False)`, or a failed
  compilation): the eager call `net(inputs, training=False)` (torch: under
  `no_grad`).

`no_gradient_call(net, x, sigma, condition, training)` is the call without
gradient inside a training step (the consistency loss's target and reverse
chain): on torch, whose training step is eager, the traced path above (traced
with the same `training` flag, and checked against the eager call, so a
network whose training-mode call is random, e.g. with dropout, keeps the
eager call); on JAX and TensorFlow the plain call (the step is compiled
already).

Compiled functions are cached on the network and per input signature,
so later sampling calls reuse them. Every path computes the same function;
tests/test_backend_fast_paths.py compares them with the generic path.
"""

import contextlib
import warnings

import keras
from keras import ops

_ENABLED = True
_ATTR = "_keras_ambient_inference_call"


def set_enabled(enabled):
    """Turns the compiled paths on (default) or off (the generic eager call)."""
    global _ENABLED
    if not isinstance(enabled, bool):
        raise TypeError(f"`enabled` must be a bool. Received: enabled={enabled!r}")
    _ENABLED = enabled


def is_enabled():
    return _ENABLED


def inference_call(net):
    """`call(x, sigma, condition=None)` -> `net([x, sigma(, condition)], training=False)`.

    `x`, `sigma` and the arrays of `condition` (any structure of arrays, or
    None) are backend tensors; the result is a backend tensor.
    """
    if not _ENABLED:
        return _generic(net)
    return _cached(net, "inference", lambda: {"jax": _jax_call, "tensorflow": _tf_call,
                                              "torch": _torch_call}.get(keras.backend.backend(),
                                                                        _generic)(net))


def no_gradient_call(net, x, sigma, condition=None, training=True):
    """`stop_gradient(net([x, sigma(, condition)], training=training))` inside a training step.

    On torch (eager training steps) through the checked trace of `net`, which
    skips Keras's per-layer call overhead; elsewhere (any other callable, or
    while torch compiles the step with `jit_compile=True`) the plain call
    under `no_grad`.
    """
    if _ENABLED and keras.backend.backend() == "torch" and isinstance(net, keras.Layer):
        import torch

        if not torch.compiler.is_compiling():
            call = _cached(net, f"no_gradient_{bool(training)}",
                           lambda: _torch_call(net, training=bool(training)))
            return call(x, sigma, condition)
    with no_grad():
        return ops.stop_gradient(net(_inputs(x, sigma, condition), training=training))


def _cached(net, key, make):
    entries = getattr(net, _ATTR, None)
    if entries is None:
        entries = {}
        try:
            # On the network itself (not a module-level cache): it goes with it.
            object.__setattr__(net, _ATTR, entries)
        except (AttributeError, TypeError):
            pass
    if key not in entries:
        entries[key] = make()
    return entries[key]


def _inputs(x, sigma, condition):
    return [x, sigma] + ([condition] if condition is not None else [])


def no_grad():
    """Context in which the backend records no gradient (torch: `torch.no_grad()`).

    For network calls whose output is only used under `stop_gradient` (the
    consistency loss's reverse chain): on torch the eager call would otherwise
    build an autograd graph that is thrown away. JAX and TensorFlow need nothing
    (their gradients are traced from the loss), so this is a null context there.
    """
    if keras.backend.backend() == "torch":
        import torch

        return torch.no_grad()
    return contextlib.nullcontext()


def _generic(net, training=False):
    def call(x, sigma, condition=None):
        with no_grad():
            return net(_inputs(x, sigma, condition), training=training)

    return call


def _values(net):
    return ([v.value for v in net.trainable_variables],
            [v.value for v in net.non_trainable_variables])


# ---------------------------------------------------------------------- JAX
def _jax_call(net):
    import jax

    def pure(trainable, non_trainable, x, sigma, condition):
        out, _ = net.stateless_call(trainable, non_trainable, _inputs(x, sigma, condition),
                                    training=False)
        return out

    jitted = jax.jit(pure)

    def call(x, sigma, condition=None):
        trainable, non_trainable = _values(net)
        return jitted(trainable, non_trainable, x, sigma, condition)

    return call


# --------------------------------------------------------------- TensorFlow
def _tf_call(net):
    import tensorflow as tf

    @tf.function(reduce_retracing=True, autograph=False)
    def compiled(x, sigma, condition):
        return net(_inputs(x, sigma, condition), training=False)

    def call(x, sigma, condition=None):
        return compiled(x, sigma, condition)

    return call


# -------------------------------------------------------------------- torch
def _torch_call(net, training=False):
    import torch

    traces = {}  # input signature -> traced function, or None (use eager)
    eager = _generic(net, training)

    def signature(flat):
        return tuple((tuple(t.shape), str(t.dtype), str(t.device)) for t in flat)

    def call(x, sigma, condition=None):
        flat_cond = keras.tree.flatten(condition) if condition is not None else []
        flat_cond = [ops.convert_to_tensor(c) for c in flat_cond]
        trainable, non_trainable = _values(net)
        n_t, n_nt, n_c = len(trainable), len(non_trainable), len(flat_cond)
        key = (signature([x, sigma] + flat_cond), n_t, n_nt)

        def pure(x, sigma, *rest):
            cond = keras.tree.pack_sequence_as(condition, list(rest[:n_c])) if n_c else None
            t = list(rest[n_c:n_c + n_t])
            nt = list(rest[n_c + n_t:])
            out, _ = net.stateless_call(t, nt, _inputs(x, sigma, cond), training=training)
            return out

        with torch.no_grad():
            args = [x, sigma] + flat_cond + [v.detach() for v in trainable + non_trainable]
            if key not in traces:
                traces[key] = _trace_checked(torch, pure, args, eager(x, sigma, condition))
            traced = traces[key]
            if traced is None:
                return eager(x, sigma, condition)
            return traced(*args)

    return call


def _trace_checked(torch, fn, args, expected):
    """`torch.jit.trace(fn, args)` if it runs and matches `expected`, else None."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings on shape reads; deprecation
            traced = torch.jit.trace(fn, tuple(args), check_trace=False)
            got = traced(*args)
    except Exception:  # noqa: BLE001 - any failure: the eager call is used
        return None
    if got.shape != expected.shape or not torch.allclose(got, expected, rtol=1e-5, atol=1e-6):
        return None
    return traced
