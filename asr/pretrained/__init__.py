"""The packaged models (``en.bin``, model cards) and the one resolver from a model name to a bundle."""
