import numpy as np
import pytest

import keras_ambient as ka
from tests.harness import run_network_test


def test_mlp_denoiser(tmp_path):
    net = ka.networks.MLPDenoiser(3, hidden_units=16, num_blocks=2, embedding_dim=8, seed=0)
    run_network_test(net, tmp_path=tmp_path)


@pytest.mark.parametrize("embedding", ["fourier", "positional"])
def test_mlp_denoiser_embeddings(embedding):
    net = ka.networks.MLPDenoiser(2, hidden_units=8, num_blocks=1, embedding=embedding,
                                  embedding_dim=8, dropout=0.1)
    run_network_test(net)


def test_mlp_denoiser_class_conditioning():
    net = ka.networks.MLPDenoiser(2, hidden_units=8, num_blocks=1, embedding_dim=8, num_classes=3)
    run_network_test(net, condition=np.array([0, 2, 1], "int32"))


@pytest.mark.slow
def test_unet(tmp_path):
    net = ka.networks.UNet(image_shape=(8, 8, 1), base_channels=8, channel_multipliers=(1, 2),
                           num_res_blocks=1, attention_resolutions=(4,), num_heads=2, seed=0)
    run_network_test(net, batch=2, tmp_path=tmp_path)


@pytest.mark.slow
def test_unet_vector_conditioning():
    net = ka.networks.UNet(image_shape=(4, 4, 3), base_channels=8, channel_multipliers=(1,),
                           num_res_blocks=1, condition_dim=5, embedding="fourier")
    run_network_test(net, batch=2, condition=np.ones((2, 5), "float32"))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"image_shape": (8, 8)}, "image_shape"),
        ({"image_shape": (6, 6, 1), "channel_multipliers": (1, 2, 2)}, "divisible"),
        ({"image_shape": (8, 8, 1), "channel_multipliers": ()}, "channel_multipliers"),
        ({"image_shape": (8, 8, 1), "embedding": "bogus"}, "embedding"),
        ({"image_shape": (8, 8, 1), "num_classes": 3, "condition_dim": 4}, "not both"),
        ({"image_shape": (8, 8, 1), "dropout": 1.5}, "dropout"),
    ],
)
def test_unet_bad_arguments(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        ka.networks.UNet(**kwargs)


def test_mlp_bad_arguments():
    with pytest.raises(ValueError, match="Received: data_dim=0"):
        ka.networks.MLPDenoiser(0)
    with pytest.raises(TypeError, match="hidden_units"):
        ka.networks.MLPDenoiser(2, hidden_units=2.5)
