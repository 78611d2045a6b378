"""Experiment specs: composed with the app's Hydra, read from queue files, submitted as jobs."""
