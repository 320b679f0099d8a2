from keras_ambient.utils import defaults, images
from keras_ambient.utils.defaults import suggest_sigma_data
