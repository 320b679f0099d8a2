"""Memorization measurement (docs/method.md §7): noise attacks, nearest-neighbour
similarity to the training set, pictures, and JSON-serialisable reports.

Example:
```python
import keras_ambient as ka
from keras_ambient import memorization as mem
index = mem.SimilarityIndex(x_train, center=True)
print(index.query(model.generate(300, seed=0), name="samples").summary())
attack = mem.noise_attack(model, x_train[:100], sigma=1.0, num_draws=2, seed=0)
for name, report in attack.reports(index).items():
    print(report.summary())
```
"""

from keras_ambient.memorization.dinov2_feature_extractor import DINOv2FeatureExtractor
from keras_ambient.memorization.features import get_feature_extractor, pixel_features
from keras_ambient.memorization.keras_feature_extractor import KerasFeatureExtractor
from keras_ambient.memorization.neighbors import nearest_neighbors
from keras_ambient.memorization.noise_attack import NoiseAttackResult, noise_attack
from keras_ambient.memorization.plots import plot_similarity_histogram, plot_triplets
from keras_ambient.memorization.report import MemorizationReport
from keras_ambient.memorization.similarity_index import SimilarityIndex, measure_similarity

__all__ = [
    "DINOv2FeatureExtractor",
    "KerasFeatureExtractor",
    "MemorizationReport",
    "NoiseAttackResult",
    "SimilarityIndex",
    "get_feature_extractor",
    "measure_similarity",
    "nearest_neighbors",
    "noise_attack",
    "pixel_features",
    "plot_similarity_histogram",
    "plot_triplets",
]
