"""Logits to text: greedy and beam-search decoders (pyctcdecode + KenLM), language models (build, tune)."""
