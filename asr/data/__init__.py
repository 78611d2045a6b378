"""Offline synthetic English speech: a sentence generator and espeak-ng synthesis."""
