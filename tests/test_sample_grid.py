import json
import os

import keras
import numpy as np
import pytest

import keras_ambient as ka
from keras_ambient.callbacks.sample_grid import SampleGrid
from keras_ambient.utils import images as images_lib
from keras_ambient.utils.defaults import suggest_sigma_data


# ------------------------------------------------------------- PNG helpers
def test_png_round_trip_exact():
    rng = np.random.default_rng(0)
    for shape in [(5, 7), (5, 7, 1), (3, 4, 3), (2, 9, 4)]:
        pic = rng.integers(0, 256, size=shape).astype("uint8")
        data = images_lib.encode_png(pic)
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        path = images_lib.write_png(os.path.join(os.environ.get("TMPDIR", "/tmp"), "ka_rt.png"), pic)
        back = images_lib.read_png(path)
        np.testing.assert_array_equal(back, pic.reshape(back.shape))


def test_png_readable_by_pillow(tmp_path):
    from PIL import Image

    pic = np.arange(12 * 10 * 3, dtype="uint8").reshape(12, 10, 3)
    path = images_lib.write_png(tmp_path / "a.png", pic)
    with Image.open(path) as im:
        im.load()
        assert im.size == (10, 12) and im.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(im), pic)


def test_any_png_is_read(tmp_path):
    """Files from other writers: row filters (Pillow's optimize), palette, 16-bit grey."""
    from PIL import Image

    rng = np.random.default_rng(1)
    smooth = np.cumsum(rng.integers(0, 3, size=(16, 16, 3)), axis=1).astype("uint8")
    Image.fromarray(smooth).save(tmp_path / "filtered.png", optimize=True)
    np.testing.assert_array_equal(images_lib.read_png(tmp_path / "filtered.png"), smooth)
    Image.fromarray(smooth).convert("P", palette=Image.Palette.ADAPTIVE, colors=256).save(
        tmp_path / "palette.png")
    assert images_lib.read_png(tmp_path / "palette.png").shape == (16, 16, 3)
    Image.fromarray(smooth[..., 0].astype("uint16") * 256).save(tmp_path / "grey16.png")
    assert images_lib.read_png(tmp_path / "grey16.png").shape == (16, 16, 1)
    (tmp_path / "text.png").write_text("not a picture")
    with pytest.raises(ValueError, match="Not a readable PNG.*Received: path="):
        images_lib.read_png(tmp_path / "text.png")
    Image.fromarray(smooth).save(tmp_path / "photo.jpg")
    with pytest.raises(ValueError, match="Not a PNG file"):
        images_lib.read_png(tmp_path / "photo.jpg")


def test_image_grid_layout_and_values():
    x = np.stack([np.full((2, 3, 1), v, "float32") for v in (-1.0, 0.0, 1.0)])
    grid = images_lib.image_grid(x, num_columns=2, padding=1)
    # 2 rows x 2 columns of 2x3 tiles with 1-px borders.
    assert grid.shape == (2 * 3 + 1, 2 * 4 + 1, 1)
    assert grid[1, 1, 0] == 0 and grid[1, 5, 0] == 128 and grid[4, 1, 0] == 255
    assert grid[0].max() == 0  # border
    assert grid[4, 5, 0] == 0  # empty 4th cell
    big = images_lib.image_grid(x[:1], scale=3, padding=0)
    assert big.shape == (6, 9, 1)
    white = images_lib.image_grid(x, num_columns=2, padding=1, pad_value=255)
    assert white[0].min() == 255 and white[4, 5, 0] == 255  # border and empty cell
    np.testing.assert_array_equal(white[1:3, 1:4], grid[1:3, 1:4])  # the tiles are unchanged
    with pytest.raises(ValueError, match="Received: pad_value=256"):
        images_lib.image_grid(x, pad_value=256)


def test_picture_errors():
    with pytest.raises(ValueError, match="Received: images with shape"):
        images_lib.image_grid(np.zeros((2, 4, 4, 5)))
    with pytest.raises(ValueError, match="Received: samples with shape"):
        images_lib.to_picture(np.zeros((3, 5)))
    with pytest.raises(TypeError, match="uint8"):
        images_lib.encode_png(np.zeros((2, 2), "float32"))


def test_scatter_marks_points():
    pic = images_lib.scatter_image(np.array([[0.0, 0.0], [1.0, 1.0]]), size=11, limits=(0, 1), radius=0)
    assert pic.shape == (11, 11, 1)
    assert pic[10, 0, 0] == 255 and pic[0, 10, 0] == 255  # (0,0) bottom-left, (1,1) top-right
    assert pic.sum() == 2 * 255


# ------------------------------------------------------- suggest_sigma_data
def test_suggest_sigma_data_recovers_clean_std():
    rng = np.random.default_rng(0)
    x = 0.5 * rng.standard_normal((4000, 16))
    y = x + 0.3 * rng.standard_normal(x.shape)
    assert abs(suggest_sigma_data(y, 0.3) - 0.5) < 0.01
    assert abs(suggest_sigma_data(x, 0.0) - x.std()) < 1e-9
    # Per-sample levels: half clean, half at 0.6 -> mean noise variance 0.18.
    levels = np.where(np.arange(4000) % 2 == 0, 0.0, 0.6)
    y2 = x + levels[:, None] * rng.standard_normal(x.shape)
    assert abs(suggest_sigma_data(y2, levels) - 0.5) < 0.015
    # All noise: clipped at 5% of std(y), stays positive.
    assert suggest_sigma_data(0.3 * rng.standard_normal((100, 4)), 1.0) > 0


def test_suggest_sigma_data_errors():
    with pytest.raises(ValueError, match="sigma_n"):
        suggest_sigma_data(np.zeros((4, 2)), [0.1, 0.2])
    with pytest.raises(ValueError, match="sigma_n"):
        suggest_sigma_data(np.zeros((4, 2)), -0.1)
    with pytest.raises(ValueError, match="at least 2"):
        suggest_sigma_data(np.zeros((1, 2)), 0.1)


# ------------------------------------------------------------- SampleGrid
def _tiny_model(shape):
    if len(shape) == 1:
        net = ka.networks.MLPDenoiser(shape[0], hidden_units=8, num_blocks=1, embedding_dim=8, seed=0)
    else:
        net = ka.networks.UNet(shape, base_channels=4, channel_multipliers=(1,), num_res_blocks=1,
                               num_groups=4, seed=0)
    model = ka.AmbientDiffusion(net, sigma_n=0.2, consistency_weight=0.0, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    return model


def test_sample_grid_writes_fixed_seed_pngs(tmp_path):
    model = _tiny_model((4, 4, 1))
    y = np.random.default_rng(0).uniform(-1, 1, (8, 4, 4, 1)).astype("float32")
    grid = SampleGrid(tmp_path / "g", every_n_epochs=2, num_samples=4, num_steps=2, mode="truncated",
                      on_train_end=True)
    model.fit(y, batch_size=8, epochs=4, verbose=0, callbacks=[grid])
    names = sorted(os.listdir(tmp_path / "g"))
    assert names == ["samples_epoch_0002.png", "samples_epoch_0004.png", "samples_final.png"]
    final = images_lib.read_png(tmp_path / "g" / "samples_final.png")
    # 4 tiles of 4x4 upscaled x8 in a 2x2 grid with 1-px padding.
    assert final.shape == (2 * 33 + 1, 2 * 33 + 1, 1)
    # Fixed seed + EMA weights: regenerating now gives the same picture.
    again = images_lib.to_picture(grid.generate())
    np.testing.assert_array_equal(again, final)


def test_sample_grid_scatter_for_2d(tmp_path):
    model = _tiny_model((2,))
    y = np.random.default_rng(0).normal(size=(16, 2)).astype("float32")
    grid = SampleGrid(tmp_path, num_samples=8, num_steps=2)
    model.fit(y, batch_size=16, epochs=1, verbose=0, callbacks=[grid])
    pic = images_lib.read_png(grid.paths[0])
    assert pic.shape == (256, 256, 1) and pic.max() == 255


def test_sample_grid_arguments(tmp_path):
    with pytest.raises(ValueError, match="mode"):
        SampleGrid(tmp_path, mode="sideways")
    with pytest.raises(ValueError, match="every_n_epochs"):
        SampleGrid(tmp_path, every_n_epochs=0)
    with pytest.raises(ValueError, match="output_dir"):
        SampleGrid(None)
    config = SampleGrid(tmp_path, every_n_epochs=3).get_config()
    assert config["every_n_epochs"] == 3
    assert SampleGrid(**config).get_config() == config


def _has(module):
    try:
        __import__(module)
        return True
    except ImportError:
        return False


@pytest.mark.skipif(_has("tensorflow") and _has("tensorboard"), reason="TensorBoard is installed")
def test_sample_grid_tensorboard_needs_tensorflow(tmp_path):
    with pytest.raises(ImportError, match="pip install tensorflow-cpu tensorboard"):
        SampleGrid(None, tensorboard_writer=str(tmp_path / "tb"))


@pytest.mark.skipif(not (_has("tensorflow") and _has("tensorboard")), reason="needs TensorBoard")
def test_sample_grid_tensorboard(tmp_path):
    import tensorflow as tf

    model = _tiny_model((4, 4, 1))
    y = np.zeros((4, 4, 4, 1), "float32")
    grid = SampleGrid(None, num_samples=2, num_steps=2, mode="truncated", tensorboard_writer=str(tmp_path / "tb"))
    model.fit(y, batch_size=4, epochs=1, verbose=0, callbacks=[grid])
    events = [f for f in os.listdir(tmp_path / "tb") if f.startswith("events")]
    assert events
    found = False
    for event in tf.compat.v1.train.summary_iterator(str(tmp_path / "tb" / events[0])):
        for value in event.summary.value:
            found |= value.tag == "samples"
    assert found
