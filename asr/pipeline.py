"""The user-facing pipeline: features -> model -> decoder, plus training and saving.

    pipeline = asr.load_model("model.bin")
    sentences = pipeline(["a.wav", "b.flac"])
    X, y_hat, sentences = pipeline(files, full=True)
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from omegaconf import DictConfig, OmegaConf

from asr.audio.features import pad_features
from asr.bundle import load_bundle, save_bundle
from asr.configuration import Configuration
from asr.data.splits import load_alphabet
from asr.decoding.decoders import Decoder, make_decoder
from asr.inference import decode_logits, features_of_files, forward, logits_of_features, pad_logits
from asr.models.architectures import build_model, output_lengths
from asr.pretrained.registry import check_same_alphabet, resolve_model_path
from asr.text import Alphabet
from asr.training.init_from import initialise_from_pretrained
from asr.training.loop import train

logger = logging.getLogger(__name__)


def _as_configuration(value: Any) -> Configuration:
    if isinstance(value, Configuration):
        return value
    if isinstance(value, (str, Path, DictConfig, dict)):
        return Configuration(value)
    raise ValueError(f"configuration must be a Configuration, a path or a mapping, got {type(value).__name__}")


class Pipeline:
    """A Keras CTC model with its configuration, alphabet and optional language model."""

    def __init__(self, model: Any, configuration: Any, alphabet: Alphabet,
                 language_model: str | Path | None = None, metadata: dict | None = None) -> None:
        self.model = model
        self.configuration = configuration
        self.alphabet = alphabet
        self.language_model = Path(language_model) if language_model else None
        self.metadata = metadata or {}
        self._decoders: dict[tuple, Any] = {}

    @classmethod
    def from_configuration(cls, configuration: Any) -> "Pipeline":
        """A pipeline with a model built from ``configuration`` (then call ``train()``): new, or starting
        from the weights of the bundle named by ``trainer.init_from``."""
        configuration = _as_configuration(configuration)
        alphabet = load_alphabet(configuration.config)
        model = build_model(configuration.model, configuration.features.num_features, len(alphabet) + 1)
        metadata: dict[str, Any] = {"model": {"name": configuration.model.name}}
        if configuration.trainer.init_from:
            metadata["init_from"] = str(initialise_from_pretrained(model, configuration.config, alphabet).path)
        return cls(model, configuration, alphabet, metadata=metadata)

    @property
    def configuration(self) -> Configuration:
        return self._configuration

    @configuration.setter
    def configuration(self, value: Any) -> None:
        self._configuration = _as_configuration(value)

    # ----- inference (asr.inference) ------------------------------------------------------
    def get_features(self, files: Sequence[str | Path], return_lengths: bool = False) -> Any:
        """The padded feature batch of ``files`` with this model's feature configuration."""
        batch, lengths = pad_features(features_of_files(list(files), self.configuration.features))
        return (batch, lengths) if return_lengths else batch

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Logits ``[B, T', V]`` of a padded feature batch."""
        return forward(self.model, features)

    def output_lengths(self, feature_lengths: Any) -> Any:
        return output_lengths(np.asarray(feature_lengths), self.configuration.model)

    def decoder(self, name: str | None = None, workers: int | None = None) -> Decoder:
        """A new decoder: the configured one, or ``name`` with the configured settings; ``beam_lm`` uses the
        bundled language model. Close it (``with``) to stop its worker processes."""
        return make_decoder(self.configuration.decoder, self.alphabet, name=name, lm_path=self.language_model,
                            workers=workers)

    def _kept_decoder(self, lm_path: Path | None) -> Decoder:
        """The configured decoder, built once per decoder configuration and LM and kept for the next call."""
        key = (OmegaConf.to_yaml(self.configuration.decoder), lm_path)
        if key not in self._decoders:
            self._decoders[key] = make_decoder(self.configuration.decoder, self.alphabet, lm_path=lm_path)
        return self._decoders[key]

    def decode(self, y_hat: Any, lm: str | Path | None = None, lengths: Any = None) -> list[str]:
        """Transcripts of logits ``y_hat`` with the configuration's decoder; ``lm`` overrides the LM path."""
        return self._kept_decoder(Path(lm) if lm else self.language_model).decode(np.asarray(y_hat), lengths)

    def __call__(self, files: Sequence[str | Path] | str | Path, full: bool = False) -> Any:
        """Transcribe ``files`` (batched by length); with ``full`` return ``(X, y_hat, sentences)``, the padded
        features and logits of all files together."""
        if isinstance(files, (str, Path)):
            files = [files]
        features = features_of_files(list(files), self.configuration.features)
        logits = logits_of_features(self.model, self.configuration.model, features)
        sentences = decode_logits(self._kept_decoder(self.language_model), logits)
        return (pad_features(features)[0], pad_logits(logits), sentences) if full else sentences

    # ----- training and saving -------------------------------------------------------------
    def train(self, callbacks: Sequence[Any] = ()) -> dict:
        """Tune the current weights on ``self.configuration``'s data; returns the training summary.

        The pipeline's model is the starting point (unless ``exp_dir`` holds a checkpoint to resume);
        ``trainer.init_from`` only applies when a model is built from the configuration.
        """
        config = self.configuration.config
        built_with = self.metadata.get("model", {}).get("name")
        if built_with and built_with != config.model.name:
            logger.warning("configuration names model %s but the loaded model is %s: tuning the loaded one",
                           config.model.name, built_with)
        if config.data.alphabet:  # the labels must be the model's outputs
            check_same_alphabet(self.alphabet, "the pipeline's model", Alphabet.from_file(config.data.alphabet),
                                f"the configuration (data.alphabet={config.data.alphabet})")
        if config.trainer.init_from and not self.metadata.get("init_from"):
            logger.info("trainer.init_from=%s not loaded: tuning the pipeline's own weights", config.trainer.init_from)
        result = train(config, model=self.model, alphabet=self.alphabet, callbacks=callbacks)
        self.model = result.model
        self.metadata.setdefault("metrics", {}).update({"best_val_loss": result.summary()["best_val_loss"]})
        return result.summary()

    def save(self, path: str | Path, metrics: dict | None = None) -> Path:
        """Write the model bundle (``.bin``) atomically."""
        return save_bundle(path, self.model, self.configuration.config, self.alphabet,
                           metrics=metrics if metrics is not None else self.metadata.get("metrics"),
                           language_model=self.language_model)

    def __repr__(self) -> str:
        return (f"Pipeline(model={self.model.name}, alphabet={len(self.alphabet)} symbols, "
                f"language_model={self.language_model})")


def load_model(path_or_name: str | Path) -> Pipeline:
    """A :class:`Pipeline` from a model name (``en``: the package, ``~/.cache/asr/models``, ``$ASR_MODELS_DIR``)
    or a bundle path; see :mod:`asr.pretrained.registry`."""
    bundle = load_bundle(resolve_model_path(path_or_name))
    return Pipeline(bundle.model, bundle.configuration, bundle.alphabet, bundle.language_model, bundle.metadata)
