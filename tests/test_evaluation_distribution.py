"""Tests of keras_ambient.evaluation.distribution against known answers (NumPy only)."""

import numpy as np
import pytest

from keras_ambient.evaluation.distribution import sliced_wasserstein_distance, within_cluster_std


def _circle_means(k=8, radius=1.0):
    ang = 2 * np.pi * np.arange(k) / k
    return radius * np.stack([np.cos(ang), np.sin(ang)], axis=1)


def test_swd_of_a_set_with_itself_is_zero():
    x = np.random.default_rng(0).normal(size=(500, 2))
    assert sliced_wasserstein_distance(x, x) == pytest.approx(0.0, abs=1e-12)
    # Order of the samples does not matter.
    assert sliced_wasserstein_distance(x, x[::-1]) == pytest.approx(0.0, abs=1e-12)


def test_swd_of_shifted_point_masses_is_exact():
    # Identical point clouds shifted by m: every projection is a pure shift by u.m.
    x = np.random.default_rng(1).normal(size=(300, 2))
    m = np.array([0.3, -0.4])  # |m| = 0.5
    got = sliced_wasserstein_distance(x, x + m, num_projections=5000, seed=3)
    assert got == pytest.approx(2 / np.pi * 0.5, rel=0.02)


def test_swd_of_shifted_gaussian_matches_closed_form_with_unequal_counts():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(4000, 2))
    b = rng.normal(size=(6000, 2)) + np.array([1.0, 0.0])
    got = sliced_wasserstein_distance(a, b, num_projections=1000)
    # E|u.m| over uniform directions in 2-D = (2/pi)|m|; direction sampling
    # (std ~0.01 here) and a small finite-sample floor.
    assert got == pytest.approx(2 / np.pi, abs=0.03)


def test_swd_one_dimensional_scale_change():
    # 1-D N(0,1) vs N(0,2^2): W1 = E|Z| * (2 - 1) = sqrt(2/pi).
    rng = np.random.default_rng(3)
    z = rng.normal(size=20000)
    got = sliced_wasserstein_distance(z, 2 * rng.normal(size=20000), num_projections=1)
    assert got == pytest.approx(np.sqrt(2 / np.pi), rel=0.03)


def test_swd_is_symmetric_and_seeded():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(100, 3)), rng.normal(size=(150, 3)) * 1.5
    assert sliced_wasserstein_distance(a, b, seed=7) == pytest.approx(sliced_wasserstein_distance(b, a, seed=7))
    assert sliced_wasserstein_distance(a, b, seed=7) == sliced_wasserstein_distance(a, b, seed=7)


def test_swd_errors():
    x = np.zeros((10, 2))
    with pytest.raises(ValueError, match="same dimension"):
        sliced_wasserstein_distance(x, np.zeros((10, 3)))
    with pytest.raises(ValueError, match="num_projections"):
        sliced_wasserstein_distance(x, x, num_projections=0)
    with pytest.raises(ValueError, match="finite"):
        sliced_wasserstein_distance(x, np.full((10, 2), np.nan))
    with pytest.raises(ValueError, match=r"shape \(n, dim\)"):
        sliced_wasserstein_distance(np.zeros(()), x)
    with pytest.raises(ValueError, match="power"):
        sliced_wasserstein_distance(x, x, power=3)
    # Images are flattened per sample: (2, 2, 2) is compared as (2, 4).
    with pytest.raises(ValueError, match="same dimension"):
        sliced_wasserstein_distance(np.zeros((2, 2, 2)), x)
    assert sliced_wasserstein_distance(np.ones((3, 2, 2)), np.ones((5, 4))) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("std", [0.02, 0.05, 0.1])
def test_within_cluster_std_of_exact_gaussian_clusters(std):
    rng = np.random.default_rng(5)
    means = _circle_means()
    comp = rng.integers(0, 8, size=16000)
    x = means[comp] + std * rng.normal(size=(16000, 2))
    assert within_cluster_std(x, means) == pytest.approx(std, rel=0.03)


def test_within_cluster_std_uses_each_clusters_own_mean():
    # A cluster offset from its center still has its own spread only.
    means = np.array([[0.0, 0.0], [10.0, 0.0]])
    rng = np.random.default_rng(6)
    x = np.concatenate([rng.normal(size=(5000, 2)) * 0.1 + [0.5, 0.0], rng.normal(size=(5000, 2)) * 0.3 + [10, 0]])
    value, per, counts = within_cluster_std(x, means, return_per_cluster=True)
    np.testing.assert_allclose(per, [0.1, 0.3], rtol=0.04)
    assert value == pytest.approx(0.2, rel=0.04)
    assert counts.tolist() == [5000, 5000]


def test_within_cluster_std_radius_cutoff_and_small_clusters():
    means = _circle_means()
    # Planted: cluster 0 has points at distance 0.1 and 1.0 (the latter are cut off);
    # cluster 1 has only 3 points (skipped).
    pts = [means[0] + [0.1, 0.0], means[0] - [0.1, 0.0], means[0] + [0.0, 0.1], means[0] - [0.0, 0.1]]
    far = [means[0] * 1.9]
    few = [means[1]] * 3
    x = np.array(pts + far + few)
    value, per, counts = within_cluster_std(x, means, max_radius=0.3, min_cluster_size=4, return_per_cluster=True)
    # Four points at +-0.1 on each axis: per-axis mean square = (2 * 0.01) / (4 * 2) * 2 = 0.005.
    assert value == pytest.approx(np.sqrt(0.005))
    assert counts[0] == 4 and counts[1] == 3 and np.isnan(per[1])
    assert np.isnan(within_cluster_std(x[:2], means))


def test_within_cluster_std_errors():
    with pytest.raises(ValueError, match="same dimension"):
        within_cluster_std(np.zeros((10, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="max_radius"):
        within_cluster_std(np.zeros((10, 2)), np.zeros((3, 2)), max_radius=-1.0)
    with pytest.raises(ValueError, match="min_cluster_size"):
        within_cluster_std(np.zeros((10, 2)), np.zeros((3, 2)), min_cluster_size=1)
    with pytest.raises(TypeError, match="samples"):
        within_cluster_std("abc", np.zeros((3, 2)))
