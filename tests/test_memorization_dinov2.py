"""DINOv2 (keras-hub) features for memorization checks: a tiny random backbone.

keras-hub is optional: `pip install --no-deps keras-hub==0.32.0 &&
pip install kagglehub sentencepiece tokenizers regex`.
"""

import numpy as np
import pytest

import keras_ambient as ka
from keras_ambient import memorization as mem

pytestmark = pytest.mark.slow  # imports keras-hub (and TensorFlow) and builds a ViT: ~30-60 s on JAX under load

keras_hub = pytest.importorskip("keras_hub", reason="keras-hub is an optional extra")


@pytest.fixture(scope="module")
def extractor():
    backbone = keras_hub.models.DINOV2Backbone(
        patch_size=14, num_layers=2, hidden_dim=16, num_heads=2, intermediate_dim=32,
        image_shape=(28, 28, 3), position_embedding_shape=(28, 28, 3))
    return mem.DINOv2FeatureExtractor(backbone=backbone, batch_size=8)


def test_dinov2_cls_features_and_duplicates(extractor):
    x = ka.data.load_digits("train")[:13]  # two batches of 8 (the last one padded)
    feats = extractor(x)
    assert feats.shape == (13, 16) and np.all(np.isfinite(feats))
    # CLS token of the backbone on the preprocessed input
    pre = extractor.preprocess(x[5:13])
    assert pre.shape == (8, 28, 28, 3)
    # [-1, 1] -> [0, 1] -> ImageNet normalisation: background -1 maps to -mean/std
    np.testing.assert_allclose(pre[0, 0, 0], -np.array([0.485, 0.456, 0.406]) / np.array([0.229, 0.224, 0.225]),
                               rtol=1e-5)
    tokens = np.asarray(extractor.backbone.predict_on_batch({"images": pre}))
    np.testing.assert_allclose(feats[5:13], tokens[:, 0, :], rtol=1e-4, atol=1e-5)
    # planted duplicates are found through DINOv2 features
    planted = [5, 11, 0, 1, 2, 3, 4, 6]
    report = mem.measure_similarity(x[planted], x, feature_extractor=extractor)
    np.testing.assert_array_equal(report.nearest_indices, planted)
    np.testing.assert_allclose(report.similarities, 1.0, atol=1e-6)
    np.testing.assert_allclose(report.l2_ratios, 0.0, atol=1e-6)
    assert report.settings["feature_extractor"] == "DINOv2FeatureExtractor"


def test_backbone_passed_directly_is_wrapped(extractor):
    f = mem.get_feature_extractor(extractor.backbone)
    assert isinstance(f, mem.DINOv2FeatureExtractor)


def test_dinov2_errors(extractor):
    with pytest.raises(ValueError, match="exactly one"):
        mem.DINOv2FeatureExtractor()
    with pytest.raises(ValueError, match=r"\(n, h, w, 1\)"):
        extractor(np.zeros((2, 8, 8, 2), "float32"))
