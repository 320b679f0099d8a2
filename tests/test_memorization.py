"""Tests of keras_ambient.memorization (docs/method.md §7)."""

import json

import keras
import numpy as np
import pytest
from keras import ops

import keras_ambient as ka
from keras_ambient import memorization as mem


def _brute(q, r, metric):
    q = q.reshape(len(q), -1).astype("float64")
    r = r.reshape(len(r), -1).astype("float64")
    if metric == "cosine":
        qn = q / np.linalg.norm(q, axis=1, keepdims=True)
        rn = r / np.linalg.norm(r, axis=1, keepdims=True)
        s = qn @ rn.T
        idx = np.argsort(-s, axis=1)[:, :2]
    else:
        s = np.sqrt(((q[:, None, :] - r[None, :, :]) ** 2).sum(-1))
        idx = np.argsort(s, axis=1)[:, :2]
    return np.take_along_axis(s, idx, axis=1), idx


# ----------------------------------------------------------- nearest neighbours
@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_blocked_search_equals_brute_force(metric):
    rng = np.random.default_rng(0)
    q = rng.standard_normal((37, 3, 4)).astype("float32")
    r = rng.standard_normal((53, 3, 4)).astype("float32")
    want_v, want_i = _brute(q, r, metric)
    for qb, rb in [(1024, 8192), (5, 7), (37, 1)]:
        v, i = mem.nearest_neighbors(q, r, metric=metric, k=2, query_batch_size=qb, reference_batch_size=rb)
        np.testing.assert_array_equal(i, want_i)
        np.testing.assert_allclose(v, want_v, rtol=1e-6, atol=1e-6)


def test_planted_duplicates_found():
    rng = np.random.default_rng(1)
    train = rng.standard_normal((40, 8, 8, 1)).astype("float32")
    planted = np.array([3, 17, 39, 0])
    queries = np.concatenate([train[planted], rng.standard_normal((6, 8, 8, 1)).astype("float32")])
    report = mem.measure_similarity(queries, train, query_batch_size=3, reference_batch_size=7)
    np.testing.assert_array_equal(report.nearest_indices[:4], planted)
    np.testing.assert_array_equal(report.nearest_indices_l2[:4], planted)
    np.testing.assert_allclose(report.similarities[:4], 1.0, atol=1e-9)
    np.testing.assert_array_equal(report.l2_ratios[:4], 0.0)
    np.testing.assert_array_equal(report.nearest_distances[:4], 0.0)
    # The 6 random queries are not copies: in 64 dimensions cosine ~ N(0, 1/64).
    assert np.all(report.similarities[4:] < 0.7)
    assert np.all(report.l2_ratios[4:] > 0.5)
    assert report.fraction_above["0.95"] == pytest.approx(0.4)
    assert report.almost_identical_rate == pytest.approx(0.4)
    assert report.close_match_rate == pytest.approx(0.4)
    assert report.ratio_test_rate == pytest.approx(0.4)
    assert report.max_similarity == pytest.approx(1.0)


def test_random_data_reports_no_memorization():
    rng = np.random.default_rng(2)
    train = rng.standard_normal((200, 64)).astype("float32")
    queries = rng.standard_normal((100, 64)).astype("float32")
    for center in (False, True):
        report = mem.measure_similarity(queries, train, center=center)
        assert report.fraction_above["0.95"] == 0.0
        assert report.fraction_above["0.9"] == 0.0
        assert report.ratio_test_rate == 0.0
        assert report.max_similarity < 0.6
        # nearest index agrees with brute force
        _, idx = _brute(queries - (train.mean(0) if center else 0), train - (train.mean(0) if center else 0), "cosine")
        np.testing.assert_array_equal(report.nearest_indices, idx[:, 0])


def test_center_removes_shared_background():
    # Two different "digits" on a big constant background: raw cosine is high,
    # centred cosine sees that they differ.
    rng = np.random.default_rng(3)
    train = -np.ones((50, 64), "float32")
    for i in range(50):
        train[i, rng.choice(64, 8, replace=False)] = 1.0
    q = -np.ones((1, 64), "float32")
    q[0, rng.choice(64, 8, replace=False)] = 1.0
    raw = mem.measure_similarity(q, train)
    centred = mem.measure_similarity(q, train, center=True)
    assert raw.similarities[0] > 0.6
    assert centred.similarities[0] < raw.similarities[0] - 0.2


# ----------------------------------------------------------------- reports
def test_report_json_round_trip(tmp_path):
    rng = np.random.default_rng(4)
    train = rng.standard_normal((30, 5)).astype("float32")
    report = mem.measure_similarity(train[:6] + 0.01, train, source_indices=np.arange(6), name="copies")
    assert report.source_match_rate == 1.0
    d = report.to_dict()
    text = json.dumps(d)  # plain JSON
    back = mem.MemorizationReport.from_dict(json.loads(text))
    assert back == report
    np.testing.assert_array_equal(back.nearest_indices, report.nearest_indices)
    path = tmp_path / "r.json"
    report.to_json(str(path))
    again = mem.MemorizationReport.from_json(str(path))
    assert again == report
    assert again.summary().startswith("copies: n=6 vs 30")
    assert again.rate_above(0.99) == 1.0


# -------------------------------------------------------------- noise attack
def _memorizing_denoiser(train):
    """Exact E[x0 | x0 + sigma z] when x0 is uniform over the finite `train`."""
    flat = ops.convert_to_tensor(train.reshape(len(train), -1))
    sq = ops.sum(flat * flat, axis=1)

    def denoise(x, sigma):
        xf = ops.reshape(ops.convert_to_tensor(x, "float32"), (ops.shape(x)[0], -1))
        logits = (2.0 * ops.matmul(xf, ops.transpose(flat)) - sq[None, :]) / (2.0 * sigma ** 2)
        w = ops.softmax(logits, axis=-1)
        return ops.reshape(ops.matmul(w, flat), ops.shape(x))

    return denoise


def _gaussian_denoiser(train):
    """Exact E[x0 | x] for Gaussian data N(mu, S) fitted to `train` (docs/method.md §8)."""
    flat = train.reshape(len(train), -1).astype("float64")
    mu = flat.mean(0)
    cov = np.cov(flat, rowvar=False) + 1e-6 * np.eye(flat.shape[1])
    evals, evecs = np.linalg.eigh(cov)

    def denoise(x, sigma):
        xf = np.asarray(ops.convert_to_numpy(x), "float64").reshape(len(x), -1)
        gain = evecs @ np.diag(evals / (evals + sigma ** 2)) @ evecs.T
        out = mu + (xf - mu) @ gain.T
        return ops.convert_to_tensor(out.reshape(np.shape(x)).astype("float32"))

    return denoise


@pytest.fixture(scope="module")
def digits_train():
    return ka.data.load_digits("train")[:60]


def test_noise_attack_memorizing_oracle_reconstructs(digits_train):
    train = digits_train
    result = mem.noise_attack(_memorizing_denoiser(train), train[:24], sigma=[0.5, 1.0], num_draws=2,
                              num_steps=8, seed=0)
    assert set(result.mmse) == {"0.5", "1"} and result.posterior["1"].shape == (2, 24, 8, 8, 1)
    reports = result.reports(train, center=True)
    r = reports["mmse@sigma=0.5"]
    assert r.fraction_above["0.95"] == 1.0 and r.source_match_rate == 1.0 and r.ratio_test_rate == 1.0
    # At sigma = 1 (the digits' scale) the posterior mean is still nearly the source.
    r = reports["mmse@sigma=1"]
    assert r.source_match_rate >= 0.95 and r.fraction_above["0.95"] >= 0.8 and r.ratio_test_rate >= 0.7
    # Posterior samples of a finite set collapse onto training points: exact copies.
    for key in ("posterior@sigma=0.5", "posterior@sigma=1"):
        r = reports[key]
        assert r.fraction_above["0.95"] == 1.0 and r.ratio_test_rate == 1.0, key
        assert r.similarities.min() > 0.999, key
        assert r.source_match_rate >= 0.9, key


def test_noise_attack_gaussian_denoiser_does_not(digits_train):
    train = digits_train
    result = mem.noise_attack(_gaussian_denoiser(train), train[:24], sigma=1.0, num_draws=2,
                              num_steps=8, seed=0)
    reports = result.reports(train, center=True)
    for name, r in reports.items():
        assert r.fraction_above["0.95"] == 0.0, name
        assert r.ratio_test_rate == 0.0, name
        assert r.mean_similarity < 0.8, name


def test_noise_attack_same_noise_every_call(digits_train):
    fn = _memorizing_denoiser(digits_train)
    a = mem.noise_attack(fn, digits_train[:4], sigma=2.0, posterior=False, seed=7)
    b = mem.noise_attack(fn, digits_train[:4], sigma=2.0, posterior=False, seed=7)
    np.testing.assert_array_equal(a.noisy["2"], b.noisy["2"])
    np.testing.assert_array_equal(a.noisy["2"], ka.data.add_noise(digits_train[:4], 2.0, seed=7))


def test_noise_attack_latent_hooks(digits_train):
    # A linear "autoencoder": the attack runs on latents 2x, decoded back.
    train = digits_train
    fn = _memorizing_denoiser(2.0 * train)
    result = mem.noise_attack(fn, train[:8], sigma=0.5, num_draws=1, num_steps=4, seed=0,
                              encode=lambda x: 2.0 * x, decode=lambda z: z / 2.0)
    np.testing.assert_allclose(result.mmse["0.5"], train[:8], atol=1e-4)
    assert result.settings["latent"] is True


def test_noise_attack_on_ambient_diffusion(digits_train):
    # Works on any AmbientDiffusion (here a tiny untrained MLP on flattened digits).
    x = digits_train.reshape(len(digits_train), -1)
    model = ka.AmbientDiffusion(ka.networks.MLPDenoiser(64, hidden_units=16, num_blocks=1, seed=0),
                                sigma_n=0.2, consistency_weight=0.0, seed=0)
    model.build()
    result = mem.noise_attack(model, x[:5], sigma=1.0, num_draws=2, num_steps=3, seed=0,
                              source_indices=np.arange(10, 15))
    np.testing.assert_allclose(result.mmse["1"], model.denoise(result.noisy["1"], 1.0), atol=1e-5)
    np.testing.assert_array_equal(result.noisy["1"], ka.data.add_noise(x[:5], 1.0, seed=0))
    assert result.posterior["1"].shape == (2, 5, 64)
    assert not np.allclose(result.posterior["1"][0], result.posterior["1"][1])  # stochastic draws
    reports = result.reports(x)
    np.testing.assert_array_equal(reports["posterior@sigma=1"].source_indices, np.tile(np.arange(10, 15), 2))
    with pytest.raises(ValueError, match="sigma_max"):
        mem.noise_attack(model, x[:2], sigma=100.0)


# -------------------------------------------------------------- bad inputs
def test_errors():
    rng = np.random.default_rng(0)
    train = rng.standard_normal((10, 4, 4, 1)).astype("float32")
    with pytest.raises(ValueError, match="same number of features"):
        mem.nearest_neighbors(train, train[:, :2])
    with pytest.raises(ValueError, match="must not be empty"):
        mem.nearest_neighbors(train[:0], train)
    with pytest.raises(ValueError, match="must not be empty"):
        mem.nearest_neighbors(train, train[:0])
    with pytest.raises(ValueError, match="metric"):
        mem.nearest_neighbors(train, train, metric="l1")
    with pytest.raises(ValueError, match="finite"):
        mem.nearest_neighbors(np.full((2, 3), np.nan), train.reshape(10, -1)[:, :3])
    with pytest.raises(ValueError, match="at least 2 images"):
        mem.SimilarityIndex(train[:1])
    with pytest.raises(ValueError, match="at least 2 images"):
        mem.measure_similarity(train, train[:0])
    with pytest.raises(ValueError, match=r"shape \(4, 4, 1\)"):
        mem.measure_similarity(train[:, :2], train)
    with pytest.raises(ValueError, match="non-empty"):
        mem.measure_similarity(train[:0], train)
    with pytest.raises(ValueError, match="source_indices"):
        mem.measure_similarity(train, train, source_indices=np.arange(3))
    fn = _memorizing_denoiser(train)
    for bad in (0.0, -0.1, [1.0, 0.0], float("nan"), [1.0, 1.0], []):
        with pytest.raises(ValueError, match="sigma"):
            mem.noise_attack(fn, train, sigma=bad)
    with pytest.raises(ValueError, match="non-empty"):
        mem.noise_attack(fn, train[:0], sigma=1.0)
    with pytest.raises(TypeError, match="denoiser"):
        mem.noise_attack("model", train, sigma=1.0)
    with pytest.raises(ValueError, match="num_draws|>= 1"):
        mem.noise_attack(fn, train, sigma=1.0, num_draws=0)
    with pytest.raises(ValueError, match="shaped like its input"):
        mem.noise_attack(lambda x, s: x[:, :2], train, sigma=1.0, posterior=False)
    with pytest.raises(ValueError, match="feature_extractor"):
        mem.SimilarityIndex(train, feature_extractor="inception")
    with pytest.raises(ValueError, match="thresholds"):
        mem.SimilarityIndex(train, thresholds=(1.5,))


# -------------------------------------------------------- feature extractors
def test_keras_model_feature_extractor():
    rng = np.random.default_rng(5)
    train = rng.standard_normal((20, 4, 4, 1)).astype("float32")
    enc = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(), keras.layers.Dense(6, use_bias=False)])
    w = np.asarray(enc.layers[-1].kernel.numpy() if hasattr(enc.layers[-1].kernel, "numpy")
                   else ops.convert_to_numpy(enc.layers[-1].kernel))
    f = mem.KerasFeatureExtractor(enc, batch_size=7)
    np.testing.assert_allclose(f(train), train.reshape(20, -1) @ w, rtol=1e-4, atol=1e-5)
    report = mem.measure_similarity(train[[4, 9]], train, feature_extractor=enc)
    np.testing.assert_array_equal(report.nearest_indices, [4, 9])
    # a plain callable works too
    report = mem.measure_similarity(train[[2]], train, feature_extractor=lambda x: x.reshape(len(x), -1) ** 2)
    assert report.similarities[0] == pytest.approx(1.0)


# -------------------------------------------------------------------- plots
def test_pictures_are_valid_pngs(tmp_path, digits_train):
    from PIL import Image

    train = digits_train
    rng = np.random.default_rng(6)
    q = train[:10] + 0.1 * rng.standard_normal(train[:10].shape).astype("float32")
    r = mem.measure_similarity(q, train, center=True, name="q")
    p1 = mem.plot_triplets(str(tmp_path / "t.png"), q, train, r.nearest_indices, originals=train[:10],
                           similarities=r.similarities, num=5)
    r2 = mem.measure_similarity(rng.uniform(-1, 1, (10, 8, 8, 1)).astype("float32"), train, center=True)
    p2 = mem.plot_similarity_histogram(str(tmp_path / "h.png"), {"copies": r, "random": r2.similarities})
    for p in (p1, p2):
        with Image.open(p) as im:
            im.verify()
        with Image.open(p) as im:
            assert im.format == "PNG" and im.size[0] > 100 and im.size[1] > 50
    with pytest.raises(ValueError, match="nearest_indices"):
        mem.plot_triplets(str(tmp_path / "x.png"), q, train, r.nearest_indices[:3])
    with pytest.raises(ValueError, match="results"):
        mem.plot_similarity_histogram(str(tmp_path / "x.png"), {})


# ----------------------------------------------------------- progress bars
def test_search_progress_bar(capsys):
    rng = np.random.default_rng(7)
    train = rng.standard_normal((20, 4, 4, 1)).astype("float32")
    q = rng.standard_normal((12, 4, 4, 1)).astype("float32")
    kw = dict(query_batch_size=5, reference_batch_size=7)  # 3 x 3 blocks
    quiet = mem.nearest_neighbors(q, train, **kw)
    quiet_report = mem.measure_similarity(q, train, **kw)
    assert capsys.readouterr().out == ""
    loud = mem.nearest_neighbors(q, train, verbose=1, **kw)
    out = capsys.readouterr().out
    assert "9/9" in out and "block" in out
    loud_report = mem.measure_similarity(q, train, verbose=1, **kw)
    assert "18/18" in capsys.readouterr().out  # cosine + L2 searches, one bar
    for a, b in zip(quiet, loud):
        np.testing.assert_array_equal(a, b)
    assert loud_report == quiet_report
    mem.SimilarityIndex(train, **kw).query(q, verbose=True)
    assert "18/18" in capsys.readouterr().out


def test_noise_attack_progress_bar(capsys, digits_train):
    fn = _memorizing_denoiser(digits_train)
    kw = dict(sigma=[0.5, 1.0], num_draws=2, num_steps=3, seed=0, batch_size=2)
    quiet = mem.noise_attack(fn, digits_train[:5], **kw)
    quiet.reports(digits_train)
    assert capsys.readouterr().out == ""
    loud = mem.noise_attack(fn, digits_train[:5], verbose=1, **kw)
    out = capsys.readouterr().out
    assert "18/18" in out and "batch" in out  # 2 levels x 3 batches x (MMSE + 2 draws)
    np.testing.assert_array_equal(quiet.posterior["1"], loud.posterior["1"])
    loud.reports(digits_train, verbose=1)
    assert "2/2" in capsys.readouterr().out


def test_noise_attack_progress_bar_on_model(capsys, digits_train):
    x = digits_train.reshape(len(digits_train), -1)
    model = ka.AmbientDiffusion(ka.networks.MLPDenoiser(64, hidden_units=16, num_blocks=1, seed=0),
                                sigma_n=0.2, consistency_weight=0.0, seed=0)
    model.build()
    kw = dict(sigma=1.0, num_draws=2, num_steps=3, seed=0, batch_size=2)
    quiet = mem.noise_attack(model, x[:5], **kw)
    assert capsys.readouterr().out == ""
    loud = mem.noise_attack(model, x[:5], verbose=1, **kw)
    assert "9/9" in capsys.readouterr().out  # 3 batches x (MMSE + 2 draws)
    # The bar changes nothing: same reconstructions, batched like `denoise`.
    np.testing.assert_array_equal(quiet.mmse["1"], loud.mmse["1"])
    np.testing.assert_array_equal(quiet.posterior["1"], loud.posterior["1"])
    np.testing.assert_allclose(loud.mmse["1"], model.denoise(loud.noisy["1"], 1.0, batch_size=2), atol=1e-5)
    # A custom sampler (no callback) still completes the bar.
    mem.noise_attack(model, x[:5], sigma=1.0, mmse=False, num_steps=2, seed=0, batch_size=2, verbose=1,
                     sampler=lambda fn, x, sigmas, **k: ka.samplers.sample_euler(fn, x, sigmas))
    assert "3/3" in capsys.readouterr().out
