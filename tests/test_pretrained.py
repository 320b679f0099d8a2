"""Fine-tuning pretrained latent models (docs/method.md §6): keras-hub SD3, keras-cv SD, LoRA."""

import os

import keras
import numpy as np
import pytest

import keras_ambient as ka
from tests.harness import to_numpy

SIGMA_N = 0.5


def _fixed_noise_ambient_loss(model, data, batch_size):
    """M3 on `data` with the same training noise every time (seed state reset)."""
    state = to_numpy(model.seed_generator.state)
    model.seed_generator.state.assign(np.array([7, 0], state.dtype))
    loss = model.evaluate(data, batch_size=batch_size, verbose=0, return_dict=True)["ambient_loss"]
    model.seed_generator.state.assign(state)
    return loss


def _train_and_check(model, data, tmp_path, condition=None, steps_epochs=4, lr=1e-2):
    """Loss on fixed noise decreases; frozen weights stay put; save/load is identical."""
    frozen = [to_numpy(v).copy() for v in model.denoiser.non_trainable_weights]
    trainable = [to_numpy(v).copy() for v in model.denoiser.trainable_weights]
    model.compile(optimizer=keras.optimizers.Adam(lr))
    before = _fixed_noise_ambient_loss(model, data, batch_size=8)
    history = model.fit(data, batch_size=4, epochs=steps_epochs, verbose=0)
    assert all(np.isfinite(history.history["loss"]))
    after = _fixed_noise_ambient_loss(model, data, batch_size=8)
    assert after < 0.95 * before, (before, after)
    for a, b in zip(frozen, model.denoiser.non_trainable_weights):
        np.testing.assert_array_equal(a, to_numpy(b))
    assert any(not np.allclose(a, to_numpy(b)) for a, b in zip(trainable, model.denoiser.trainable_weights))

    path = os.path.join(str(tmp_path), "finetuned.keras")
    model.save(path)
    restored = keras.models.load_model(path)
    x = data["data"][:2]
    cond = None if condition is None else ka.utils.structures.slice_condition(condition, 0, 2)
    for use_ema in (True, False):
        np.testing.assert_allclose(
            restored.denoise(x, 0.8, condition=cond, use_ema=use_ema),
            model.denoise(x, 0.8, condition=cond, use_ema=use_ema), atol=1e-5)
    return restored


# ------------------------------------------------------------------- keras-hub SD3
def _tiny_sd3_backbone():
    pytest.importorskip("keras_hub")
    from keras_hub.src.models.clip.clip_text_encoder import CLIPTextEncoder
    from keras_hub.src.models.stable_diffusion_3.stable_diffusion_3_backbone import (
        StableDiffusion3Backbone,
    )
    from keras_hub.src.models.vae.vae_backbone import VAEBackbone

    # keras-hub's own test configuration of the backbone (64x64 images, 8x8x16 latents).
    keras.utils.set_random_seed(0)
    vae = VAEBackbone([32] * 4, [1] * 4, [32] * 4, [1] * 4, sampler_method="mode", name="vae")
    clip_l = CLIPTextEncoder(20, 32, 32, 2, 2, 64, "quick_gelu", -2, name="clip_l")
    clip_g = CLIPTextEncoder(20, 64, 64, 2, 2, 128, "gelu", -2, name="clip_g")
    return StableDiffusion3Backbone(
        mmdit_patch_size=2, mmdit_hidden_dim=32, mmdit_num_layers=2, mmdit_num_heads=2,
        mmdit_position_size=192, mmdit_qk_norm=None, mmdit_dual_attention_indices=None,
        vae=vae, clip_l=clip_l, clip_g=clip_g, image_shape=(64, 64, 3))


@pytest.mark.slow
def test_sd3_lora_fine_tuning_on_noisy_latents(tmp_path):
    backbone = _tiny_sd3_backbone()
    encode, decode = ka.pretrained.sd3_vae_codec(backbone)
    rng = np.random.default_rng(0)
    images = np.tanh(rng.normal(size=(16, 8, 8, 3))).repeat(8, 1).repeat(8, 2).astype("float32")
    cache = str(tmp_path / "latents.npz")
    latents = ka.pretrained.encode_images(encode, images, batch_size=8, cache_path=cache)
    assert latents.shape == (16, 8, 8, 16)

    def failing_encode(images):
        raise AssertionError("the cached latents must be reused")

    np.testing.assert_array_equal(ka.pretrained.encode_images(failing_encode, images, cache_path=cache), latents)
    latents = latents / latents.std()
    noisy = ka.data.add_noise(latents, sigma=SIGMA_N, seed=0)  # once per latent, fixed seed
    condition = {"context": rng.normal(size=(16, 3, 4096)).astype("float32"),
                 "pooled_projection": rng.normal(size=(16, 96)).astype("float32")}

    denoiser = ka.layers.FlowDenoiser(ka.pretrained.SD3Diffuser(backbone.diffuser), shift=3.0)
    model = ka.AmbientDiffusion(
        denoiser, sigma_n=SIGMA_N, sigma_data=1.0, lora_rank=4, ema_decay=0.9, seed=0,
        data_shape=latents.shape[1:],
        ambient_loss=ka.losses.AmbientLoss(sigma_data=1.0, noise_distribution="denoiser"),
        consistency_loss=ka.losses.ConsistencyLoss(num_steps=1))
    lora = ka.pretrained.lora_variables(model.network)
    assert len(lora) == 2 * 24  # the MMDiT's 24 Dense layers
    assert {id(v) for v in model.trainable_weights} == {id(v) for v in lora}

    restored = _train_and_check(model, {"data": noisy, "condition": condition}, tmp_path,
                                condition=condition)
    samples = model.generate(2, num_steps=3, condition=ka.utils.structures.slice_condition(condition, 0, 2),
                             seed=0)
    assert samples.shape == (2, 8, 8, 16) and np.all(np.isfinite(samples))
    decoded = ka.pretrained.decode_latents(decode, samples * latents.std())
    assert decoded.shape == (2, 64, 64, 3) and np.all(np.abs(decoded) <= 1)

    # Keras merges the adapters into the kernels on save and zeroes them on load;
    # reinitialize_lora makes a loaded model trainable again without changing it.
    x = noisy[:2]
    cond = ka.utils.structures.slice_condition(condition, 0, 2)
    reference = restored.denoise(x, 0.8, condition=cond, use_ema=False)
    ka.pretrained.reinitialize_lora(restored.network, seed=1)
    np.testing.assert_allclose(restored.denoise(x, 0.8, condition=cond, use_ema=False), reference, atol=1e-5)
    assert all(np.any(to_numpy(v) != 0) for v in ka.pretrained.lora_variables(restored.network)[::2])


def test_sd3_diffuser_input_errors():
    backbone = _tiny_sd3_backbone()
    with pytest.raises(TypeError, match="MMDiT"):
        ka.pretrained.SD3Diffuser(keras.Sequential([keras.layers.Dense(2)]))
    adapter = ka.pretrained.SD3Diffuser(backbone.diffuser)
    x = np.zeros((1, 8, 8, 16), "float32")
    with pytest.raises(ValueError, match="'context' and 'pooled_projection'"):
        adapter([x, np.ones((1,), "float32"), {"context": np.zeros((1, 2, 4096), "float32")}])
    out = adapter([x, np.ones((1,), "float32")])  # unconditional: zero embeddings
    assert tuple(out.shape) == (1, 8, 8, 16)


# ------------------------------------------------------------------- keras-cv SD 1.x
def _keras_cv_stand_in(latent_shape=(8, 8, 4), text_length=4):
    """A small network with keras-cv DiffusionModel's call convention."""
    latent = keras.Input(latent_shape, name="latent")
    t_emb = keras.Input((320,), name="timestep_embedding")
    context = keras.Input((text_length, 768), name="context")
    h = keras.layers.Conv2D(16, 3, padding="same")(latent)
    t = keras.layers.Dense(16, activation="swish")(t_emb)
    c = keras.layers.Dense(16)(keras.layers.GlobalAveragePooling1D()(context))
    h = keras.layers.Activation("swish")(h + keras.layers.Reshape((1, 1, 16))(t + c))
    h = keras.layers.Conv2D(16, 3, padding="same", activation="swish")(h)
    out = keras.layers.Conv2D(latent_shape[-1], 3, padding="same")(h)
    return keras.Model([latent, t_emb, context], out)


def test_keras_cv_timestep_embedding_closed_form():
    unet = ka.pretrained.KerasCVUNet(_keras_cv_stand_in())
    t = np.array([0.0, 10.0, 999.0], "float32")
    freqs = np.exp(-np.log(10000.0) * np.arange(160) / 160)
    expected = np.concatenate([np.cos(t[:, None] * freqs), np.sin(t[:, None] * freqs)], axis=1)
    np.testing.assert_allclose(to_numpy(unet.timestep_embedding(t)), expected, atol=1e-4)


@pytest.mark.slow
def test_keras_cv_path_trains_epsilon_prediction_on_the_vp_schedule(tmp_path):
    rng = np.random.default_rng(0)
    latents = rng.normal(size=(16, 8, 8, 4)).astype("float32") * 0.8
    latents[..., 0] += np.linspace(-1, 1, 8)[None, :, None]  # structure a network can learn
    noisy = ka.data.add_noise(latents, sigma=SIGMA_N, seed=0)
    context = rng.normal(size=(16, 4, 768)).astype("float32")
    unet = ka.pretrained.KerasCVUNet(_keras_cv_stand_in(), max_text_length=4)
    schedule = ka.schedules.VPSchedule.stable_diffusion()
    denoiser = ka.layers.VPDenoiser(unet, schedule, prediction="epsilon")
    model = ka.AmbientDiffusion(
        denoiser, sigma_n=SIGMA_N, sigma_data=1.0, sigma_max=schedule.sigma_max, seed=0,
        data_shape=latents.shape[1:],
        ambient_loss=ka.losses.AmbientLoss(sigma_data=1.0, noise_distribution="denoiser"),
        consistency_loss=ka.losses.ConsistencyLoss(num_steps=1))
    _train_and_check(model, {"data": noisy, "condition": context}, tmp_path, condition=context,
                     steps_epochs=6, lr=3e-3)
    full = model.generate(2, num_steps=4, condition=context[:2], seed=0)
    truncated = model.generate(2, num_steps=4, condition=context[:2], seed=0, mode="truncated")
    assert np.all(np.isfinite(full)) and np.all(np.isfinite(truncated))


@pytest.mark.large
def test_keras_cv_stable_diffusion_unet_builds_and_denoises():
    pytest.importorskip("keras_cv")
    unet = ka.pretrained.KerasCVUNet(img_height=64, img_width=64)  # 860M parameters, random
    denoiser = ka.layers.VPDenoiser(unet, ka.schedules.VPSchedule.stable_diffusion())
    out = denoiser([np.zeros((1, 8, 8, 4), "float32"), np.array([0.5], "float32")])
    assert tuple(out.shape) == (1, 8, 8, 4)


def test_keras_cv_embedding_matches_keras_cv_if_installed():
    pytest.importorskip("tensorflow_datasets")
    keras_cv = pytest.importorskip("keras_cv")
    from keras_cv.src.models.stable_diffusion.stable_diffusion import StableDiffusionBase

    ours = to_numpy(ka.pretrained.KerasCVUNet(_keras_cv_stand_in()).timestep_embedding(np.array([421.0])))
    theirs = to_numpy(StableDiffusionBase._get_timestep_embedding(None, 421, 1))
    np.testing.assert_allclose(ours, theirs, atol=1e-4)
    assert keras_cv is not None


# ------------------------------------------------------------------- LoRA helpers
def test_enable_lora_errors_and_freezing():
    net = ka.networks.MLPDenoiser(data_dim=2, hidden_units=8, num_blocks=1)
    with pytest.raises(ValueError, match="layer_types"):
        ka.pretrained.enable_lora(net, 2, layer_types=("LSTM",))
    with pytest.raises(ValueError, match="No layer"):
        ka.pretrained.enable_lora(net, 2, name_filter="no-such-layer")
    with pytest.raises(TypeError, match="rank"):
        ka.pretrained.enable_lora(net, 2.5)
    adapted = ka.pretrained.enable_lora(net, 2)
    assert adapted and {id(v) for v in net.trainable_weights} == {
        id(v) for v in ka.pretrained.lora_variables(net)}
    with pytest.raises(ValueError, match="already enabled"):
        ka.pretrained.enable_lora(net, 2)
    unbuilt = keras.Sequential([keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="built"):
        ka.pretrained.enable_lora(unbuilt, 2)


@pytest.mark.slow
def test_fine_tuned_vp_model_loads_in_the_other_backends(tmp_path):
    from tests.harness import BACKENDS, run_in_backend

    rng = np.random.default_rng(1)
    latents = rng.normal(size=(8, 8, 8, 4)).astype("float32")
    context = rng.normal(size=(8, 4, 768)).astype("float32")
    denoiser = ka.layers.VPDenoiser(ka.pretrained.KerasCVUNet(_keras_cv_stand_in(), max_text_length=4),
                                    prediction="v")
    model = ka.AmbientDiffusion(denoiser, sigma_n=SIGMA_N, sigma_data=1.0, lora_rank=2, seed=0,
                                data_shape=latents.shape[1:])
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    model.fit({"data": latents, "condition": context}, batch_size=4, epochs=1, verbose=0)
    path = os.path.join(str(tmp_path), "vp.keras")
    model.save(path)
    np.savez(os.path.join(str(tmp_path), "inputs.npz"), x=latents[:3], c=context[:3])
    expected = model.denoise(latents[:3], 0.7, condition=context[:3])
    code = (
        "import json, numpy as np, keras, keras_ambient as ka\n"
        f"m = keras.models.load_model({path!r})\n"
        f"d = np.load({os.path.join(str(tmp_path), 'inputs.npz')!r})\n"
        "out = m.denoise(d['x'], 0.7, condition=d['c'])\n"
        "print(json.dumps({'out': out.tolist(), 'b': keras.backend.backend(),\n"
        "                  'kind': type(m.denoiser).__name__, 'lora': m.lora_rank}))\n"
    )
    for backend in BACKENDS:
        if backend == keras.backend.backend():
            continue
        result = run_in_backend(backend, code)
        assert result["b"] == backend and result["kind"] == "VPDenoiser" and result["lora"] == 2
        np.testing.assert_allclose(np.array(result["out"]), expected, atol=1e-4)


def test_mismatched_loss_sigma_data_warns():
    net = ka.networks.MLPDenoiser(data_dim=2, hidden_units=8, num_blocks=1)
    with pytest.warns(UserWarning, match="sigma_data"):
        ka.AmbientDiffusion(net, sigma_data=1.0, ambient_loss=ka.losses.AmbientLoss(sigma_data=0.5))
