"""Training: the loop (epochs, validation, checkpoints, early stopping), distribution strategies, MLflow logging."""
