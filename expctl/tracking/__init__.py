"""Tracking of jobs: the tracker hooks, MLflow runs of jobs (made, kept in sync, promoted)."""
