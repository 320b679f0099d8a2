from keras_ambient.data.digits import load_digits
from keras_ambient.data.gaussian_mixture import GaussianMixture
from keras_ambient.data.noise import add_noise, mixed_noise_levels
from keras_ambient.data.corruptions import downsample_upsample, gaussian_blur, jpeg_compress
