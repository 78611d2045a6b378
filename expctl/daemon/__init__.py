"""The consumer daemon: its loop, the child process it shepherds, GPU locks."""
