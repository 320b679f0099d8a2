from keras_ambient.networks.mlp_denoiser import MLPDenoiser
from keras_ambient.networks.unet import UNet
