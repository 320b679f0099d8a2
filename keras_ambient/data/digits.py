import numpy as np


def load_digits(split=None, test_fraction=0.2, seed=0, return_labels=False):
    """The built-in default dataset: scikit-learn's 8x8 digits in [-1, 1].

    Ships with scikit-learn (no download): 1797 grey-scale images, returned as
    float32 `(N, 8, 8, 1)` scaled from 0..16 to [-1, 1].

    Args:
        split: `None` (all 1797), `"train"` or `"test"` (a fixed random split).
        test_fraction: fraction of images in the test split.
        seed: seed of the split.
        return_labels: also return the int32 class labels.

    Returns:
        `images` or `(images, labels)`.

    Example:
    ```python
    x_train = ka.data.load_digits("train")
    x_test = ka.data.load_digits("test")
    ```
    """
    from sklearn.datasets import load_digits as _sk_load_digits

    if split not in (None, "train", "test"):
        raise ValueError(
            f"`split` must be None, 'train' or 'test'. Received: split={split!r}"
        )
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(
            f"`test_fraction` must be in (0, 1). Received: test_fraction={test_fraction}"
        )
    bunch = _sk_load_digits()
    images = (bunch.images.astype("float32") / 16.0) * 2.0 - 1.0
    images = images[..., None]
    labels = bunch.target.astype("int32")
    if split is not None:
        order = np.random.default_rng(seed).permutation(len(images))
        n_test = int(round(test_fraction * len(images)))
        idx = order[:n_test] if split == "test" else order[n_test:]
        images, labels = images[idx], labels[idx]
    return (images, labels) if return_labels else images
