"""benchmarks/sampling_spread.py's class-balanced statistics and a smoke run of
benchmarks/demo_variants.py (its two-phase training keeps one optimizer and schedule).

`benchmarks` holds scripts, not a package: the modules are imported by path.
"""

import keras
import numpy as np
import pytest

import keras_ambient as ka
from keras_ambient.evaluation import images as ev
from tests.harness import load_benchmark


@pytest.mark.one_backend
def test_mean_std_over_sets():
    bu = load_benchmark("bench_utils")
    mean, std = bu.mean_std([[1.0, 4.0], [3.0, 4.0], [5.0, 4.0]])
    np.testing.assert_allclose(mean, [3.0, 4.0])
    np.testing.assert_allclose(std, [2.0, 0.0])  # sample std (ddof=1): sqrt((4 + 0 + 4) / 2)
    mean, std = bu.mean_std([[0.5, 2.0]])  # one set: no spread to estimate
    np.testing.assert_allclose(mean, [0.5, 2.0])
    np.testing.assert_array_equal(std, [0.0, 0.0])


@pytest.mark.one_backend
def test_equal_weights_give_the_plain_gaussian_statistics():
    spread = load_benchmark("sampling_spread")
    f = np.random.default_rng(0).normal(size=(50, 3)) * [1.0, 2.0, 0.5] + [1.0, 0.0, -1.0]
    mean, cov = spread.weighted_statistics(f, np.full(50, 1 / 50))
    ref_mean, ref_cov = ev.gaussian_statistics(f)
    np.testing.assert_allclose(mean, ref_mean, atol=1e-12)
    np.testing.assert_allclose(cov, ref_cov, atol=1e-12)


@pytest.mark.one_backend
def test_class_weights_restore_the_target_proportions():
    spread = load_benchmark("sampling_spread")
    predicted = np.array([0] * 6 + [1] * 2 + [2] * 2)
    target = np.array([0.2, 0.3, 0.5])
    w = spread.class_weights(predicted, target)
    assert w.sum() == pytest.approx(1.0)
    np.testing.assert_allclose([w[predicted == k].sum() for k in range(3)], target, atol=1e-12)


@pytest.mark.one_backend
def test_rebalancing_recovers_the_fd_of_the_right_proportions():
    """Held-out digits with classes 5-9 cut to a quarter: right shapes, wrong
    proportions. Weighting them back to the full set's proportions removes most of
    the FD_pca the skew adds (measured: 0.68 -> 0.23; random subsets of the same 220
    images read 0.08-0.16, the weighted set has fewer effective images)."""
    spread = load_benchmark("sampling_spread")
    x, labels = ka.data.load_digits("test", return_labels=True)
    x_train = ka.data.load_digits("train")
    pca = ev.make_feature_extractor(x_train, "pca", num_features=16)
    keep = (labels < 5) | (np.arange(len(labels)) % 4 == 0)
    target = np.bincount(labels, minlength=10) / len(labels)
    ref = ev.gaussian_statistics(pca(x))
    skewed = ev.frechet_distance(*ev.gaussian_statistics(pca(x[keep])), *ref)
    balanced = ev.frechet_distance(
        *spread.weighted_statistics(pca(x[keep]), spread.class_weights(labels[keep], target)), *ref)
    assert skewed > 0.5
    assert balanced < 0.4 * skewed


@pytest.mark.one_backend
@pytest.mark.slow
def test_demo_variants_smoke_two_phases():
    variants = load_benchmark("demo_variants")
    args = variants.parse_args(["--ambient-steps", "2", "--steps", "1", "--sets", "2", "--num-samples", "16",
                                "--dropout", "0.1", "--attention", "4"])
    results, model = variants.main(args)
    config = model.network.get_config()
    assert config["dropout"] == 0.1 and tuple(config["attention_resolutions"]) == (4,)
    assert int(model.optimizer.iterations.numpy() if hasattr(model.optimizer.iterations, "numpy")
               else model.optimizer.iterations) == 3
    assert model.consistency_weight == 30.0
    for mode in ("full", "truncated"):
        assert np.all(np.isfinite(results[mode]["mean"])) and len(results[mode]["std"]) == 3


@pytest.mark.one_backend
@pytest.mark.slow
def test_demo_variants_autoguidance_and_weight_decay():
    variants = load_benchmark("demo_variants")
    args = variants.parse_args(["--steps", "3", "--guide-step", "2", "--guidance", "1", "2", "--sets", "1",
                                "--num-samples", "16", "--weight-decay", "0.1"])
    results, model = variants.main(args)
    assert isinstance(model.optimizer, keras.optimizers.AdamW) and model.optimizer.weight_decay == 0.1
    # w = 1 is no guidance: the same samples as plain full sampling, whatever the guide.
    np.testing.assert_allclose(results["full/guide2/w1"]["mean"], results["full"]["mean"], rtol=1e-5)
    # w = 2 extrapolates away from the guide (the weights of step 2, not those of step 3).
    assert not np.allclose(results["full/guide2/w2"]["mean"], results["full"]["mean"], rtol=1e-3)
