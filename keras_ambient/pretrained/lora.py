import keras

from keras_ambient.utils.validation import check_int, check_scalar

# Layer types whose `enable_lora` Keras provides.
_LORA_TYPES = (
    keras.layers.Dense,
    keras.layers.EinsumDense,
    keras.layers.Conv1D,
    keras.layers.Conv2D,
    keras.layers.Conv3D,
    keras.layers.Embedding,
)


def enable_lora(network, rank, lora_alpha=None, layer_types=("Dense", "EinsumDense"),
                name_filter=None, allow_enabled=False):
    """Turns on LoRA (`layer.enable_lora(rank)`) and freezes everything else.

    Every built layer of `network` whose class name is in `layer_types` (and
    whose name contains `name_filter`, if given) gets low-rank adapters
    `kernel + (alpha/rank) A B` (B starts at zero, so the network's function is
    unchanged). All other weights of `network`, biases and norms included, are
    made non-trainable, so training updates only the adapters.

    Args:
        network: a built Keras model (e.g. `backbone.diffuser`).
        rank: the adapters' rank.
        lora_alpha: LoRA scale numerator (Keras default: `rank`).
        layer_types: class names of the layers to adapt (`"Dense"`,
            `"EinsumDense"`, `"Conv2D"`, ...).
        name_filter: optional substring of the layer names to adapt, e.g.
            `"attention"`.
        allow_enabled: keep layers that already have LoRA of this rank (a
            network rebuilt from a config that records `lora_rank`) instead of
            raising.

    Returns:
        The list of adapted layers.

    Example:
    ```python
    adapted = ka.pretrained.enable_lora(backbone.diffuser, rank=8)
    ```
    """
    rank = check_int("rank", rank, minimum=1)
    lora_alpha = check_scalar("lora_alpha", lora_alpha, minimum=0, min_inclusive=False, allow_none=True)
    if isinstance(layer_types, str):
        layer_types = (layer_types,)
    known = {cls.__name__ for cls in _LORA_TYPES}
    unknown = sorted(set(layer_types) - known)
    if unknown:
        raise ValueError(
            f"`layer_types` must name layers with LoRA support: {sorted(known)}. "
            f"Received: layer_types={tuple(layer_types)}"
        )
    if not getattr(network, "built", False):
        raise ValueError(
            "`enable_lora` needs a built network (call it once or use a functional "
            f"model). Received: an unbuilt {type(network).__name__}"
        )
    adapted = []
    for layer in network._flatten_layers(include_self=False):
        if type(layer).__name__ not in layer_types or not hasattr(layer, "enable_lora"):
            continue
        if name_filter is not None and name_filter not in layer.name:
            continue
        if getattr(layer, "lora_enabled", False):
            if not allow_enabled or layer.lora_rank != rank:
                raise ValueError(
                    f"LoRA is already enabled on layer {layer.name!r} (rank "
                    f"{layer.lora_rank}). Received: rank={rank}"
                )
        else:
            layer.enable_lora(rank, lora_alpha=lora_alpha)
        adapted.append(layer)
    if not adapted:
        raise ValueError(
            f"No layer of type {tuple(layer_types)} matched in {network.name!r}"
            + (f" with name_filter={name_filter!r}" if name_filter else "")
            + ". Received: a network without such layers"
        )
    lora_ids = {id(v) for layer in adapted for v in (layer.lora_kernel_a, layer.lora_kernel_b)}
    for variable in network.trainable_weights:
        if id(variable) not in lora_ids:
            variable.trainable = False
    return adapted


def lora_variables(network):
    """The LoRA adapter variables of `network` (empty if LoRA is off)."""
    out = []
    for layer in network._flatten_layers(include_self=False):
        if getattr(layer, "lora_enabled", False):
            out.extend([layer.lora_kernel_a, layer.lora_kernel_b])
    return out


def reinitialize_lora(network, seed=None):
    """Re-draws every adapter's `A` (He-uniform) and zeroes `B`.

    Keras merges the adapters into the kernels when saving and zeroes both `A`
    and `B` when loading, which keeps the function but stops LoRA training
    (both gradients are zero). Call this on a loaded model before fine-tuning
    it further; the function stays the same because `B = 0`.
    """
    initializer = keras.initializers.HeUniform(seed=seed)
    for layer in network._flatten_layers(include_self=False):
        if getattr(layer, "lora_enabled", False):
            layer.lora_kernel_a.assign(initializer(layer.lora_kernel_a.shape))
            layer.lora_kernel_b.assign(keras.ops.zeros(layer.lora_kernel_b.shape))
