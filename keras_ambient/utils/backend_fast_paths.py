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

`training_function(denoiser, fn)` computes `fn(denoiser, *tensors)`, a pure
function of tensors and the denoiser's weights that calls the denoiser (the
ambient loss after its random draws: losses/ambient_loss.py), for training:

- torch: with gradients on, a `torch.jit.trace` of `fn` with the denoiser
  called as `stateless_call` and the variables' tensors as inputs (so the
  gradients reach them), traced once per input signature, set of variables
  and `static_key` (the loss's configuration). It runs the recorded aten
  operators without Keras's per-layer and per-op Python work, unoptimized
  (`torch.jit.optimized_execution(False)`: those operators with torch's
  autograd, as in the eager call; the graph optimizations' symbolic
  gradients differ in rounding and were not faster here). Before a trace is
  used it is checked on its first inputs against the eager call: the same
  outputs and the same gradients for every trainable weight (random
  cotangents). A denoiser that updates state in training (dropout's seed,
  batch statistics) or adds layer losses, rematerialization, a call inside
  `torch.compile` (Keras `jit_compile=True`), or a trace that fails or
  disagrees: the eager call;
- every other case (other backends, whose train steps are compiled anyway;
  `set_enabled(False)`): `fn` itself, eagerly.

What `fn` reads besides its tensor arguments and the weights (the loss's settings, which
are in the key; the denoiser's attributes, its training-level law's among them) is
fixed in a trace when it is recorded: change them by building a new denoiser.

`group_norm(x, num_groups, gamma, beta, epsilon)` normalises channels-first
feature maps: torch's one-kernel `group_norm` on torch (the U-Net's layers on
the torch backend, whose layout is channels first), None elsewhere (the
caller then runs `keras.layers.GroupNormalization`'s own call).

`random_normal(shape, seed)` and `random_uniform(shape, seed)` are
`keras.random.normal` / `keras.random.uniform`: on torch, with a
`SeedGenerator`, the same numbers and seed-state update as Keras's in a few
torch calls instead of about fifteen dispatched Keras operations (the training
losses draw several times per step); Keras's own draw elsewhere.

`ema_updater(targets, sources)` returns `update(decay)`, which updates a
weight EMA in place (`t <- decay * t + (1 - decay) * s` for every pair) in a
few fused calls where the backend allows it:

- torch: one `torch._foreach_lerp_` on the variables' tensors (the generic
  path dispatches three Keras ops and an `assign` per weight); `decay` stays
  a tensor (no host sync);
- otherwise (JAX, whose train step is jitted anyway; TensorFlow, a graph;
  mixed dtypes or devices; a `StatelessScope`; `set_enabled(False)`):
  there is no updater (None) or it returns False, and the caller runs the
  generic `keras.ops` update. The variables' tensors are collected once.
"""

import contextlib
import warnings
import weakref

import keras
from keras import ops

from keras_ambient.utils.structures import denoiser_inputs

# Private Keras API: no public function says whether a `StatelessScope` is active, and
# the in-place torch paths below (the fused EMA update, the seed state's update) must
# not run in one (an assignment there goes to the scope, not to the variable). Tested on
# Keras 3.15.1 (pyproject.toml keeps keras below 3.16); without it those paths are off.
try:
    from keras.src.backend.common.stateless_scope import in_stateless_scope as _in_stateless_scope
except ImportError:  # pragma: no cover
    _in_stateless_scope = None


def _keras_version():
    try:
        return tuple(int(part) for part in keras.version().split(".")[:2])
    except ValueError:  # pragma: no cover (a development version string)
        return (0, 0)


# Keras's torch draw seeds a `torch.Generator` with the state's sum modulo 2**32 from
# Keras 3.15 (earlier versions seed with the sum unmasked: other numbers for a negative
# sum), so the fast draws below are used from 3.15 on.
_DRAWS_LIKE_KERAS = _keras_version() >= (3, 15) and _in_stateless_scope is not None

_ENABLED = True
_ATTR = "_keras_ambient_inference_call"
_TRAIN_ATTR = "_keras_ambient_training_call"


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
        return ops.stop_gradient(net(denoiser_inputs(x, sigma, condition), training=training))


def _cached(net, key, make):
    entries = _attached_dict(net, _ATTR)
    if key not in entries:
        entries[key] = make()
    return entries[key]


def _attached_dict(net, attr):
    """The dict stored on `net` under `attr` (created empty on first use)."""
    entries = getattr(net, attr, None)
    if entries is None:
        entries = {}
        try:
            # On the network itself (not a module-level cache): it goes with it.
            object.__setattr__(net, attr, entries)
        except (AttributeError, TypeError):
            pass
    return entries


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
            return net(denoiser_inputs(x, sigma, condition), training=training)

    return call


def _values(net):
    return ([v.value for v in net.trainable_variables],
            [v.value for v in net.non_trainable_variables])


# ---------------------------------------------------------------------- JAX
def _jax_call(net):
    import jax

    def pure(trainable, non_trainable, x, sigma, condition):
        out, _ = net.stateless_call(trainable, non_trainable, denoiser_inputs(x, sigma, condition),
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
        return net(denoiser_inputs(x, sigma, condition), training=False)

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
            out, _ = net.stateless_call(t, nt, denoiser_inputs(x, sigma, cond), training=training)
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


# ----------------------------------------------------------------- weight EMA
def ema_updater(targets, sources):
    """A fused in-place EMA update of `targets` (the EMA weights) towards `sources`
    (the weights, same shapes and dtypes): a function `update(decay) -> bool` doing
    `target <- decay * target + (1 - decay) * source` for every pair (False: nothing
    was done, run the generic `keras.ops` update), or None where the backend has no
    fused update.

    The variables' tensors are collected and checked once, for a training loop that
    updates the same weights every step (they keep their identity while they live:
    assignments copy in place); reading them every step costs more than the fused
    update itself.
    """
    if not _ENABLED or not targets or keras.backend.backend() != "torch":
        return None
    return _torch_ema_updater(targets, sources)


def _torch_ema_updater(targets, sources):
    import torch

    if len(targets) != len(sources):
        return None
    dst = [v.value for v in targets]
    src = [v.value for v in sources]
    # Only the variables' own tensors (not a StatelessScope's or an autocast
    # copy), of one dtype and device, and the same shapes.
    first = dst[0]
    for d, s in zip(dst, src):
        if not (isinstance(d, torch.nn.Parameter) and isinstance(s, torch.nn.Parameter)):
            return None
        if d.dtype != first.dtype or s.dtype != first.dtype or d.device != first.device \
                or s.device != first.device or d.shape != s.shape:
            return None

    def update(decay):
        # Inside a StatelessScope (a stateless call) assignments go to the scope; or
        # set_enabled(False) after the updater was made.
        if not _ENABLED or targets[0].value is not first \
                or _in_stateless_scope is None or _in_stateless_scope():
            return False
        decay = torch.as_tensor(decay)
        if decay.dtype != first.dtype or decay.ndim != 0:
            return False
        weight = (1.0 - decay).to(first.device)
        with torch.no_grad():
            # target + (1 - decay) (source - target), one kernel per tensor; the
            # weight stays a tensor (no host sync).
            torch._foreach_lerp_(dst, src, [weight] * len(dst))
        return True

    return update


# ------------------------------------------------------------ random draws
def random_normal(shape, seed=None, dtype=None):
    """`keras.random.normal(shape, seed=seed, dtype=dtype)`: the same numbers and the
    same update of the seed's state, on torch in a few calls (`_torch_draw`)."""
    draw = _torch_draw(seed, dtype)
    if draw is None:
        return keras.random.normal(shape, seed=seed, dtype=dtype)
    torch, generator, torch_dtype, device = draw
    return torch.normal(0.0, 1.0, size=tuple(shape), generator=generator, dtype=torch_dtype,
                        device=device)


def random_uniform(shape, seed=None, dtype=None):
    """`keras.random.uniform(shape, seed=seed, dtype=dtype)` on [0, 1), as `random_normal`."""
    draw = _torch_draw(seed, dtype)
    if draw is None:
        return keras.random.uniform(shape, seed=seed, dtype=dtype)
    torch, generator, torch_dtype, device = draw
    shape = tuple(shape)
    out = torch.rand(size=shape or (1,), generator=generator, dtype=torch_dtype, device=device)
    return out if shape else out[0]


_TORCH_SEEDS = weakref.WeakKeyDictionary()  # SeedGenerator -> (state tensor, increment)
_FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")


def _torch_draw(seed, dtype):
    """`(torch, generator, dtype, device)` for one draw from the `SeedGenerator` `seed`, or
    None (then the caller draws with `keras.random`).

    Keras's torch draw costs about 15 small dispatched operations, most of them in
    `SeedGenerator.next` (copy the state, build the increment, add, assign) at several
    microseconds each: more than the draw. This does what Keras 3.15 does
    (keras/src/backend/torch/random.py: a `torch.Generator` on the current device seeded
    with the state's two entries' sum modulo 2**32, then the state's counter incremented by
    one) on the state's own tensor. Keras's scheme is not public API: it is used on the
    Keras versions that draw this way (`_DRAWS_LIKE_KERAS`), and
    tests/test_backend_fast_paths.py compares every draw and the state after it with
    `keras.random`'s.

    Keras draws instead: off torch; inside a `StatelessScope` (its assignments go to the
    scope) or while `torch.compile` traces; on the meta device; with `set_enabled(False)`;
    for a seed that is not a `SeedGenerator` (an int, None) or whose `next` is not Keras's
    (`SavedSeedGenerator`'s is, with one replica: `uses_plain_stream()`); for a dtype that
    is not floating point; or when the state's value is not the variable's own
    `torch.nn.Parameter`.
    """
    if not (_ENABLED and _DRAWS_LIKE_KERAS) or keras.backend.backend() != "torch" \
            or not isinstance(seed, keras.random.SeedGenerator):
        return None
    next_method = type(seed).next
    if next_method is not keras.random.SeedGenerator.next:
        from keras_ambient.utils.seeding import SavedSeedGenerator

        if next_method is not SavedSeedGenerator.next or not seed.uses_plain_stream():
            return None
    dtype = keras.backend.standardize_dtype(dtype or keras.backend.floatx())
    if dtype not in _FLOAT_DTYPES:
        return None
    import torch

    if _compiling(torch) or _in_stateless_scope():
        return None
    device = ops.convert_to_tensor(0.0).device  # where Keras creates tensors now
    if device.type == "meta":
        return None
    value = seed.state.value
    cached = _TORCH_SEEDS.get(seed)
    if cached is None or cached[0] is not value:
        if not (isinstance(value, torch.nn.Parameter) and tuple(value.shape) == (2,)
                and value.dtype in (torch.int32, torch.int64)):
            return None
        cached = (value, torch.tensor([0, 1], dtype=value.dtype, device=value.device))
        _TORCH_SEEDS[seed] = cached
    increment = cached[1]
    with torch.no_grad():
        first, second = value.tolist()
        value.add_(increment)
    generator = torch.Generator(device=device)
    generator.manual_seed((first + second) & 0xFFFFFFFF)
    return torch, generator, getattr(torch, dtype), device


# -------------------------------------------------------- group normalisation
def group_norm(x, num_groups, gamma, beta, epsilon):
    """Group normalisation of channels-first `x` (channel axis 1) in one kernel.

    The same function as `keras.layers.GroupNormalization(num_groups, axis=1,
    epsilon=epsilon)` with `gamma` and `beta` (computed in float32, or float64 for
    float64 inputs, returned in `x`'s dtype). On torch:
    `torch.nn.functional.group_norm` (one operator and its fused gradient, where
    Keras's layer composes about fifteen); otherwise,
    or with `set_enabled(False)`, returns None and the caller runs the layer's
    generic call.
    """
    if not _ENABLED or keras.backend.backend() != "torch":
        return None
    import torch

    x = ops.convert_to_tensor(x)
    dtype = torch.promote_types(x.dtype, torch.float32)  # as Keras's layer: float32 or wider
    out = torch.nn.functional.group_norm(
        x.to(dtype), num_groups, ops.convert_to_tensor(gamma).to(dtype),
        ops.convert_to_tensor(beta).to(dtype), epsilon,
    )
    return out.to(x.dtype)


# ---------------------------------------------------------- training forward
def training_function(denoiser, fn, owner=None, static_key=(), training=True):
    """`call(*tensors, condition=None)` computing `fn(denoiser, *tensors,
    condition=condition, training=training)` (with gradients), compiled where
    the backend allows it.

    `fn` must be a pure function of its tensors and the denoiser's weights (no
    random draws; they are made before it and passed in) that calls the
    denoiser as `denoiser(inputs, training=training)` and returns a tuple of
    tensors. `owner` (e.g. the loss whose method `fn` is) and `static_key`
    (e.g. its configuration) identify `fn`: a new one means a new trace.
    Off torch, when disabled, or unless `training is True` (the traces are of
    the training-mode call), `fn` itself is called.
    """
    if not _ENABLED or keras.backend.backend() != "torch" or training is not True:
        return lambda *tensors, condition=None: fn(denoiser, *tensors, condition=condition,
                                                   training=training)
    cache = _attached_dict(denoiser, _TRAIN_ATTR)
    name = getattr(fn, "__name__", None)
    entry = cache.get((id(owner), name))
    if entry is None or entry.owner is not owner:
        entry = cache[(id(owner), name)] = _TorchTrainingFunction(denoiser, owner)
    return lambda *tensors, condition=None: entry(fn, static_key, tensors, condition)


class _StatelessDenoiser:
    """`denoiser(inputs, training)` as `stateless_call` on given variable values;
    records state updates and layer losses (which a trace would drop)."""

    def __init__(self, denoiser, trainable, non_trainable, check=False):
        self._denoiser = denoiser
        self._t, self._nt = trainable, non_trainable
        self._check = check
        self.impure = False

    def __getattr__(self, name):  # e.g. sample_training_sigma
        return getattr(self._denoiser, name)

    def __call__(self, inputs, training=None):
        if self._check:
            out, new_nt, losses = self._denoiser.stateless_call(
                self._t, self._nt, inputs, training=training, return_losses=True)
            self.impure = self.impure or bool(losses) or any(
                a is not b for a, b in zip(new_nt, self._nt))
            return out
        return self._denoiser.stateless_call(self._t, self._nt, inputs, training=training)[0]


class _TorchTrainingFunction:
    """`fn(denoiser, *tensors, condition)` through checked `torch.jit.trace`s."""

    MAX_TRACES = 8  # input signatures kept (e.g. full and last partial batch)

    def __init__(self, denoiser, owner):
        self._denoiser = denoiser
        self.owner = owner
        self._traces = {}  # key -> traced function, or None (eager)

    def __call__(self, fn, static_key, tensors, condition):
        import torch

        den = self._denoiser
        eager = lambda: fn(den, *tensors, condition=condition)  # noqa: E731
        if not _ENABLED or not torch.is_grad_enabled() or _compiling(torch):
            return eager()
        flat_cond = keras.tree.flatten(condition) if condition is not None else []
        flat = [ops.convert_to_tensor(t) for t in list(tensors) + flat_cond]
        if not all(isinstance(t, torch.Tensor) for t in flat):
            return eager()
        trainable = den.trainable_variables
        non_trainable = den.non_trainable_variables
        key = (tuple((tuple(t.shape), t.dtype, t.device, t.requires_grad) for t in flat),
               tuple(map(id, trainable)), tuple(map(id, non_trainable)),
               getattr(fn, "__name__", None), static_key)
        if key not in self._traces:
            if len(self._traces) >= self.MAX_TRACES:
                self._traces.clear()
            self._traces[key] = self._trace(fn, flat, len(tensors), condition, trainable,
                                            non_trainable)
        traced = self._traces[key]
        if traced is None:
            return eager()
        values = [v.value for v in trainable] + [v.value for v in non_trainable]
        with torch.jit.optimized_execution(False):
            return traced(*flat, *values)

    def _pure(self, fn, n_x, condition, n_cond, n_t):
        den = self._denoiser

        def pure(*args):
            x = args[:n_x]
            cond = (keras.tree.pack_sequence_as(condition, list(args[n_x:n_x + n_cond]))
                    if condition is not None else None)
            t = list(args[n_x + n_cond:n_x + n_cond + n_t])
            nt = list(args[n_x + n_cond + n_t:])
            return tuple(fn(_StatelessDenoiser(den, t, nt), *x, condition=cond))

        return pure

    def _trace(self, fn, flat, n_x, condition, trainable, non_trainable):
        """A checked trace for these inputs and variables, or None (eager)."""
        import torch

        den = self._denoiser
        try:
            if any(getattr(layer, "_remat_mode", None) is not None
                   for layer in [den] + list(den._flatten_layers())):
                return None
            t_values = [v.value for v in trainable]
            nt_values = [v.value for v in non_trainable]
            if not all(isinstance(v, torch.nn.Parameter) for v in t_values + nt_values):
                return None  # a StatelessScope or autocast copy: not the variables
            n_cond = len(flat) - n_x
            cond = (keras.tree.pack_sequence_as(condition, flat[n_x:])
                    if condition is not None else None)
            # State updates or layer losses in training: not traceable as a pure call.
            probe = _StatelessDenoiser(den, t_values, nt_values, check=True)
            fn(probe, *flat[:n_x], condition=cond)
            if probe.impure:
                return None
            pure = self._pure(fn, n_x, condition, n_cond, len(t_values))
            args = tuple(flat + t_values + nt_values)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # TracerWarnings on shape reads; deprecation
                traced = torch.jit.trace(pure, args, check_trace=False)
            with torch.jit.optimized_execution(False):
                got = tuple(traced(*args))
            eager = tuple(fn(den, *flat[:n_x], condition=cond))
            if len(got) != len(eager) or not all(_same(torch, a, b) for a, b in zip(got, eager)):
                return None
            weights = [v for v in t_values if v.requires_grad]
            outs = [(a, b) for a, b in zip(got, eager)
                    if b.requires_grad and b.dtype.is_floating_point]
            if weights and outs:
                gen = torch.Generator(device="cpu").manual_seed(0)
                cots = [torch.randn(b.shape, generator=gen, dtype=torch.float32).to(
                    device=b.device, dtype=b.dtype) for _, b in outs]
                g_eager = torch.autograd.grad(sum((b * c).sum() for (_, b), c in zip(outs, cots)),
                                              weights, allow_unused=True)
                g_traced = torch.autograd.grad(sum((a * c).sum() for (a, _), c in zip(outs, cots)),
                                               weights, allow_unused=True)
                for a, b in zip(g_eager, g_traced):
                    if (a is None) != (b is None) or (a is not None and not _same(torch, b, a)):
                        return None
            return traced
        except Exception:  # noqa: BLE001 - any failure: the eager call is used
            return None


def _compiling(torch):
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and compiler.is_compiling())


def _same(torch, got, expected):
    return (isinstance(got, torch.Tensor) and got.shape == expected.shape
            and got.dtype == expected.dtype
            and torch.allclose(got, expected, rtol=1e-5, atol=1e-6))
