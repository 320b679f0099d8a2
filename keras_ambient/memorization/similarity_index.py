import numpy as np

from keras_ambient.memorization.features import _extract_features, get_feature_extractor
from keras_ambient.memorization.neighbors import _num_blocks, _progbar, _search
from keras_ambient.memorization.report import MemorizationReport, _threshold_key
from keras_ambient.utils.validation import check_bool, check_int, check_scalar

DEFAULT_THRESHOLDS = (0.95, 0.90)


class SimilarityIndex:
    """A training set indexed for nearest-neighbour memorization checks.

    Computes the reference features once; `query` then reports, for any
    batch of queries (generated samples, noise-attack reconstructions), the
    cosine similarity to the nearest training image, the fractions above the
    paper's thresholds (0.95 "almost identical", 0.90 "close match"), and the
    L2 ratio test of Carlini et al. (2023): nearest / second-nearest L2
    distance `< 1/3` (docs/method.md §7). Searches are exact and blocked
    (`nearest_neighbors`), so 50k x 50k fits in memory.

    Args:
        references: the training images `(m, ...)`, `m >= 2`.
        feature_extractor: `"pixels"` (default), a DINOv2 preset name, a
            `DINOv2FeatureExtractor`, a Keras model, or a callable
            `f(images) -> (n, d)` (see `get_feature_extractor`).
        center: subtract the mean reference feature before comparing. For raw
            pixels of images with a constant background this stops the shared
            background from making every pair look similar.
        thresholds: similarity thresholds reported in `fraction_above`.
        ratio_threshold: delta of the L2 ratio test.
        query_batch_size, reference_batch_size: block sizes of the search.

    Example:
    ```python
    index = ka.memorization.SimilarityIndex(x_train, center=True)
    report = index.query(model.generate(500, seed=0), name="samples")
    print(report.summary())
    ```

    References:
        - Somepalli, Singla, Goldblum, Geiping, Goldstein. "Diffusion Art or Digital
          Forgery? Investigating Data Replication in Diffusion Models". CVPR 2023,
          arXiv:2212.03860.
        - Carlini et al. "Extracting Training Data from Diffusion Models". USENIX Security
          2023, arXiv:2301.13188.
        - Daras, Dimakis, Daskalakis. "Consistent Diffusion Meets Tweedie: Training Exact
          Ambient Diffusion Models with Noisy Data". ICML 2024, arXiv:2404.10177.
    """

    def __init__(self, references, feature_extractor="pixels", center=False,
                 thresholds=DEFAULT_THRESHOLDS, ratio_threshold=1.0 / 3.0,
                 query_batch_size=1024, reference_batch_size=8192):
        self.feature_extractor = get_feature_extractor(feature_extractor)
        self._extractor_name = _describe(feature_extractor)
        self.center = check_bool("center", center)
        try:
            thresholds = tuple(float(t) for t in np.atleast_1d(np.asarray(thresholds, dtype="float64")))
        except (TypeError, ValueError):
            thresholds = ()
        if not thresholds or not all(-1.0 <= t <= 1.0 for t in thresholds):
            raise ValueError(
                f"`thresholds` must be cosine similarities in [-1, 1]. Received: thresholds={thresholds}"
            )
        self.thresholds = thresholds
        # The ratio test compares nearest / second-nearest distance, which is at most 1.
        self.ratio_threshold = check_scalar("ratio_threshold", ratio_threshold, minimum=0,
                                            maximum=1, min_inclusive=False)
        self.query_batch_size = check_int("query_batch_size", query_batch_size, minimum=1)
        self.reference_batch_size = check_int("reference_batch_size", reference_batch_size, minimum=1)
        references = np.asarray(references)
        if references.ndim < 2 or references.shape[0] < 2:
            raise ValueError(
                "`references` must hold at least 2 images, shape (m, ...) with m >= 2 "
                f"(the ratio test needs a second neighbour). Received: references with shape {references.shape}"
            )
        self.reference_shape = tuple(references.shape[1:])
        feats = _extract_features(self.feature_extractor, references, "references")
        self.mean_feature = feats.mean(axis=0) if self.center else np.zeros(feats.shape[1], "float32")
        self.reference_features = feats - self.mean_feature
        self.num_references = int(references.shape[0])

    def features(self, images, name="queries"):
        """Features of `images` as compared against the index (centred if `center`)."""
        images = np.asarray(images)
        if images.ndim < 2 or tuple(images.shape[1:]) != self.reference_shape:
            raise ValueError(
                f"`{name}` must have samples of shape {self.reference_shape} like the references. "
                f"Received: {name} with shape {images.shape}"
            )
        feats = _extract_features(self.feature_extractor, images, name)
        if feats.shape[1] != self.reference_features.shape[1]:
            raise ValueError(
                f"Features of `{name}` have {feats.shape[1]} dimensions, the references' "
                f"{self.reference_features.shape[1]}. Received: {name} with shape {images.shape}"
            )
        return feats - self.mean_feature

    def query(self, queries, source_indices=None, name="queries", settings=None, verbose=0):
        """Memorization report of `queries` against the indexed training set.

        Args:
            queries: images `(n, ...)` of the references' shape.
            source_indices: optional int array `(n,)`: the training image each
                query was made from (noise attack); adds `source_match_rate`.
            name: label of the report.
            settings: extra JSON-able settings to record in the report.
            verbose: 0 (default) is silent; a truthy value shows a
                `keras.utils.Progbar` over the blocks of the two searches
                (cosine and L2). Feature extraction is not included.

        Returns:
            A `MemorizationReport`.

        Example:
        ```python
        report = index.query(reconstructions, source_indices=np.arange(64))
        ```
        """
        feats = self.features(queries)
        n = feats.shape[0]
        if source_indices is not None:
            source_indices = np.asarray(source_indices)
            if source_indices.shape != (n,) or source_indices.dtype.kind not in "iu":
                raise ValueError(
                    f"`source_indices` must be an int array of shape ({n},), one per query. "
                    f"Received: source_indices with shape {source_indices.shape} and dtype {source_indices.dtype}"
                )
            if np.any(source_indices < 0) or np.any(source_indices >= self.num_references):
                raise ValueError(
                    f"`source_indices` must index the {self.num_references} references. "
                    f"Received: values in [{source_indices.min()}, {source_indices.max()}]"
                )
        blocks = _num_blocks(n, self.query_batch_size) * _num_blocks(self.num_references, self.reference_batch_size)
        kw = dict(query_batch_size=self.query_batch_size, reference_batch_size=self.reference_batch_size,
                  progbar=_progbar(2 * blocks, verbose))
        sim, idx = _search(feats, self.reference_features, "cosine", 1, **kw)
        dist, idx_l2 = _search(feats, self.reference_features, "l2", 2, **kw)
        sim, idx = sim[:, 0], idx[:, 0]
        d1, d2 = dist[:, 0], dist[:, 1]
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(d1 == 0, 0.0, d1 / d2)
        settings = dict(settings or {})
        settings.setdefault("feature_extractor", self._extractor_name)
        settings.setdefault("center", self.center)
        return MemorizationReport(
            name=str(name),
            num_queries=int(n),
            num_references=self.num_references,
            fraction_above={_threshold_key(t): float(np.mean(sim > t)) for t in self.thresholds},
            ratio_test_threshold=float(self.ratio_threshold),
            ratio_test_rate=float(np.mean(ratio < self.ratio_threshold)),
            mean_similarity=float(np.mean(sim)),
            max_similarity=float(np.max(sim)),
            median_similarity=float(np.median(sim)),
            similarities=sim,
            nearest_indices=idx,
            nearest_distances=d1,
            second_distances=d2,
            l2_ratios=ratio,
            nearest_indices_l2=idx_l2[:, 0],
            source_indices=None if source_indices is None else source_indices.astype("int64"),
            source_match_rate=None if source_indices is None else float(np.mean(idx == source_indices)),
            settings=settings,
        )


def measure_similarity(queries, references, feature_extractor="pixels", center=False,
                       source_indices=None, name="queries", thresholds=DEFAULT_THRESHOLDS,
                       ratio_threshold=1.0 / 3.0, query_batch_size=1024, reference_batch_size=8192,
                       verbose=0):
    """Memorization report of `queries` against a training set (one shot).

    Same as `SimilarityIndex(references, ...).query(queries, ...)`; build a
    `SimilarityIndex` instead to reuse the reference features.

    Args:
        queries: generated samples or reconstructions `(n, ...)`.
        references: the training images `(m, ...)`, `m >= 2`.
        feature_extractor, center, thresholds, ratio_threshold,
        query_batch_size, reference_batch_size: see `SimilarityIndex`.
        source_indices, name, verbose: see `SimilarityIndex.query`.

    Returns:
        A `MemorizationReport`.

    Example:
    ```python
    report = ka.memorization.measure_similarity(samples, x_train, center=True)
    print(report.almost_identical_rate, report.ratio_test_rate)
    ```
    """
    index = SimilarityIndex(references, feature_extractor=feature_extractor, center=center,
                            thresholds=thresholds, ratio_threshold=ratio_threshold,
                            query_batch_size=query_batch_size, reference_batch_size=reference_batch_size)
    return index.query(queries, source_indices=source_indices, name=name, verbose=verbose)


def _describe(fe):
    if fe is None or isinstance(fe, str):
        return fe or "pixels"
    preset = getattr(fe, "preset", None)
    if preset:
        return preset
    return getattr(fe, "name", None) or getattr(fe, "__name__", None) or type(fe).__name__
