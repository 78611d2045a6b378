"""Typed training configuration: dataclass schemas registered in Hydra's ConfigStore.

Every group under ``conf/`` (features, model, data, optimizer, decoder, trainer, augment)
has a schema here, so a wrong key or a value of the wrong type fails early with OmegaConf's
message (``model.parameters.rnn_sizes=[1024,"x"]`` is refused before any training starts).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from asr.errors import UserError


@dataclass
class FeaturesConfig:
    type: str = "mfcc"  # "mfcc" or "logmel"
    sample_rate: int = 16000
    window_ms: float = 25.0
    hop_ms: float = 10.0
    n_fft: int = 512
    num_features: int = 26  # MFCC coefficients or mel bands
    n_mels: int = 40  # mel bands the MFCCs are computed from
    normalize: str = "utterance"  # "utterance" (zero mean, unit variance per coefficient) or "none"


@dataclass
class ModelParameters:
    """Parameters of the architectures in ``asr.models.architectures``; each one reads what it needs."""

    rnn_type: str = "gru"  # "lstm" or "gru"
    rnn_sizes: list[int] = field(default_factory=lambda: [192, 192])
    conv_filters: list[int] = field(default_factory=lambda: [16, 16])
    conv_kernels: list[list[int]] = field(default_factory=lambda: [[11, 11], [11, 11]])  # (time, freq)
    conv_strides: list[list[int]] = field(default_factory=lambda: [[3, 2], [1, 2]])  # (time, freq)
    dense_sizes: list[int] = field(default_factory=lambda: [512, 512])  # deepspeech (DS1) only
    context: int = 5  # deepspeech (DS1) only: frames of context on each side
    dropout: float = 0.1


@dataclass
class ModelConfig:
    name: str = "deepspeech2"
    parameters: ModelParameters = field(default_factory=ModelParameters)


@dataclass
class DataConfig:
    train_manifest: str = "data/synth/train.jsonl"
    dev_manifest: Optional[str] = "data/synth/dev.jsonl"
    test_manifest: Optional[str] = "data/synth/test.jsonl"
    alphabet: Optional[str] = None  # path to a Mozilla-format alphabet; None: built-in English
    max_duration: float = 20.0  # seconds; longer clips are skipped (and counted)
    cache_dir: Optional[str] = None  # on-disk feature cache, filled on first use; None: features in memory


@dataclass
class OptimizerConfig:
    name: str = "adam"  # "adam", "adamw" or "sgd"
    learning_rate: float = 2e-3
    weight_decay: float = 0.0
    clipnorm: Optional[float] = 5.0
    schedule: str = "plateau"  # "constant", "plateau", "exponential" or "cosine"
    decay_rate: float = 0.5  # plateau: factor on stall; exponential: factor per epoch
    min_learning_rate: float = 0.0  # cosine: the rate at the end of training
    plateau_patience: int = 2
    warmup_steps: int = 50


@dataclass
class DecoderConfig:
    name: str = "greedy"  # "greedy", "beam" or "beam_lm"
    beam_width: int = 32
    lm_path: Optional[str] = None  # KenLM ARPA or binary; in a bundle, the bundled LM
    alpha: float = 0.5  # LM weight
    beta: float = 1.0  # word insertion bonus
    unigrams: Optional[str] = None  # text file with one word per line
    hotwords: list[str] = field(default_factory=list)
    hotword_weight: float = 10.0


@dataclass
class TrainerConfig:
    epochs: int = 10
    batch_size: int = 32
    strategy: str = "auto"  # "auto", "default", "mirrored" or "multi_worker"
    mixed_precision: bool = False
    early_stopping_patience: int = 5  # epochs without val_loss improvement; 0 disables
    val_decode_limit: int = 100  # utterances decoded each epoch for val WER/CER
    resume: bool = True  # continue from the last checkpoint in exp_dir when there is one
    sortagrad: bool = True  # first epoch sorted by length, shuffled after
    log_every_steps: int = 10
    time_limit_minutes: Optional[float] = None  # wall time of the whole run (resumed runs add up); cuts the last epoch short
    intra_op_threads: Optional[int] = None  # TensorFlow threads per op; None: 1 without a GPU, else TF's default
    inter_op_threads: Optional[int] = None  # ops run side by side; None or 0: TF's default (one per core)
    init_from: Optional[str] = None  # a model name (asr models list) or a bundle path: its weights start the run


@dataclass
class AugmentConfig:
    freq_masks: int = 0
    freq_mask_width: int = 8
    time_masks: int = 0
    time_mask_width: int = 20
    speed_perturb: list[float] = field(default_factory=list)  # e.g. [0.9, 1.0, 1.1]
    noise_probability: float = 0.0  # share of training utterances that get noise
    noise_snr_db: list[float] = field(default_factory=lambda: [10.0, 30.0])  # SNR drawn uniformly from [low, high]
    noise_dir: Optional[str] = None  # folder of noise recordings; None: white noise


@dataclass
class ExperimentConfig:
    name: str = "asr"  # MLflow experiment


@dataclass
class TrainConfig:
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    exp_dir: str = "experiments/default"
    seed: int = 0


GROUP_SCHEMAS: dict[str, type] = {
    "features": FeaturesConfig,
    "model": ModelConfig,
    "data": DataConfig,
    "optimizer": OptimizerConfig,
    "decoder": DecoderConfig,
    "trainer": TrainerConfig,
    "augment": AugmentConfig,
}

CHOICES: dict[str, dict[str, tuple[str, ...]]] = {
    "features": {"type": ("mfcc", "logmel"), "normalize": ("utterance", "none")},
    "model.parameters": {"rnn_type": ("lstm", "gru")},
    "optimizer": {"name": ("adam", "adamw", "sgd"), "schedule": ("constant", "plateau", "exponential", "cosine")},
    "decoder": {"name": ("greedy", "beam", "beam_lm")},
    "trainer": {"strategy": ("auto", "default", "mirrored", "multi_worker")},
}


def register_configs() -> None:
    """Register the schemas so ``conf/`` files can name them in their defaults lists."""
    store = ConfigStore.instance()
    store.store(name="train_schema", node=TrainConfig)
    for group, schema in GROUP_SCHEMAS.items():
        store.store(group=group, name=f"{group}_schema", node=schema)


def _check_choices(config: DictConfig) -> None:
    for path, fields in CHOICES.items():
        node = OmegaConf.select(config, path)
        for key, allowed in fields.items():
            value = node[key]
            if value not in allowed:
                raise UserError(f"{path}.{key}={value!r} is not one of {', '.join(allowed)}")


def validate(config: Any) -> DictConfig:
    """Merge ``config`` onto the schema: unknown keys and wrong types raise ``UserError``."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(TrainConfig), config)
    except OmegaConfBaseException as error:
        raise UserError(f"bad configuration: {str(error).splitlines()[0]} "
                        f"(full key: {getattr(error, 'full_key', '?')})") from None
    _check_choices(merged)
    from asr.audio.augment import check_augment_config

    check_augment_config(merged.augment)
    return merged


class Configuration:
    """A training configuration loaded from a YAML file and validated against the schema.

    ``Configuration("new.yaml")`` reads a composed configuration (as written into a model
    bundle or by ``python -m asr.train --cfg job``); attribute access goes to the config.
    """

    def __init__(self, source: str | Path | DictConfig | dict | None = None) -> None:
        if source is None:
            raw: Any = {}
        elif isinstance(source, (str, Path)):
            path = Path(source)
            if not path.is_file():
                raise UserError(f"configuration file not found: {path}")
            try:
                raw = OmegaConf.load(path)
            except Exception as error:  # yaml errors come in several types
                raise UserError(f"cannot parse {path}: {str(error).splitlines()[0]}") from None
            if "defaults" in raw:
                del raw["defaults"]  # a conf/ file: its groups are composed by Hydra, not here
        else:
            raw = source
        self.config: DictConfig = validate(raw)

    def __getattr__(self, name: str) -> Any:
        if name == "config":
            raise AttributeError(name)
        return getattr(self.config, name)

    def to_yaml(self) -> str:
        return OmegaConf.to_yaml(self.config)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_yaml())

    def __repr__(self) -> str:
        return f"Configuration(model={self.config.model.name}, exp_dir={self.config.exp_dir})"
