"""The training loop: one readable custom loop under a ``tf.distribute`` strategy.

``train(config)`` reads the manifests, computes features, builds (or takes) the model and runs
epochs of ``strategy.run(train_step)`` over a distributed ``tf.data`` pipeline. Per replica the
summed CTC loss is divided by the *global* number of utterances in the step, so gradients summed
over replicas are the gradient of the global mean. Keras' optimizer sums gradients across
replicas; note that its ``clipnorm`` clips each replica's partial gradient before that sum.
BatchNorm moving statistics are updated by each replica from its own batches; after every epoch
they are averaged over all replicas of all workers, so every worker holds (and saves) one model.
Under ``MultiWorkerMirroredStrategy`` every worker restores the chief's latest checkpoint
(``exp_dir`` on a shared file system); the others save theirs to scratch folders.

Features come from memory, or from the on-disk ``FeatureCache`` when ``data.cache_dir`` is set:
then nothing is computed up front (frame counts come from manifest durations) and each file's
features are computed on first use inside ``tf.data`` and reused by later epochs and runs.

What a checkpoint (``exp_dir/checkpoints``, written after every completed epoch) holds:

* ``model``: every weight, BatchNorm moving statistics included;
* ``optimizer``: its slots (Adam moments), ``iterations`` and ``learning_rate`` variable;
* ``epoch``: epochs completed; a resumed run starts with the next one, never repeating one;
* ``best_val_loss``, ``epochs_without_improvement`` (early stopping);
* ``scheduled_learning_rate``, ``plateau_wait`` (learning-rate schedule before warmup);
* ``elapsed_seconds``: wall time of the runs so far, which ``trainer.time_limit_minutes`` and the
  cosine schedule count against.

The data order of epoch ``k`` is a function of ``(seed, k)``, so nothing else is needed to
continue where the run stopped.

A checkpoint belongs to one training and one job: ``checkpoints/fingerprint.json`` records a
fingerprint of what is trained (model, features, alphabet, the train and dev manifests' contents,
``data.max_duration``, optimizer, augmentation, ``trainer.batch_size/mixed_precision/sortagrad``;
not bookkeeping such as ``exp_dir``, ``trainer.epochs``, ``time_limit_minutes``, ``resume``,
``init_from``, the seed, the decoder or the experiment name) and the queue job's uuid
(``EXPCTL_JOB_UUID``). Resuming with another fingerprint, or in another job, is refused
(``UserError``, exit 2) with what differs; ``trainer.resume=false`` starts afresh and
``trainer.init_from`` fine-tunes from a model. A checkpoint written before fingerprints is
resumed with a warning and gets the fingerprint of the run that resumes it. Best weights (lowest val loss) go to ``checkpoints/best.weights.h5``.
With ``trainer.time_limit_minutes`` the epoch in progress is cut short when the time left is the
longest validation's duration so far, so the run, validation included, ends on time; ``optimizer.schedule=cosine``
then anneals by time (or by steps over ``trainer.epochs``, whichever is further along), so a fixed
budget ends at the lowest rate whatever the machine's speed.
Metrics per epoch are appended to ``exp_dir/metrics.jsonl`` and passed to callbacks.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence

import keras
import numpy as np
import tensorflow as tf
from omegaconf import DictConfig, OmegaConf

from asr.models import architectures as models
from asr.models.ctc import ctc_loss, minimum_frames
from asr.data.dataset import Example, FeaturesFor, batch_order, in_memory_features, make_dataset, prepare_examples
from asr.errors import NaNLossError, UserError
from asr.data.feature_cache import content_hash
from asr.data.manifest import read_manifest
from asr.training.strategy import configure_threads, is_chief, make_strategy, writable_dir
from asr.text import Alphabet

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
BEST_WEIGHTS = "best.weights.h5"
METRICS_FILE = "metrics.jsonl"
FINGERPRINT_FILE = "fingerprint.json"
FINGERPRINT_VERSION = 1
JOB_ENVIRONMENT = "EXPCTL_JOB_UUID"  # set by the queue's daemon: the job's identity across queue databases
# What the weights and the optimizer state depend on: whole groups, plus these keys of others. A new
# key of a whole group counts at once; a new trainer or data key counts once it is listed here.
FINGERPRINT_GROUPS = ("model", "features", "optimizer", "augment")
FINGERPRINT_TRAINER_KEYS = ("batch_size", "mixed_precision", "sortagrad")
FINGERPRINT_DATA_KEYS = ("max_duration",)
FINGERPRINT_MANIFESTS = ("train_manifest", "dev_manifest")


def _manifest_content(path: str | None) -> str | None:
    """The manifest's content hash (the same as the feature cache's), or why it could not be read."""
    if not path:
        return None
    try:
        return content_hash(path)
    except OSError:
        return f"unreadable:{path}"


def training_fingerprint(config: DictConfig, alphabet: Alphabet) -> dict:
    """What a checkpoint trains, as plain data (see the module docstring): ``{"fingerprint": sha256,
    "training": {...}}``."""
    plain = OmegaConf.to_container(config, resolve=True)
    trainer, data = plain.get("trainer") or {}, plain.get("data") or {}
    training: dict[str, Any] = {group: plain.get(group) for group in FINGERPRINT_GROUPS}
    training["alphabet"] = list(alphabet.symbols)
    training["trainer"] = {key: trainer.get(key) for key in FINGERPRINT_TRAINER_KEYS}
    training["data"] = {key: data.get(key) for key in FINGERPRINT_DATA_KEYS}
    training["data"].update({f"{key}_content": _manifest_content(data.get(key)) for key in FINGERPRINT_MANIFESTS})
    canonical = json.dumps(training, sort_keys=True, separators=(",", ":"), default=str)
    return {"fingerprint": hashlib.sha256(canonical.encode()).hexdigest(), "training": training}


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        found: dict[str, Any] = {}
        for key, item in value.items():
            found.update(_flat(item, f"{prefix}{key}."))
        return found
    return {prefix.rstrip("."): value}


def _differences(before: Any, now: Any, limit: int = 3) -> str:
    """``key: X there, Y here`` for the first keys that differ."""
    old, new = _flat(before if isinstance(before, dict) else {}), _flat(now)
    keys = sorted(key for key in set(old) | set(new) if old.get(key, "<unset>") != new.get(key, "<unset>"))
    shown = []
    for key in keys[:limit]:
        if key.endswith("_content"):
            shown.append(f"{key[:-len('_content')]}: other contents")
        else:
            shown.append(f"{key}: {json.dumps(old.get(key, '<unset>'), default=str)[:60]} there, "
                         f"{json.dumps(new.get(key, '<unset>'), default=str)[:60]} here")
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return "; ".join(shown) + more if shown else "a different fingerprint"


class Callback(Protocol):
    """Something told about progress (e.g. MLflow logging); both methods are optional."""

    def on_epoch_end(self, epoch: int, metrics: dict) -> None: ...

    def on_train_end(self, result: dict) -> None: ...


@dataclass
class SplitData:
    """One split ready for training or evaluation."""

    examples: list[Example]
    features_for: FeaturesFor

    @property
    def audio_seconds(self) -> float:
        return float(sum(example.utterance.duration for example in self.examples))


@dataclass
class TrainingResult:
    model: keras.Model
    epochs_run: int  # epochs completed in total (resumed ones included)
    epochs_this_run: int
    history: list[dict] = field(default_factory=list)
    best_val_loss: float = math.inf
    stopped_early: bool = False
    train_seconds: float = 0.0
    init_from: str | None = None  # the bundle whose weights this run started from (None when resumed or fresh)

    def summary(self) -> dict:
        summary = {"epochs_run": self.epochs_run, "epochs_this_run": self.epochs_this_run,
                   "best_val_loss": None if math.isinf(self.best_val_loss) else self.best_val_loss,
                   "stopped_early": self.stopped_early, "train_seconds": round(self.train_seconds, 2),
                   "history": self.history}
        if self.init_from:
            summary["init_from"] = self.init_from
        return summary


def load_alphabet(config: DictConfig) -> Alphabet:
    return Alphabet.from_file(config.data.alphabet) if config.data.alphabet else Alphabet.default()


def _weight_name(variable: Any) -> str:
    return str(getattr(variable, "path", None) or variable.name)


def check_weights_fit(source: keras.Model, source_label: str, target: keras.Model, target_label: str) -> None:
    """``target.set_weights(source.get_weights())`` would fit: as many weight arrays, of the same shapes."""
    if len(source.weights) != len(target.weights):
        detail = f"{len(source.weights)} weight arrays there, {len(target.weights)} here"
    else:
        mismatches = [(index, theirs, ours) for index, (theirs, ours) in enumerate(zip(source.weights, target.weights))
                      if tuple(theirs.shape) != tuple(ours.shape)]
        if not mismatches:
            return
        index, theirs, ours = mismatches[0]
        detail = (f"weight {index} ({_weight_name(ours)}) has shape {tuple(theirs.shape)} there, "
                  f"{tuple(ours.shape)} here")

    def describe(model: keras.Model) -> str:
        return f"{model.name} with {model.count_params():,} parameters"

    raise UserError(f"{source_label} does not fit {target_label}: {detail} (there: {describe(source)}; here: "
                    f"{describe(target)}); build the same architecture (the model settings in the bundle's "
                    f"configuration.yaml) or leave trainer.init_from unset")


@dataclass
class Pretrained:
    """The bundle named by ``trainer.init_from``, checked against the configuration."""

    init_from: str
    path: Path
    model: keras.Model

    @property
    def label(self) -> str:
        return f"trainer.init_from={self.init_from!r} ({self.path})"


def load_pretrained(config: DictConfig, alphabet: Alphabet) -> Pretrained:
    """Resolve and load ``trainer.init_from``; its alphabet and features must be the configuration's."""
    from asr.bundle import load_bundle
    from asr.pretrained.registry import check_init_from

    path = check_init_from(config, alphabet)
    try:
        bundle = load_bundle(path)
    except UserError as error:
        raise UserError(f"trainer.init_from={config.trainer.init_from!r}: {error}") from None
    return Pretrained(str(config.trainer.init_from), path, bundle.model)


def initialise_from_pretrained(model: keras.Model, config: DictConfig, alphabet: Alphabet) -> Pretrained:
    """Copy ``trainer.init_from``'s weights (BatchNorm statistics included) into ``model``, built from ``config``."""
    pretrained = load_pretrained(config, alphabet)
    check_weights_fit(pretrained.model, pretrained.label, model, "the configured model")
    model.set_weights(pretrained.model.get_weights())
    logger.info("initial weights from %s", pretrained.label)
    return pretrained


class CachedFeatures:
    """``features_for`` backed by the on-disk ``FeatureCache``: computed on first use, then read."""

    def __init__(self, cache_dir: str, features_config: DictConfig) -> None:
        from asr.audio.features import file_features
        from asr.data.feature_cache import FeatureCache

        self.cache = FeatureCache(cache_dir)
        self.features_config = OmegaConf.to_container(features_config, resolve=True)
        self.compute = functools.partial(file_features, features_config=self.features_config)

    def __call__(self, utterance: Any) -> np.ndarray:
        return self.cache.get_or_compute(utterance.audio_filepath, self.features_config, self.compute)

    def missing(self, paths: Sequence[Path]) -> list[Path]:
        """The paths whose features are not known to be cached (no audio is read to tell)."""
        return [path for path in dict.fromkeys(paths) if self.cache.audio_hash(path, read=False) is None
                or not self.cache.entry_path(path, self.features_config).is_file()]


def features_source(utterances: Sequence[Any], config: DictConfig, label: str) -> FeaturesFor:
    """Where features come from: ``data.cache_dir``'s on-disk cache (computed on first use) or memory."""
    cache_dir = config.data.get("cache_dir")
    if not cache_dir:
        return in_memory_features(utterances, config.features, jobs=os.cpu_count(), label=label)
    return CachedFeatures(cache_dir, config.features)


def frames_from_duration(duration: float, features_config: Any) -> int:
    """Feature frames of ``duration`` seconds of audio (``center=True`` framing), without reading it."""
    rate = int(features_config.sample_rate)
    hop = int(round(float(features_config.hop_ms) * rate / 1000))
    return 1 + int(round(float(duration) * rate)) // hop


def load_split(manifest: str, config: DictConfig, alphabet: Alphabet, split: str) -> SplitData:
    """Read a manifest, encode its transcripts; features in memory now, or from the cache when used."""
    utterances = read_manifest(manifest, max_duration=config.data.max_duration)
    if not utterances:
        raise UserError(f"{split} manifest {manifest} has no utterances")
    features_for = features_source(utterances, config, f"{split} features")
    if config.data.get("cache_dir"):  # nothing is computed up front: frame counts come from durations
        def frames_for(utterance: Any) -> int:
            return frames_from_duration(utterance.duration, config.features)
    else:
        def frames_for(utterance: Any) -> int:
            return len(features_for(utterance))
    examples = prepare_examples(utterances, alphabet, frames_for,
                                lambda frames: int(models.output_lengths(frames, config.model)), split)
    return SplitData(examples, features_for)


def cosine_learning_rate(peak: float, floor: float, progress: float) -> float:
    """``peak`` at progress 0, falling along half a cosine to ``floor`` at progress 1 (and after)."""
    progress = min(max(progress, 0.0), 1.0)
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_optimizer(optimizer_config: DictConfig) -> keras.optimizers.Optimizer:
    common: dict[str, Any] = {"learning_rate": optimizer_config.learning_rate}
    if optimizer_config.clipnorm:
        common["clipnorm"] = optimizer_config.clipnorm
    if optimizer_config.name == "adam":
        return keras.optimizers.Adam(**common)
    if optimizer_config.name == "adamw":
        return keras.optimizers.AdamW(weight_decay=optimizer_config.weight_decay, **common)
    if optimizer_config.name == "sgd":
        return keras.optimizers.SGD(momentum=0.9, nesterov=True, **common)
    raise UserError(f"optimizer.name={optimizer_config.name!r} is not one of adam, adamw, sgd")


class Trainer:
    """Trains ``model`` (built from ``config.model`` when None) on ``config``'s data."""

    def __init__(self, config: DictConfig, model: keras.Model | None = None, alphabet: Alphabet | None = None,
                 callbacks: Sequence[Callback] = (), strategy: tf.distribute.Strategy | None = None,
                 train_data: SplitData | None = None, dev_data: SplitData | None = None) -> None:
        self.config = config
        if strategy is None:
            configure_threads(config.trainer.get("intra_op_threads"), config.trainer.get("inter_op_threads"))
        self.strategy = strategy or make_strategy(config.trainer.strategy)
        self.alphabet = alphabet or load_alphabet(config)
        self.callbacks = list(callbacks)
        self.exp_dir = Path(config.exp_dir)
        self.chief = is_chief(self.strategy)
        self.checkpoint_dir = writable_dir(self.strategy, self.exp_dir / CHECKPOINT_DIR)
        self.train_data = train_data
        self.dev_data = dev_data
        self._initial_model = model
        self.waveform_augmenter = self._waveform_augmenter()

    # ----- setup ---------------------------------------------------------------------------
    def _load_data(self) -> None:
        data = self.config.data
        if self.train_data is None:
            self.train_data = load_split(data.train_manifest, self.config, self.alphabet, "train")
        if self.dev_data is None and data.dev_manifest:
            self.dev_data = load_split(data.dev_manifest, self.config, self.alphabet, "dev")

    def _build(self) -> None:
        config, num_features = self.config, int(self.config.features.num_features)
        with self.strategy.scope():
            previous_policy = keras.mixed_precision.global_policy()
            if config.trainer.mixed_precision and self._initial_model is None:
                # layers keep the policy they were built with: set it for this model only
                keras.mixed_precision.set_global_policy(
                    "mixed_float16" if tf.config.list_logical_devices("GPU") else "mixed_bfloat16")
            try:
                model = models.build_model(config.model, num_features, len(self.alphabet) + 1)
            finally:
                keras.mixed_precision.set_global_policy(previous_policy)
            if self._initial_model is not None:
                if self._initial_model.input_shape[-1] != num_features:
                    raise UserError(f"the model takes {self._initial_model.input_shape[-1]} features per frame but "
                                    f"features.num_features={num_features}: keep the model's feature configuration")
                model = keras.models.clone_model(self._initial_model)
                model.set_weights(self._initial_model.get_weights())
            optimizer = make_optimizer(config.optimizer)
            if model.dtype_policy.name == "mixed_float16":
                optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
            optimizer.build(model.trainable_variables)
            self.model, self.optimizer = model, optimizer
            self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
            self.best_val_loss = tf.Variable(math.inf, dtype=tf.float64, trainable=False, name="best_val_loss")
            self.epochs_without_improvement = tf.Variable(0, dtype=tf.int64, trainable=False)
            self.plateau_wait = tf.Variable(0, dtype=tf.int64, trainable=False)
            self.scheduled_learning_rate = tf.Variable(float(config.optimizer.learning_rate), dtype=tf.float64,
                                                       trainable=False)
            self.elapsed_seconds = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="elapsed_seconds")
        self.checkpoint = tf.train.Checkpoint(
            model=self.model, optimizer=self.optimizer, epoch=self.epoch, best_val_loss=self.best_val_loss,
            epochs_without_improvement=self.epochs_without_improvement, plateau_wait=self.plateau_wait,
            scheduled_learning_rate=self.scheduled_learning_rate, elapsed_seconds=self.elapsed_seconds)
        self.manager = tf.train.CheckpointManager(self.checkpoint, str(self.checkpoint_dir), max_to_keep=2)

    def _checkpoint_to_resume(self) -> str | None:
        """The checkpoint this run continues from, or None for a fresh start; one of another training or
        job is refused (``UserError``)."""
        # every worker restores the chief's checkpoint (non-chiefs save to scratch folders)
        latest = tf.train.latest_checkpoint(str(self.exp_dir / CHECKPOINT_DIR))
        latest = latest if self.config.trainer.resume and latest else None
        if latest is not None and getattr(self, "_checked_checkpoint", None) != latest:
            self._check_fingerprint(latest)
            self._checked_checkpoint = latest
        return latest

    def fingerprint(self) -> dict:
        """This run's checkpoint record: the fingerprint of what it trains and the queue job, if any."""
        if getattr(self, "_fingerprint", None) is None:
            record = training_fingerprint(self.config, self.alphabet)
            self._fingerprint = {"version": FINGERPRINT_VERSION, "fingerprint": record["fingerprint"],
                                 "job": os.environ.get(JOB_ENVIRONMENT) or None, "training": record["training"]}
        return self._fingerprint

    def _check_fingerprint(self, latest: str) -> None:
        """Refuse to resume ``latest`` when it trains something else, or belongs to another queue job."""
        path = self.exp_dir / CHECKPOINT_DIR / FINGERPRINT_FILE
        how = ("use another exp_dir, trainer.resume=false to start afresh there (its checkpoints are "
               "replaced), or trainer.init_from=<model> to fine-tune from a model")
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            logger.warning("resuming %s, written before checkpoints had fingerprints: whether it trains the "
                           "configured model on the configured data cannot be checked (from now on it can); "
                           "if it does not, %s", latest, how)
            self._adopted = True
            return
        except (OSError, ValueError) as error:
            raise UserError(f"cannot resume from {latest}: its {path.name} is unreadable ({error}); {how}") from None
        mine = self.fingerprint()
        if not isinstance(stored, dict) or stored.get("fingerprint") != mine["fingerprint"]:
            training = stored.get("training") if isinstance(stored, dict) else None
            raise UserError(f"cannot resume from {latest}: it trains something else "
                            f"({_differences(training, mine['training'])}); {how}")
        job, theirs = mine["job"], stored.get("job")
        if job is not None and theirs != job:
            owner = f"queue job {theirs}" if theirs else "a run outside the queue"
            raise UserError(f"cannot resume from {latest}: it belongs to {owner}, not to this job ({job}); "
                            f"{how}")

    def _write_fingerprint(self) -> None:
        """Record (atomically, before the run's first checkpoint) what this run's checkpoints train."""
        if not self.chief or getattr(self, "_fingerprint_written", False):
            return
        path = self.checkpoint_dir / FINGERPRINT_FILE
        record = dict(self.fingerprint())
        if self._checkpoint_to_resume() and not getattr(self, "_adopted", False):
            try:  # resumed: the checkpoint keeps the job that made it
                record["job"] = json.loads(path.read_text(encoding="utf-8")).get("job")
            except (OSError, ValueError, AttributeError):
                pass
        scratch = path.with_name(f".{os.getpid()}.{FINGERPRINT_FILE}")
        scratch.write_text(json.dumps(record, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
        os.replace(scratch, path)
        self._fingerprint_written = True

    def _pretrained(self) -> Pretrained | None:
        """``trainer.init_from``, checked before any data is read; None when the run resumes or has a model."""
        init_from = self.config.trainer.get("init_from")
        if not init_from or self._initial_model is not None:
            return None  # a model handed in (Pipeline.train) is its own starting point
        if self._checkpoint_to_resume():
            logger.info("resuming: trainer.init_from=%s is not loaded again", init_from)
            return None
        pretrained = load_pretrained(self.config, self.alphabet)
        # the architecture check needs a model: a throwaway one, so a mismatch is reported before the data loads
        probe = models.build_model(self.config.model, int(self.config.features.num_features), len(self.alphabet) + 1)
        check_weights_fit(pretrained.model, pretrained.label, probe, "the configured model")
        del probe
        return pretrained

    def _restore(self) -> None:
        metrics_path = self.exp_dir / METRICS_FILE
        latest = self._checkpoint_to_resume()
        if latest is None:
            if self.chief and metrics_path.exists():
                metrics_path.unlink()  # a fresh start: the old run's metrics no longer apply
            if self.chief:  # nor the old checkpoints' fingerprint (this run writes its own before saving)
                (self.checkpoint_dir / FINGERPRINT_FILE).unlink(missing_ok=True)
            return
        try:
            self.checkpoint.restore(latest).assert_existing_objects_matched()
        except (AssertionError, ValueError, tf.errors.OpError) as error:
            raise UserError(f"cannot resume from {latest}: it does not match the configured "
                            f"model ({str(error).splitlines()[0][:200]}); use another exp_dir or "
                            f"trainer.resume=false") from None
        logger.info("resumed from %s: %d epoch(s) done, best val loss %.4f", latest,
                    int(self.epoch.numpy()), float(self.best_val_loss.numpy()))
        if self.chief and metrics_path.exists():  # drop lines of an epoch that finished without its checkpoint
            kept = [line for line in metrics_path.read_text().splitlines()
                    if line.strip() and json.loads(line)["epoch"] <= int(self.epoch.numpy())]
            metrics_path.write_text("".join(line + "\n" for line in kept))

    # ----- steps ---------------------------------------------------------------------------
    def _step_functions(self, element_spec: Any) -> None:
        model, optimizer, model_config = self.model, self.optimizer, self.config.model
        strategy = self.strategy

        def per_example_loss(batch: dict, training: bool) -> tf.Tensor:
            logits = model(batch["features"], training=training)
            logit_lengths = models.output_lengths(batch["feature_lengths"], model_config)
            return ctc_loss(batch["labels"], logits, batch["label_lengths"], logit_lengths)

        def train_step(batch: dict) -> tuple[tf.Tensor, tf.Tensor]:
            local_count = tf.cast(tf.shape(batch["index"])[0], tf.float32)
            global_count = tf.distribute.get_replica_context().all_reduce("sum", local_count)
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(per_example_loss(batch, True)) / tf.maximum(global_count, 1.0)
                scaled = optimizer.scale_loss(loss) if hasattr(optimizer, "scale_loss") else loss
            gradients = tape.gradient(scaled, model.trainable_variables)
            optimizer.apply_gradients(zip(gradients, model.trainable_variables))
            return loss, local_count

        def eval_step(batch: dict) -> tuple[tf.Tensor, tf.Tensor]:
            losses = per_example_loss(batch, False)
            return tf.reduce_sum(losses), tf.cast(tf.size(losses), tf.float32)

        @tf.function(input_signature=[element_spec])
        def distributed_train_step(batch: dict) -> tuple[tf.Tensor, tf.Tensor]:
            loss, count = strategy.run(train_step, args=(batch,))
            return strategy.reduce("sum", loss, axis=None), strategy.reduce("sum", count, axis=None)

        @tf.function(input_signature=[element_spec])
        def distributed_eval_step(batch: dict) -> tuple[tf.Tensor, tf.Tensor]:
            total, count = strategy.run(eval_step, args=(batch,))
            return strategy.reduce("sum", total, axis=None), strategy.reduce("sum", count, axis=None)

        self.distributed_train_step, self.distributed_eval_step = distributed_train_step, distributed_eval_step

        statistics = [variable for variable in model.non_trainable_variables
                      if "float" in str(variable.dtype)]  # BatchNorm moving mean/variance, not seed states

        @tf.function
        def distributed_average_statistics() -> None:
            for variable in statistics:  # one by one: the multi-worker reduce does not take nested values
                local = strategy.run(lambda variable=variable: tf.identity(variable.value))
                variable.assign(strategy.reduce("mean", local, axis=None))  # every replica of every worker

        self.distributed_average_statistics = distributed_average_statistics if statistics else None

    def _waveform_augmenter(self) -> Any:
        """Speed perturbation and noise for training batches, or None when ``augment`` asks for neither."""
        from asr.audio.augment import WaveformAugmenter, waveform_augment_enabled

        if not waveform_augment_enabled(self.config.augment):
            return None
        model_config = self.config.model

        def fits(frames: int, labels: np.ndarray) -> bool:
            return int(models.output_lengths(frames, model_config)) >= minimum_frames(labels.tolist())

        return WaveformAugmenter(self.config.augment, self.config.features, fits)

    def _dataset(self, data: SplitData, epoch: int, training: bool) -> Any:
        trainer = self.config.trainer
        dataset = make_dataset(data.examples, data.features_for, int(self.config.features.num_features),
                               int(trainer.batch_size), epoch=epoch, seed=int(self.config.seed),
                               sortagrad=bool(trainer.sortagrad) and training, shuffle=training,
                               augment_config=self.config.augment if training else None,
                               waveform_augmenter=self.waveform_augmenter if training else None)
        return self.strategy.experimental_distribute_dataset(dataset)

    # ----- time and learning rate -----------------------------------------------------------
    def _elapsed(self) -> float:
        """Seconds since this run's ``fit()`` began, plus those of the runs it resumes."""
        return self._elapsed_before + time.perf_counter() - self._started

    def _time_left(self) -> float | None:
        """Training seconds left under ``trainer.time_limit_minutes`` (the next validation's time set aside)."""
        limit = self.config.trainer.get("time_limit_minutes")
        return None if not limit else limit * 60 - self._validation_reserve - self._elapsed()

    def _progress(self) -> float:
        """How far training is (0 to 1): steps over ``trainer.epochs``, or time over the limit if further."""
        progress = int(self.optimizer.iterations.numpy()) / max(1, self._total_steps)
        limit = self.config.trainer.get("time_limit_minutes")
        if limit:
            progress = max(progress, (self._elapsed() + self._validation_reserve) / (limit * 60))
        return progress

    def _set_step_learning_rate(self) -> None:
        optimizer_config = self.config.optimizer
        warmup = int(optimizer_config.warmup_steps)
        if optimizer_config.schedule == "cosine":
            rate = cosine_learning_rate(float(optimizer_config.learning_rate),
                                        float(optimizer_config.min_learning_rate), self._progress())
        else:
            rate = float(self.scheduled_learning_rate.numpy())
        if warmup > 0:
            rate *= min(1.0, (int(self.optimizer.iterations.numpy()) + 1) / warmup)
        self.optimizer.learning_rate.assign(rate)

    def _schedule_after_epoch(self, epoch: int, improved: bool) -> None:
        optimizer_config = self.config.optimizer
        if optimizer_config.schedule == "exponential":
            self.scheduled_learning_rate.assign(optimizer_config.learning_rate * optimizer_config.decay_rate ** epoch)
        elif optimizer_config.schedule == "plateau":
            if improved:
                self.plateau_wait.assign(0)
            else:
                self.plateau_wait.assign_add(1)
                if int(self.plateau_wait.numpy()) >= optimizer_config.plateau_patience:
                    self.scheduled_learning_rate.assign(self.scheduled_learning_rate * optimizer_config.decay_rate)
                    self.plateau_wait.assign(0)
                    logger.info("val loss stalled: learning rate now %.3g", float(self.scheduled_learning_rate.numpy()))

    # ----- epochs --------------------------------------------------------------------------
    def _batch_indices(self, batch: dict) -> np.ndarray:
        return np.concatenate([np.asarray(value).reshape(-1) for value in
                               self.strategy.experimental_local_results(batch["index"])])

    def _train_epoch(self, epoch_index: int) -> tuple[float, float, float, bool]:
        """One pass over the training data, or less when time is up: (mean loss, seconds, audio seconds, cut short)."""
        assert self.train_data is not None
        examples = self.train_data.examples
        started, total_loss, total_count, step, audio_seconds = time.perf_counter(), 0.0, 0, 0, 0.0
        log_every = max(1, int(self.config.trainer.log_every_steps))
        for batch in self._dataset(self.train_data, epoch_index, training=True):
            time_left = self._time_left()
            if time_left is not None and time_left <= 0 and step > 0:
                logger.info("time limit: epoch %d cut short after %d step(s)", epoch_index + 1, step)
                return total_loss / max(total_count, 1), time.perf_counter() - started, audio_seconds, True
            self._set_step_learning_rate()
            loss_tensor, count_tensor = self.distributed_train_step(batch)
            loss, count = float(loss_tensor.numpy()), int(count_tensor.numpy())
            indices = self._batch_indices(batch)
            if not math.isfinite(loss):
                files = [str(examples[i].utterance.audio_filepath) for i in indices]
                raise NaNLossError(f"loss is {loss} at epoch {epoch_index + 1}, step {step + 1}; "
                                   f"batch files: {', '.join(files)}")
            total_loss, total_count, step = total_loss + loss * count, total_count + count, step + 1
            audio_seconds += sum(float(examples[i].utterance.duration) for i in indices)
            if step % log_every == 0:
                logger.info("epoch %d step %d loss %.4f lr %.3g", epoch_index + 1, step, loss,
                            float(self.optimizer.learning_rate.numpy()))
        return total_loss / max(total_count, 1), time.perf_counter() - started, audio_seconds, False

    def _fill_cache_ahead(self, epoch_index: int) -> Any:
        """On a cold feature cache, worker processes compute features ahead of this epoch's reader."""
        assert self.train_data is not None
        features_for = self.train_data.features_for
        if not isinstance(features_for, CachedFeatures):
            return None
        trainer, examples = self.config.trainer, self.train_data.examples
        order = batch_order(examples, int(trainer.batch_size), epoch_index, int(self.config.seed),
                            bool(trainer.sortagrad), shuffle=True)
        missing = features_for.missing([examples[index].utterance.audio_filepath for index in order])
        if not missing:
            return None
        jobs = max(1, (os.cpu_count() or 1) - 1)
        logger.info("feature cache: %d file(s) to compute, %d worker process(es) filling ahead", len(missing), jobs)
        return features_for.cache.fill_in_background(missing, features_for.features_config, features_for.compute,
                                                     jobs=jobs)

    def _save_best_weights(self) -> None:
        """``best.weights.h5``, atomically (a kill mid-write leaves the previous file intact)."""
        target = self.checkpoint_dir / BEST_WEIGHTS
        scratch = self.checkpoint_dir / f".{os.getpid()}.{BEST_WEIGHTS}"
        self.model.save_weights(str(scratch))
        os.replace(scratch, target)

    def evaluate_loss(self, data: SplitData) -> float:
        total, count = 0.0, 0.0
        for batch in self._dataset(data, 0, training=False):
            batch_total, batch_count = self.distributed_eval_step(batch)
            total, count = total + float(batch_total.numpy()), count + float(batch_count.numpy())
        return total / max(count, 1.0)

    def fit(self) -> TrainingResult:
        """Run the remaining epochs; returns the model with the best weights and the history."""
        self._started = started = time.perf_counter()
        trainer = self.config.trainer
        if trainer.get("time_limit_minutes") and isinstance(self.strategy, tf.distribute.MultiWorkerMirroredStrategy):
            # each worker would read its own clock and stop (or set its rate) at a different step
            raise UserError("trainer.time_limit_minutes does not work with several workers: set trainer.epochs")
        pretrained = self._pretrained()
        self._load_data()
        self._build()
        self._restore()
        if pretrained is not None:  # resuming never gets here: the checkpoint holds the run's own weights
            self.model.set_weights(pretrained.model.get_weights())
            logger.info("initial weights from %s", pretrained.label)
        self._elapsed_before, self._validation_reserve = float(self.elapsed_seconds.numpy()), 0.0
        self._total_steps = int(trainer.epochs) * math.ceil(len(self.train_data.examples) / int(trainer.batch_size))
        probe = make_dataset(self.train_data.examples[:1], self.train_data.features_for,
                             int(self.config.features.num_features), 1)
        self._step_functions(self.strategy.experimental_distribute_dataset(probe).element_spec)
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        if self.chief:
            self.exp_dir.mkdir(parents=True, exist_ok=True)
        first_epoch = int(self.epoch.numpy())
        if first_epoch >= trainer.epochs:
            logger.info("checkpoint has %d epoch(s), trainer.epochs=%d: nothing left to train",
                        first_epoch, trainer.epochs)
        history: list[dict] = []
        stopped_early = False
        for epoch_index in range(first_epoch, int(trainer.epochs)):
            epoch_started = time.perf_counter()
            background_fill = self._fill_cache_ahead(epoch_index)
            try:
                loss, seconds, audio_seconds, cut_short = self._train_epoch(epoch_index)
            finally:
                if background_fill is not None:
                    background_fill.close()
            if self.strategy.num_replicas_in_sync > 1 and self.distributed_average_statistics is not None:
                # each replica updates BatchNorm moving statistics from its own batches: average them,
                # so every replica and every worker holds (and saves) the same model
                self.distributed_average_statistics()
            metrics: dict[str, Any] = {"epoch": epoch_index + 1, "loss": loss,
                                       "learning_rate": float(self.optimizer.learning_rate.numpy()),
                                       "audio_seconds_per_second": audio_seconds / seconds,
                                       "epoch_seconds": seconds}
            if cut_short:
                metrics["epoch_fraction"] = audio_seconds / self.train_data.audio_seconds
            monitored, validation_started = loss, time.perf_counter()
            if self.dev_data is not None:
                metrics["val_loss"] = monitored = self.evaluate_loss(self.dev_data)
                references, hypotheses = transcribe_examples(self.model, self.dev_data, self.alphabet,
                                                             self.config, limit=int(trainer.val_decode_limit))
                if references:
                    from asr.metrics import cer, wer
                    metrics["val_wer"], metrics["val_cer"] = wer(references, hypotheses), cer(references, hypotheses)
            metrics["validation_seconds"] = time.perf_counter() - validation_started
            metrics["epoch_seconds"] = time.perf_counter() - epoch_started
            improved = monitored < float(self.best_val_loss.numpy())
            if improved:
                self.best_val_loss.assign(monitored)
                self.epochs_without_improvement.assign(0)
                self._save_best_weights()
            else:
                self.epochs_without_improvement.assign_add(1)
            self._schedule_after_epoch(epoch_index + 1, improved)
            self.epoch.assign(epoch_index + 1)
            self.elapsed_seconds.assign(self._elapsed())
            logger.info("epoch %d: %s", epoch_index + 1,
                        " ".join(f"{key} {value:.4g}" for key, value in metrics.items() if key != "epoch"))
            if self.chief:
                with open(self.exp_dir / METRICS_FILE, "a") as stream:
                    stream.write(json.dumps(metrics) + "\n")
            self._write_fingerprint()  # before the first checkpoint: never a checkpoint without it
            self.manager.save(checkpoint_number=epoch_index + 1)
            # the longest validation and save so far: the time an epoch cut short still needs
            self._validation_reserve = max(self._validation_reserve, time.perf_counter() - validation_started)
            history.append(metrics)
            for callback in self.callbacks:
                if hasattr(callback, "on_epoch_end"):
                    callback.on_epoch_end(epoch_index + 1, metrics)
            time_left = self._time_left()
            if time_left is not None and (cut_short or time_left <= 0) and epoch_index + 1 < trainer.epochs:
                logger.info("time limit: %.1f of %.1f minutes used", self._elapsed() / 60, trainer.time_limit_minutes)
                break
            patience = int(trainer.early_stopping_patience)
            if patience and int(self.epochs_without_improvement.numpy()) >= patience:
                logger.info("early stopping: no improvement for %d epoch(s)", patience)
                stopped_early = True
                break
        best = self.checkpoint_dir / BEST_WEIGHTS
        if best.exists():
            self.model.load_weights(str(best))
        result = TrainingResult(self.model, int(self.epoch.numpy()), len(history), history,
                                float(self.best_val_loss.numpy()), stopped_early, time.perf_counter() - started,
                                init_from=str(pretrained.path) if pretrained is not None else None)
        for callback in self.callbacks:
            if hasattr(callback, "on_train_end"):
                callback.on_train_end(result.summary())
        return result


_PREDICT_FUNCTIONS: dict[int, Any] = {}


def predict_logits(model: keras.Model, features: np.ndarray) -> np.ndarray:
    """``model(features)`` through one cached ``tf.function`` per model (no retracing per shape)."""
    key = id(model)
    if key not in _PREDICT_FUNCTIONS or _PREDICT_FUNCTIONS[key][0] is not model:
        function = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
        _PREDICT_FUNCTIONS[key] = (model, function)
    return np.asarray(_PREDICT_FUNCTIONS[key][1](tf.convert_to_tensor(features, tf.float32)))


def transcribe_examples(model: keras.Model, data: SplitData, alphabet: Alphabet, config: DictConfig,
                        limit: int | None = None, batch_size: int | None = None,
                        decode: Any = None) -> tuple[list[str], list[str]]:
    """Transcripts of the first ``limit`` examples: (references, hypotheses).

    ``decode(logits, lengths)`` turns a batch into text (e.g. a ``Decoder``'s ``decode``); greedy by default.
    """
    from asr.audio.features import pad_features
    from asr.decoding.decoders import greedy_decode

    decode = decode or (lambda logits, lengths: greedy_decode(logits, alphabet, lengths))

    examples = data.examples if limit is None else data.examples[:limit]
    batch_size = batch_size or int(config.trainer.batch_size)
    references, hypotheses = [], []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        features, lengths = pad_features([data.features_for(example.utterance) for example in chunk])
        logits = predict_logits(model, features)
        hypotheses += decode(logits, models.output_lengths(lengths, config.model))
        references += [alphabet.decode(example.labels.tolist()) for example in chunk]
    return references, hypotheses


def train(config: DictConfig, model: keras.Model | None = None, alphabet: Alphabet | None = None,
          callbacks: Sequence[Callback] = ()) -> TrainingResult:
    """Train (or fine-tune ``model``) on ``config``; see :class:`Trainer`."""
    keras.utils.set_random_seed(int(config.seed))
    return Trainer(config, model=model, alphabet=alphabet, callbacks=callbacks).fit()


def config_to_yaml(config: DictConfig) -> str:
    return OmegaConf.to_yaml(config, resolve=True)
