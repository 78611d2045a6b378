"""Checkpoints of a training run (``exp_dir/checkpoints``) and the fingerprint that ties them to one training.

What a checkpoint (written after every completed epoch) holds, after SpeechBrain's explicit resume state:

* ``model``: every weight, BatchNorm moving statistics included;
* ``optimizer``: its slots (Adam moments), ``iterations`` and ``learning_rate`` variable;
* ``epoch``: epochs completed; a resumed run starts with the next one, never repeating one;
* ``best_val_loss``, ``epochs_without_improvement`` (early stopping);
* ``plateau_wait``, ``plateau_decays`` (the plateau schedule, ``asr.training.schedule``);
* ``elapsed_seconds``: wall time of the runs so far, which ``trainer.time_limit_minutes`` and the
  cosine schedule count against.

The data order of epoch ``k`` is a function of ``(seed, k)``, so nothing else is needed to continue
where the run stopped. A checkpoint of before ``plateau_decays`` (it held ``scheduled_learning_rate``
instead) resumes with the decays that rate implies.

``checkpoints/fingerprint.json`` records a fingerprint of what is trained (model, features, alphabet,
the train and dev manifests' contents, ``data.max_duration``, optimizer, augmentation,
``trainer.batch_size/mixed_precision/sortagrad``; not bookkeeping such as ``exp_dir``,
``trainer.epochs``, ``time_limit_minutes``, ``resume``, ``init_from``, the seed, the decoder or the
experiment name) and the queue job's uuid (``EXPCTL_JOB_UUID``). Resuming with another fingerprint,
or in another job, is refused (``UserError``, exit 2) with what differs; ``trainer.resume=false``
starts afresh and ``trainer.init_from`` fine-tunes from a model. A checkpoint written before
fingerprints is resumed with a warning and gets the fingerprint of the run that resumes it.
Best weights (lowest val loss) go to ``checkpoints/best.weights.h5``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf
from omegaconf import DictConfig, OmegaConf

from asr.data.feature_cache import content_hash
from asr.errors import UserError, first_line
from asr.files import atomic_path, write_atomically
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
# Keys added to a fingerprinted group after checkpoints were written: at this value (the one that trains
# as before the key existed) they are left out, so those checkpoints stay resumable.
FINGERPRINT_ADDED_KEYS = {("augment", "vtlp_warp"): 0.0}
RESUME_HELP = ("use another exp_dir, trainer.resume=false to start afresh there (its checkpoints are "
               "replaced), or trainer.init_from=<model> to fine-tune from a model")


# ----- fingerprint ----------------------------------------------------------------------------
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
    for (group, key), neutral in FINGERPRINT_ADDED_KEYS.items():
        if isinstance(training.get(group), dict) and training[group].get(key) == neutral:
            del training[group][key]
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


# ----- the resume state -------------------------------------------------------------------------
class TrainingState:
    """The counters a checkpoint keeps besides the model and the optimizer (see the module docstring)."""

    def __init__(self) -> None:
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.best_val_loss = tf.Variable(math.inf, dtype=tf.float64, trainable=False, name="best_val_loss")
        self.epochs_without_improvement = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.plateau_wait = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.plateau_decays = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.elapsed_seconds = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="elapsed_seconds")

    def variables(self, legacy: bool = False) -> dict[str, tf.Variable]:
        """The checkpoint's entries by name; ``legacy``: those of a checkpoint without ``plateau_decays``."""
        names = ["epoch", "best_val_loss", "epochs_without_improvement", "plateau_wait", "elapsed_seconds"]
        return {name: getattr(self, name) for name in names + ([] if legacy else ["plateau_decays"])}


def _legacy_plateau_decays(latest: str, optimizer_config: DictConfig) -> int | None:
    """The decays a checkpoint of before ``plateau_decays`` implies (its ``scheduled_learning_rate``), or
    None when the checkpoint has ``plateau_decays``."""
    names = {name for name, _ in tf.train.list_variables(latest)}
    if any(name.startswith("plateau_decays/") for name in names):
        return None
    if optimizer_config.schedule != "plateau" or not 0 < float(optimizer_config.decay_rate) < 1:
        return 0
    rate = float(tf.train.load_checkpoint(latest).get_tensor("scheduled_learning_rate/.ATTRIBUTES/VARIABLE_VALUE"))
    return max(0, round(math.log(rate / float(optimizer_config.learning_rate))
                        / math.log(float(optimizer_config.decay_rate))))


class Checkpoints:
    """``exp_dir/checkpoints`` of one run: which checkpoint to resume, restoring it, saving epochs and best weights.

    ``directory`` is where this worker saves (``exp_dir/checkpoints`` on the chief, scratch elsewhere);
    every worker resumes from the chief's ``exp_dir/checkpoints``.
    """

    def __init__(self, config: DictConfig, alphabet: Alphabet, directory: Path, chief: bool) -> None:
        self.config, self.alphabet, self.directory, self.chief = config, alphabet, directory, chief
        self.exp_dir = Path(config.exp_dir)
        self._checked: str | None = None
        self._adopted = False  # resuming a checkpoint of before fingerprints
        self._fingerprint: dict | None = None
        self._fingerprint_written = False
        self.checkpoint: tf.train.Checkpoint | None = None
        self.manager: tf.train.CheckpointManager | None = None

    def fingerprint(self) -> dict:
        """This run's checkpoint record: the fingerprint of what it trains and the queue job, if any."""
        if self._fingerprint is None:
            record = training_fingerprint(self.config, self.alphabet)
            self._fingerprint = {"version": FINGERPRINT_VERSION, "fingerprint": record["fingerprint"],
                                 "job": os.environ.get(JOB_ENVIRONMENT) or None, "training": record["training"]}
        return self._fingerprint

    def to_resume(self) -> str | None:
        """The checkpoint this run continues from, or None for a fresh start; one of another training or
        job is refused (``UserError``)."""
        latest = tf.train.latest_checkpoint(str(self.exp_dir / CHECKPOINT_DIR))
        latest = latest if self.config.trainer.resume and latest else None
        if latest is not None and self._checked != latest:
            self._check_fingerprint(latest)
            self._checked = latest
        return latest

    def _check_fingerprint(self, latest: str) -> None:
        """Refuse to resume ``latest`` when it trains something else, or belongs to another queue job."""
        path = self.exp_dir / CHECKPOINT_DIR / FINGERPRINT_FILE
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            logger.warning("resuming %s, written before checkpoints had fingerprints: whether it trains the "
                           "configured model on the configured data cannot be checked (from now on it can); "
                           "if it does not, %s", latest, RESUME_HELP)
            self._adopted = True
            return
        except (OSError, ValueError) as error:
            raise UserError(f"cannot resume from {latest}: its {path.name} is unreadable ({error}); "
                            f"{RESUME_HELP}") from None
        mine = self.fingerprint()
        if not isinstance(stored, dict) or stored.get("fingerprint") != mine["fingerprint"]:
            training = stored.get("training") if isinstance(stored, dict) else None
            raise UserError(f"cannot resume from {latest}: it trains something else "
                            f"({_differences(training, mine['training'])}); {RESUME_HELP}")
        job, theirs = mine["job"], stored.get("job")
        if job is not None and theirs != job:
            owner = f"queue job {theirs}" if theirs else "a run outside the queue"
            raise UserError(f"cannot resume from {latest}: it belongs to {owner}, not to this job ({job}); "
                            f"{RESUME_HELP}")

    def track(self, model: keras.Model, optimizer: keras.optimizers.Optimizer, state: TrainingState) -> None:
        self.model, self.optimizer, self.state = model, optimizer, state
        self.checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, **state.variables())
        self.manager = tf.train.CheckpointManager(self.checkpoint, str(self.directory), max_to_keep=2)

    def restore(self) -> None:
        """Restore the checkpoint to resume into the tracked objects; on a fresh start, forget the old run's
        metrics and fingerprint (this run writes its own before its first checkpoint)."""
        metrics_path = self.exp_dir / METRICS_FILE
        latest = self.to_resume()
        if latest is None:
            if self.chief:
                metrics_path.unlink(missing_ok=True)
                (self.directory / FINGERPRINT_FILE).unlink(missing_ok=True)
            return
        legacy_decays = _legacy_plateau_decays(latest, self.config.optimizer)
        checkpoint = self.checkpoint if legacy_decays is None else tf.train.Checkpoint(
            model=self.model, optimizer=self.optimizer, **self.state.variables(legacy=True))
        try:
            checkpoint.restore(latest).assert_existing_objects_matched()
        except (AssertionError, ValueError, tf.errors.OpError) as error:
            raise UserError(f"cannot resume from {latest}: it does not match the configured "
                            f"model ({first_line(error, 200)}); use another exp_dir or "
                            f"trainer.resume=false") from None
        if legacy_decays is not None:
            self.state.plateau_decays.assign(legacy_decays)
        logger.info("resumed from %s: %d epoch(s) done, best val loss %.4f", latest,
                    int(self.state.epoch.numpy()), float(self.state.best_val_loss.numpy()))
        if self.chief and metrics_path.exists():  # drop lines of an epoch that finished without its checkpoint
            kept = [line for line in metrics_path.read_text().splitlines()
                    if line.strip() and json.loads(line)["epoch"] <= int(self.state.epoch.numpy())]
            write_atomically(metrics_path, "".join(line + "\n" for line in kept))

    def _write_fingerprint(self) -> None:
        """Record what this run's checkpoints train (once, before the run's first checkpoint)."""
        if not self.chief or self._fingerprint_written:
            return
        path = self.directory / FINGERPRINT_FILE
        record = dict(self.fingerprint())
        if self.to_resume() and not self._adopted:
            try:  # resumed: the checkpoint keeps the job that made it
                record["job"] = json.loads(path.read_text(encoding="utf-8")).get("job")
            except (OSError, ValueError, AttributeError):
                pass
        write_atomically(path, json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
        self._fingerprint_written = True

    def save(self, epoch: int) -> None:
        """Checkpoint epoch ``epoch`` (1-based); never a checkpoint without its fingerprint."""
        if self.manager is None:
            raise RuntimeError("Checkpoints.track() comes before save()")
        self._write_fingerprint()
        self.manager.save(checkpoint_number=epoch)

    def save_best_weights(self) -> None:
        with atomic_path(self.directory / BEST_WEIGHTS, suffix=".weights.h5") as temporary:
            self.model.save_weights(str(temporary))

    def load_best_weights(self) -> None:
        """The run's best weights into the model, when an epoch improved on the validation loss."""
        best = self.directory / BEST_WEIGHTS
        if best.exists():
            self.model.load_weights(str(best))
