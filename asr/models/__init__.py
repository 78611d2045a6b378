"""The acoustic models: Keras architectures and layers, the CTC loss."""
