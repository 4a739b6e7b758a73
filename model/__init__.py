"""TensorFlow/Keras model package (no Qt, no ssald_desktop)."""
