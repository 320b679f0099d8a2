# Keep this package free of Keras imports: keras_ambient/__init__.py imports
# backend_choice from it before Keras, to choose the backend.
from keras_ambient.utils import backend_choice, defaults, images
from keras_ambient.utils.defaults import suggest_sigma_data
