"""The training loop: one readable custom loop under a ``tf.distribute`` strategy.

``train(config)`` reads the manifests (``asr.data.splits``), builds (or takes) the model and runs
``fit()``: for each epoch, train -> validate -> checkpoint -> stop?. A step is
``strategy.run(train_step)`` over a distributed ``tf.data`` pipeline. Per replica the summed CTC
loss is divided by the *global* number of utterances in the step, so gradients summed over replicas
are the gradient of the global mean. Keras' optimizer sums gradients across replicas; note that its
``clipnorm`` clips each replica's partial gradient before that sum. BatchNorm moving statistics are
updated by each replica from its own batches; after every epoch they are averaged over all replicas
of all workers, so every worker holds (and saves) one model. Under ``MultiWorkerMirroredStrategy``
every worker restores the chief's latest checkpoint (``exp_dir`` on a shared file system); the others
save theirs to scratch folders.

The learning rate of each step is ``asr.training.schedule.learning_rate``; what a checkpoint holds and
when resuming is refused is in ``asr.training.checkpoint``. With ``trainer.time_limit_minutes`` the
epoch in progress is cut short when the time left is the longest validation's duration so far, so
the run, validation included, ends on time. Metrics per epoch are appended to
``exp_dir/metrics.jsonl`` and passed to callbacks.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol, Sequence

import keras
import numpy as np
import tensorflow as tf
from omegaconf import DictConfig

from asr.audio.augment import WaveformAugmenter, waveform_augment_enabled
from asr.data.dataset import batch_order, make_dataset
from asr.data.splits import CachedFeatures, SplitData, load_alphabet, load_split
from asr.decoding.decoders import make_decoder
from asr.errors import NaNLossError, UserError
from asr.metrics import cer, wer
from asr.models.architectures import build_model, output_lengths
from asr.models.ctc import ctc_loss, minimum_frames
from asr.text import Alphabet
from asr.training.checkpoint import CHECKPOINT_DIR, METRICS_FILE, Checkpoints, TrainingState
from asr.training.init_from import Pretrained, check_weights_fit, load_pretrained
from asr.training.schedule import Plateau, after_epoch, learning_rate
from asr.training.strategy import configure_threads, is_chief, make_strategy, writable_dir
from asr.training.validation import transcribe_split

logger = logging.getLogger(__name__)

OPTIMIZERS = {
    "adam": lambda config, common: keras.optimizers.Adam(**common),
    "adamw": lambda config, common: keras.optimizers.AdamW(weight_decay=config.weight_decay, **common),
    "sgd": lambda config, common: keras.optimizers.SGD(momentum=0.9, nesterov=True, **common),
}


class Callback(Protocol):
    """Something told about progress (e.g. MLflow logging); both methods are optional."""

    def on_epoch_end(self, epoch: int, metrics: dict) -> None: ...

    def on_train_end(self, result: dict) -> None: ...


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


class EpochRun(NamedTuple):
    loss: float  # mean over the utterances trained on
    seconds: float
    audio_seconds: float
    cut_short: bool  # by the time limit


def make_optimizer(optimizer_config: DictConfig) -> keras.optimizers.Optimizer:
    common: dict[str, Any] = {"learning_rate": optimizer_config.learning_rate}
    if optimizer_config.clipnorm:
        common["clipnorm"] = optimizer_config.clipnorm
    return OPTIMIZERS[optimizer_config.name](optimizer_config, common)


class Trainer:
    """Trains ``model`` (built from ``config.model`` when None) on ``config``'s data."""

    def __init__(self, config: DictConfig, model: keras.Model | None = None, alphabet: Alphabet | None = None,
                 callbacks: Sequence[Callback] = (), strategy: tf.distribute.Strategy | None = None,
                 train_data: SplitData | None = None, dev_data: SplitData | None = None) -> None:
        self.config = config
        if strategy is None:
            configure_threads(config.trainer.intra_op_threads, config.trainer.inter_op_threads)
        self.strategy = strategy or make_strategy(config.trainer.strategy)
        self.alphabet = alphabet or load_alphabet(config)
        self.callbacks = list(callbacks)
        self.exp_dir = Path(config.exp_dir)
        self.chief = is_chief(self.strategy)
        self.checkpoints = Checkpoints(config, self.alphabet, writable_dir(self.strategy, self.exp_dir / CHECKPOINT_DIR),
                                       self.chief)
        self.train_data = train_data
        self.dev_data = dev_data
        self._initial_model = model
        self.waveform_augmenter = self._waveform_augmenter()
        self._started, self._elapsed_before, self._validation_reserve, self._total_steps = time.perf_counter(), 0.0, 0.0, 1

    # ----- setup ---------------------------------------------------------------------------
    def _pretrained(self) -> Pretrained | None:
        """``trainer.init_from``, checked before any data is read; None when the run resumes or has a model."""
        init_from = self.config.trainer.init_from
        if not init_from or self._initial_model is not None:
            return None  # a model handed in (Pipeline.train) is its own starting point
        if self.checkpoints.to_resume():
            logger.info("resuming: trainer.init_from=%s is not loaded again", init_from)
            return None
        pretrained = load_pretrained(self.config, self.alphabet)
        # the architecture check needs a model: a throwaway one, so a mismatch is reported before the data loads
        probe = build_model(self.config.model, int(self.config.features.num_features), len(self.alphabet) + 1)
        check_weights_fit(pretrained.model, pretrained.label, probe, "the configured model")
        del probe
        return pretrained

    def _load_data(self) -> None:
        data = self.config.data
        if self.train_data is None:
            self.train_data = load_split(data.train_manifest, self.config, self.alphabet, "train")
        if self.dev_data is None and data.dev_manifest:
            self.dev_data = load_split(data.dev_manifest, self.config, self.alphabet, "dev")

    def _build(self) -> None:
        """The model, its optimizer and the resume state, tracked by the checkpoints."""
        config, num_features = self.config, int(self.config.features.num_features)
        with self.strategy.scope():
            previous_policy = keras.mixed_precision.global_policy()
            if config.trainer.mixed_precision and self._initial_model is None:
                # layers keep the policy they were built with: set it for this model only
                keras.mixed_precision.set_global_policy(
                    "mixed_float16" if tf.config.list_logical_devices("GPU") else "mixed_bfloat16")
            try:
                model = build_model(config.model, num_features, len(self.alphabet) + 1)
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
            self.model, self.optimizer, self.state = model, optimizer, TrainingState()
        self.checkpoints.track(self.model, self.optimizer, self.state)

    # ----- steps ---------------------------------------------------------------------------
    def _step_functions(self, element_spec: Any) -> None:
        model, optimizer, model_config = self.model, self.optimizer, self.config.model
        strategy = self.strategy

        def per_example_loss(batch: dict, training: bool) -> tf.Tensor:
            logits = model(batch["features"], training=training)
            logit_lengths = output_lengths(batch["feature_lengths"], model_config)
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

    def _waveform_augmenter(self) -> WaveformAugmenter | None:
        """Speed perturbation and noise for training batches, or None when ``augment`` asks for neither."""
        if not waveform_augment_enabled(self.config.augment):
            return None
        model_config = self.config.model

        def fits(frames: int, labels: np.ndarray) -> bool:
            return int(output_lengths(frames, model_config)) >= minimum_frames(labels.tolist())

        return WaveformAugmenter(self.config.augment, self.config.features, fits)

    def _dataset(self, data: SplitData, epoch: int, training: bool) -> Any:
        trainer = self.config.trainer
        dataset = make_dataset(data.examples, data.features_for, int(self.config.features.num_features),
                               int(trainer.batch_size), epoch=epoch, seed=int(self.config.seed),
                               sortagrad=bool(trainer.sortagrad) and training, shuffle=training,
                               augment_config=self.config.augment if training else None,
                               waveform_augmenter=self.waveform_augmenter if training else None,
                               sample_rate=int(self.config.features.sample_rate))
        return self.strategy.experimental_distribute_dataset(dataset)

    # ----- time and learning rate -----------------------------------------------------------
    def _elapsed(self) -> float:
        """Seconds since this run's ``fit()`` began, plus those of the runs it resumes."""
        return self._elapsed_before + time.perf_counter() - self._started

    def _time_limit_seconds(self) -> float | None:
        limit = self.config.trainer.time_limit_minutes
        return limit * 60 if limit else None

    def _time_left(self) -> float | None:
        """Training seconds left under ``trainer.time_limit_minutes`` (the next validation's time set aside)."""
        limit = self._time_limit_seconds()
        return None if limit is None else limit - self._validation_reserve - self._elapsed()

    def _learning_rate(self) -> float:
        """The rate of the next step; time is counted with the next validation's time included."""
        return learning_rate(int(self.optimizer.iterations.numpy()), self._elapsed() + self._validation_reserve,
                             self.config.optimizer, total_steps=self._total_steps,
                             time_limit_seconds=self._time_limit_seconds(), epochs_done=int(self.state.epoch.numpy()),
                             plateau_decays=int(self.state.plateau_decays.numpy()))

    # ----- one epoch -----------------------------------------------------------------------
    def _batch_indices(self, batch: dict) -> np.ndarray:
        return np.concatenate([np.asarray(value).reshape(-1) for value in
                               self.strategy.experimental_local_results(batch["index"])])

    def _train_epoch(self, epoch_index: int) -> EpochRun:
        """One pass over the training data, or less when time is up."""
        assert self.train_data is not None
        examples = self.train_data.examples
        started, total_loss, total_count, step, audio_seconds = time.perf_counter(), 0.0, 0, 0, 0.0
        log_every = max(1, int(self.config.trainer.log_every_steps))
        for batch in self._dataset(self.train_data, epoch_index, training=True):
            time_left = self._time_left()
            if time_left is not None and time_left <= 0 and step > 0:
                logger.info("time limit: epoch %d cut short after %d step(s)", epoch_index + 1, step)
                return EpochRun(total_loss / max(total_count, 1), time.perf_counter() - started, audio_seconds, True)
            self.optimizer.learning_rate.assign(self._learning_rate())
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
        return EpochRun(total_loss / max(total_count, 1), time.perf_counter() - started, audio_seconds, False)

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

    def _precompute_features(self) -> None:
        """``data.precompute_features``: the train and dev splits' missing cached features, computed by one
        process per core before the first epoch, so a cold cache does not slow the timed epochs down."""
        for data in (self.train_data, self.dev_data):
            features_for = None if data is None else data.features_for
            if not isinstance(features_for, CachedFeatures):
                continue
            missing = features_for.missing([example.utterance.audio_filepath for example in data.examples])
            if not missing:
                continue
            started, jobs = time.perf_counter(), os.cpu_count() or 1
            logger.info("feature cache: computing %d file(s) with %d process(es) before training", len(missing), jobs)
            computed = features_for.cache.fill_in_background(missing, features_for.features_config,
                                                             features_for.compute, jobs=jobs, chunk=32).wait()
            logger.info("feature cache: %d file(s) computed in %.0f s", computed, time.perf_counter() - started)

    def evaluate_loss(self, data: SplitData) -> float:
        total, count = 0.0, 0.0
        for batch in self._dataset(data, 0, training=False):
            batch_total, batch_count = self.distributed_eval_step(batch)
            total, count = total + float(batch_total.numpy()), count + float(batch_count.numpy())
        return total / max(count, 1.0)

    def _validate(self, metrics: dict) -> float:
        """Dev loss (and greedy WER/CER of the first ``val_decode_limit`` utterances) into ``metrics``; returns
        the loss that early stopping and the plateau schedule watch (the training loss without a dev set)."""
        if self.dev_data is None:
            return metrics["loss"]
        metrics["val_loss"] = self.evaluate_loss(self.dev_data)
        references, hypotheses = transcribe_split(self.model, self.dev_data, self.alphabet, self.config,
                                                  make_decoder(self.config.decoder, self.alphabet, name="greedy"),
                                                  limit=int(self.config.trainer.val_decode_limit))
        if references:
            metrics["val_wer"], metrics["val_cer"] = wer(references, hypotheses), cer(references, hypotheses)
        return metrics["val_loss"]

    def _record(self, epoch_number: int, monitored: float) -> None:
        """Best loss (and best weights), early-stopping count and plateau state after epoch ``epoch_number``."""
        state = self.state
        improved = monitored < float(state.best_val_loss.numpy())
        if improved:
            state.best_val_loss.assign(monitored)
            state.epochs_without_improvement.assign(0)
            self.checkpoints.save_best_weights()
        else:
            state.epochs_without_improvement.assign_add(1)
        before = Plateau(int(state.plateau_wait.numpy()), int(state.plateau_decays.numpy()))
        plateau = after_epoch(before, improved, self.config.optimizer)
        if plateau.decays > before.decays:
            logger.info("val loss stalled: learning rate now %.3g",
                        self.config.optimizer.learning_rate * self.config.optimizer.decay_rate ** plateau.decays)
        state.plateau_wait.assign(plateau.wait)
        state.plateau_decays.assign(plateau.decays)
        state.epoch.assign(epoch_number)
        state.elapsed_seconds.assign(self._elapsed())

    def _save(self, epoch_number: int, metrics: dict) -> None:
        logger.info("epoch %d: %s", epoch_number,
                    " ".join(f"{key} {value:.4g}" for key, value in metrics.items() if key != "epoch"))
        if self.chief:
            with open(self.exp_dir / METRICS_FILE, "a") as stream:
                stream.write(json.dumps(metrics) + "\n")
        self.checkpoints.save(epoch_number)

    def _stop_reason(self, epoch_number: int, cut_short: bool) -> str | None:
        """Why training ends after epoch ``epoch_number``, or None to go on (to ``trainer.epochs``)."""
        trainer = self.config.trainer
        time_left = self._time_left()
        if time_left is not None and (cut_short or time_left <= 0) and epoch_number < trainer.epochs:
            return f"time limit: {self._elapsed() / 60:.1f} of {trainer.time_limit_minutes:.1f} minutes used"
        patience = int(trainer.early_stopping_patience)
        if patience and int(self.state.epochs_without_improvement.numpy()) >= patience:
            return f"early stopping: no improvement for {patience} epoch(s)"
        return None

    # ----- the run -------------------------------------------------------------------------
    def _prepare(self) -> Pretrained | None:
        """Everything before the first epoch: init_from, data, model, resume, step functions."""
        trainer = self.config.trainer
        if trainer.time_limit_minutes and isinstance(self.strategy, tf.distribute.MultiWorkerMirroredStrategy):
            # each worker would read its own clock and stop (or set its rate) at a different step
            raise UserError("trainer.time_limit_minutes does not work with several workers: set trainer.epochs")
        pretrained = self._pretrained()
        self._load_data()
        self._build()
        self.checkpoints.restore()
        if pretrained is not None:  # resuming never gets here: the checkpoint holds the run's own weights
            self.model.set_weights(pretrained.model.get_weights())
            logger.info("initial weights from %s", pretrained.label)
        self._elapsed_before, self._validation_reserve = float(self.state.elapsed_seconds.numpy()), 0.0
        self._total_steps = int(trainer.epochs) * math.ceil(len(self.train_data.examples) / int(trainer.batch_size))
        probe = make_dataset(self.train_data.examples[:1], self.train_data.features_for,
                             int(self.config.features.num_features), 1)
        self._step_functions(self.strategy.experimental_distribute_dataset(probe).element_spec)
        self.checkpoints.directory.mkdir(parents=True, exist_ok=True)
        if self.chief:
            self.exp_dir.mkdir(parents=True, exist_ok=True)
        return pretrained

    def fit(self) -> TrainingResult:
        """Run the remaining epochs; returns the model with the best weights and the history."""
        self._started = started = time.perf_counter()
        pretrained = self._prepare()
        if self.config.data.precompute_features:
            self._precompute_features()
            self._started = started = time.perf_counter()  # the time limit counts from when features are ready
        epochs, first_epoch = int(self.config.trainer.epochs), int(self.state.epoch.numpy())
        if first_epoch >= epochs:
            logger.info("checkpoint has %d epoch(s), trainer.epochs=%d: nothing left to train", first_epoch, epochs)
        history: list[dict] = []
        stopped_early = False
        for epoch_index in range(first_epoch, epochs):
            epoch_number, epoch_started = epoch_index + 1, time.perf_counter()
            # train
            background_fill = self._fill_cache_ahead(epoch_index)
            try:
                run = self._train_epoch(epoch_index)
            finally:
                if background_fill is not None:
                    background_fill.close()
            if self.strategy.num_replicas_in_sync > 1 and self.distributed_average_statistics is not None:
                # each replica updates BatchNorm moving statistics from its own batches: average them,
                # so every replica and every worker holds (and saves) the same model
                self.distributed_average_statistics()
            metrics: dict[str, Any] = {"epoch": epoch_number, "loss": run.loss,
                                       "learning_rate": float(self.optimizer.learning_rate.numpy()),
                                       "audio_seconds_per_second": run.audio_seconds / run.seconds,
                                       "epoch_seconds": run.seconds}
            if run.cut_short:
                metrics["epoch_fraction"] = run.audio_seconds / self.train_data.audio_seconds
            # validate
            validation_started = time.perf_counter()
            monitored = self._validate(metrics)
            metrics["validation_seconds"] = time.perf_counter() - validation_started
            metrics["epoch_seconds"] = time.perf_counter() - epoch_started
            # checkpoint
            self._record(epoch_number, monitored)
            self._save(epoch_number, metrics)
            # the longest validation and save so far: the time an epoch cut short still needs
            self._validation_reserve = max(self._validation_reserve, time.perf_counter() - validation_started)
            history.append(metrics)
            for callback in self.callbacks:
                if hasattr(callback, "on_epoch_end"):
                    callback.on_epoch_end(epoch_number, metrics)
            # stop?
            reason = self._stop_reason(epoch_number, run.cut_short)
            if reason:
                logger.info(reason)
                stopped_early = reason.startswith("early stopping")
                break
        self.checkpoints.load_best_weights()
        result = TrainingResult(self.model, int(self.state.epoch.numpy()), len(history), history,
                                float(self.state.best_val_loss.numpy()), stopped_early, time.perf_counter() - started,
                                init_from=str(pretrained.path) if pretrained is not None else None)
        for callback in self.callbacks:
            if hasattr(callback, "on_train_end"):
                callback.on_train_end(result.summary())
        return result


def train(config: DictConfig, model: keras.Model | None = None, alphabet: Alphabet | None = None,
          callbacks: Sequence[Callback] = ()) -> TrainingResult:
    """Train (or fine-tune ``model``) on ``config``; see :class:`Trainer`."""
    keras.utils.set_random_seed(int(config.seed))
    return Trainer(config, model=model, alphabet=alphabet, callbacks=callbacks).fit()
