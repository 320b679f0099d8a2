import dataclasses
import json

import numpy as np

_ARRAY_FIELDS = ("similarities", "nearest_indices", "nearest_distances", "second_distances",
                 "l2_ratios", "nearest_indices_l2", "source_indices")


def _threshold_key(t):
    return f"{float(t):g}"


@dataclasses.dataclass
class MemorizationReport:
    """Nearest-neighbour similarity of queries to a training set (docs/method.md §7).

    A plain, JSON-serialisable record, so runs can be compared. Produced by
    `measure_similarity` / `SimilarityIndex.query` and by
    `NoiseAttackResult.reports`.

    Per query `i`: `similarities[i]` is the cosine similarity of its features
    to the nearest training image `nearest_indices[i]`; `nearest_distances[i]`
    and `second_distances[i]` are the L2 feature distances to the nearest and
    second-nearest training images (L2 order, nearest `nearest_indices_l2[i]`),
    and `l2_ratios[i]` their ratio (0 for an exact copy).

    Attributes:
        name: a label (e.g. `"samples"` or `"mmse@sigma=1"`).
        num_queries, num_references: sizes of the two sets.
        fraction_above: `{threshold: fraction of queries with similarity > threshold}`;
            the paper's 0.95 ("almost identical") and 0.90 ("close match").
        ratio_test_threshold: delta of the ratio test (Carlini et al. 2023).
        ratio_test_rate: fraction of queries with `l2_ratios < delta`.
        mean_similarity, max_similarity, median_similarity: of `similarities`.
        source_match_rate: fraction of queries whose nearest training image
            is the one they came from (noise attack only; else `None`).
        similarities, nearest_indices, nearest_distances, second_distances,
        l2_ratios, nearest_indices_l2, source_indices: per-query NumPy arrays.
        settings: free-form settings (feature extractor, sigma, model, ...).

    Example:
    ```python
    report = ka.memorization.measure_similarity(samples, x_train)
    print(report.summary())
    text = report.to_json()
    same = ka.memorization.MemorizationReport.from_json(text)
    i = report.nearest_indices[0]   # look at samples[0] next to x_train[i]
    ```

    References:
        - Somepalli, Singla, Goldblum, Geiping, Goldstein. "Diffusion Art or Digital
          Forgery? Investigating Data Replication in Diffusion Models". CVPR 2023,
          arXiv:2212.03860.
        - Carlini et al. "Extracting Training Data from Diffusion Models". USENIX Security
          2023, arXiv:2301.13188.
    """

    name: str
    num_queries: int
    num_references: int
    fraction_above: dict
    ratio_test_threshold: float
    ratio_test_rate: float
    mean_similarity: float
    max_similarity: float
    median_similarity: float
    similarities: np.ndarray
    nearest_indices: np.ndarray
    nearest_distances: np.ndarray
    second_distances: np.ndarray
    l2_ratios: np.ndarray
    nearest_indices_l2: np.ndarray
    source_indices: np.ndarray = None
    source_match_rate: float = None
    settings: dict = dataclasses.field(default_factory=dict)

    @property
    def almost_identical_rate(self):
        """Fraction of queries with similarity > 0.95 (if that threshold was used)."""
        return self.fraction_above.get(_threshold_key(0.95))

    @property
    def close_match_rate(self):
        """Fraction of queries with similarity > 0.90 (if that threshold was used)."""
        return self.fraction_above.get(_threshold_key(0.90))

    def rate_above(self, threshold):
        """Fraction of queries with similarity above any `threshold`."""
        return float(np.mean(np.asarray(self.similarities) > float(threshold)))

    def to_dict(self):
        """A dict of plain Python values (lists for the arrays)."""
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, np.ndarray):
                v = v.tolist()
            elif isinstance(v, (np.floating, np.integer)):
                v = v.item()
            out[f.name] = v
        out["fraction_above"] = {_threshold_key(k): float(v) for k, v in self.fraction_above.items()}
        out["settings"] = _plain(self.settings)
        return out

    def to_json(self, path=None, **kwargs):
        """JSON text of `to_dict()`; also written to `path` when given."""
        text = json.dumps(self.to_dict(), **kwargs)
        if path is not None:
            with open(path, "w") as f:
                f.write(text)
        return text

    @classmethod
    def from_dict(cls, config):
        """Inverse of `to_dict` (lists become NumPy arrays again)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(config) - names
        if unknown:
            raise ValueError(f"Unknown MemorizationReport fields. Received: {sorted(unknown)}")
        config = dict(config)
        for key in _ARRAY_FIELDS:
            if config.get(key) is not None:
                dtype = "int64" if "indices" in key else "float64"
                config[key] = np.asarray(config[key], dtype=dtype)
        config["fraction_above"] = {_threshold_key(k): float(v) for k, v in config["fraction_above"].items()}
        return cls(**config)

    @classmethod
    def from_json(cls, text_or_path):
        """Reads `to_json` output (a JSON string or a file path)."""
        text = text_or_path
        if not text_or_path.lstrip().startswith("{"):
            with open(text_or_path) as f:
                text = f.read()
        return cls.from_dict(json.loads(text))

    def summary(self):
        """One line of the headline numbers."""
        fr = ", ".join(f">{k}: {100 * v:.1f}%" for k, v in sorted(self.fraction_above.items(), reverse=True))
        s = (f"{self.name}: n={self.num_queries} vs {self.num_references} | {fr} | "
             f"ratio<{self.ratio_test_threshold:.3g}: {100 * self.ratio_test_rate:.1f}% | "
             f"sim mean {self.mean_similarity:.3f} max {self.max_similarity:.3f}")
        if self.source_match_rate is not None:
            s += f" | nearest=source {100 * self.source_match_rate:.1f}%"
        return s

    def __eq__(self, other):
        if not isinstance(other, MemorizationReport):
            return NotImplemented
        return json.dumps(self.to_dict(), sort_keys=True) == json.dumps(other.to_dict(), sort_keys=True)


def _plain(obj):
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        return obj.item()
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return repr(obj)
