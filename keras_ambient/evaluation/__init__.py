"""Quality metrics for generated samples (NumPy): distributional distances,
cluster sharpness on mixtures, and noise-level / residual-noise estimation."""

from keras_ambient.evaluation.distribution import sliced_wasserstein_distance, within_cluster_std
from keras_ambient.evaluation.images import (
    estimate_noise_level,
    estimate_noise_level_pca,
    frechet_distance,
    frechet_image_distance,
    gaussian_statistics,
    make_feature_extractor,
    noise_calibration_curve,
    residual_blur,
)
