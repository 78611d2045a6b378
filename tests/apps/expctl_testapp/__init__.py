"""A tiny Hydra app for expctl's tests (run as ``python -m expctl_testapp``)."""
