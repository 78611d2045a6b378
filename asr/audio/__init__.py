"""Audio in, features out: reading and resampling audio, MFCC / log-mel features, waveform and feature augmentation."""
