"""Headless core: no Qt, TensorFlow imported lazily."""
