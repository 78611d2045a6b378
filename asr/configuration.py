"""Typed training configuration: dataclass schemas registered in Hydra's ConfigStore.

This is the one place where defaults live: every group under ``asr/conf/`` (features, model,
data, optimizer, decoder, trainer, augment) has a schema here and its YAML files only override
it. A wrong key, a value of the wrong type or a choice outside its Enum fails early with
OmegaConf's message (``model.parameters.rnn_sizes=[1024,"x"]`` or ``optimizer.name=adagrad``
is refused before any training starts).

Choices are ``StrEnum`` members named as their values: they compare equal to their strings and
read and write as those strings everywhere (YAML, JSON, ``str()``, MLflow parameters), so
``optimizer.schedule=cosine`` on the command line and old bundles' ``configuration.yaml`` load as
they always did.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, EnumNode, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from asr.errors import UserError, first_line
from asr.files import write_atomically


class FeatureType(StrEnum):
    mfcc = "mfcc"
    logmel = "logmel"


class Normalization(StrEnum):
    utterance = "utterance"  # zero mean, unit variance per coefficient
    none = "none"


class RNNType(StrEnum):
    lstm = "lstm"
    gru = "gru"


class OptimizerName(StrEnum):
    adam = "adam"
    adamw = "adamw"
    sgd = "sgd"


class Schedule(StrEnum):
    constant = "constant"
    plateau = "plateau"  # x decay_rate after plateau_patience stalled epochs
    exponential = "exponential"  # x decay_rate per epoch
    cosine = "cosine"  # down to min_learning_rate over trainer.epochs or trainer.time_limit_minutes


class DecoderName(StrEnum):
    greedy = "greedy"
    beam = "beam"
    beam_lm = "beam_lm"


class Strategy(StrEnum):
    auto = "auto"
    default = "default"
    mirrored = "mirrored"
    multi_worker = "multi_worker"  # TF_CONFIG names the workers


@dataclass
class FeaturesConfig:
    type: FeatureType = FeatureType.mfcc
    sample_rate: int = 16000
    window_ms: float = 25.0
    hop_ms: float = 10.0
    n_fft: int = 512
    num_features: int = 26  # MFCC coefficients or mel bands
    n_mels: int = 40  # mel bands the MFCCs are computed from
    normalize: Normalization = Normalization.utterance


@dataclass
class ModelParameters:
    """Parameters of the architectures in ``asr.models.architectures``; each one reads what it needs."""

    rnn_type: RNNType = RNNType.gru
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
    # with cache_dir: compute the train and dev splits' missing features with every core before the first epoch
    # (and before trainer.time_limit_minutes starts counting), rather than one worker filling ahead of training
    precompute_features: bool = False


@dataclass
class OptimizerConfig:
    name: OptimizerName = OptimizerName.adam
    learning_rate: float = 2e-3
    weight_decay: float = 0.0
    clipnorm: Optional[float] = 5.0
    schedule: Schedule = Schedule.plateau
    decay_rate: float = 0.5  # plateau: factor on stall; exponential: factor per epoch
    min_learning_rate: float = 0.0  # cosine: the rate at the end of training
    plateau_patience: int = 2
    warmup_steps: int = 50


@dataclass
class DecoderConfig:
    name: DecoderName = DecoderName.greedy
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
    strategy: Strategy = Strategy.auto
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
    vtlp_warp: float = 0.0  # vocal-tract-length perturbation of log-mel features: frequencies scaled by 1 +- up to this; 0 off


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


def register_configs() -> None:
    """Register the schemas so ``conf/`` files can name them in their defaults lists."""
    store = ConfigStore.instance()
    store.store(name="train_schema", node=TrainConfig)
    for group, schema in GROUP_SCHEMAS.items():
        store.store(group=group, name=f"{group}_schema", node=schema)


NOISE_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg")


def noise_files(noise_dir: str | Path) -> list[Path]:
    """Audio files under ``noise_dir`` (recursively), sorted; none if the folder does not exist."""
    folder = Path(noise_dir)
    return sorted(path for path in folder.rglob("*") if path.suffix.lower() in NOISE_SUFFIXES) if folder.is_dir() else []


def check_augment_config(augment: Any) -> None:
    """Raise ``UserError`` naming the ``augment.*`` value that makes no sense (types are the schema's job)."""
    for name in ("freq_masks", "freq_mask_width", "time_masks", "time_mask_width"):
        if getattr(augment, name) < 0:
            raise UserError(f"augment.{name} must be >= 0, got {getattr(augment, name)}")
    rates = list(augment.speed_perturb)
    if any(rate <= 0 for rate in rates):
        raise UserError(f"augment.speed_perturb rates must be > 0, got {rates}")
    if not 0.0 <= augment.noise_probability <= 1.0:
        raise UserError(f"augment.noise_probability must be in [0, 1], got {augment.noise_probability}")
    snr = list(augment.noise_snr_db)
    if len(snr) != 2 or snr[0] > snr[1]:
        raise UserError(f"augment.noise_snr_db must be [low, high] with low <= high, got {snr}")
    if not 0.0 <= augment.vtlp_warp <= 0.3:
        raise UserError(f"augment.vtlp_warp must be in [0, 0.3] (0.1 scales each utterance's frequencies by 0.9-1.1), "
                        f"got {augment.vtlp_warp}")
    if augment.noise_dir and not noise_files(augment.noise_dir):
        raise UserError(f"augment.noise_dir={augment.noise_dir} is not a folder holding audio files "
                        f"({', '.join(NOISE_SUFFIXES)}); give a folder of noise recordings, or null for white noise")


def validate(config: Any) -> DictConfig:
    """Merge ``config`` onto the schema: unknown keys, wrong types and unknown choices raise ``UserError``."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(TrainConfig), config)
    except OmegaConfBaseException as error:
        node = getattr(error, "child_node", None)
        if isinstance(node, EnumNode):
            allowed = ", ".join(member.value for member in node.enum_type)
            raise UserError(f"{error.full_key}={error.value!r} is not one of {allowed}") from None
        raise UserError(f"bad configuration: {first_line(error)} "
                        f"(full key: {getattr(error, 'full_key', '?')})") from None
    check_augment_config(merged.augment)
    if merged.augment.vtlp_warp > 0 and merged.features.type != FeatureType.logmel:
        raise UserError(f"augment.vtlp_warp warps log-mel bands; features.type={merged.features.type.value} has none "
                        f"(use features=logmel, or augment.vtlp_warp=0)")
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
                raise UserError(f"cannot parse {path}: {first_line(error)}") from None
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
        write_atomically(path, self.to_yaml())

    def __repr__(self) -> str:
        return f"Configuration(model={self.config.model.name}, exp_dir={self.config.exp_dir})"
