"""``python -m asr.train [hydra overrides]``: train a model from ``conf/`` and write the results to ``exp_dir``.

Writes ``checkpoints/`` (resumable, every epoch), ``metrics.jsonl``, ``model.bin`` and
``result.json``. A run is resumed automatically when ``exp_dir`` holds a checkpoint (and
``trainer.resume`` is true). Exit codes: 0 done, 2 bad configuration or data or a NaN loss
(retrying will not help), 1 anything else.

Module-level imports stay light: ``--cfg job`` and a bad override must answer in about a second, so
what loads TensorFlow (about 5 s), MLflow or pyctcdecode is imported in the functions that use it.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Sequence

import hydra
from omegaconf import DictConfig, OmegaConf

from asr.bundle import save_bundle
from asr.configuration import register_configs, validate
from asr.errors import NaNLossError, UserError
from asr.files import write_atomically
from asr.metrics import cer, wer
from asr.pretrained.registry import check_init_from

register_configs()
logger = logging.getLogger("asr.train")

SAMPLE_TRANSCRIPTS = 10


def evaluate_split(model: Any, manifest: str, config: DictConfig, alphabet: Any) -> dict:
    """WER/CER on a manifest with the configured decoder (``test``) and greedily (``test_greedy``), and
    sample transcripts: the model's logits are computed once, through the one inference path."""
    from asr.decoding.decoders import make_decoder  # these three: see the module's docstring
    from asr.inference import decode_logits, logits_of_features
    from asr.data.splits import load_split

    data = load_split(manifest, config, alphabet, "test")
    references = [alphabet.decode(example.labels.tolist()) for example in data.examples]
    logits = logits_of_features(model, config.model, [data.features_for(example.utterance) for example in data.examples])
    with make_decoder(config.decoder, alphabet) as decoder:
        hypotheses = decode_logits(decoder, logits)
        decoder_name = decoder.name
    greedy = hypotheses if decoder_name == "greedy" else decode_logits(
        make_decoder(config.decoder, alphabet, name="greedy"), logits)
    samples = [{"audio_filepath": str(example.utterance.audio_filepath), "reference": reference,
                "hypothesis": hypothesis}
               for example, reference, hypothesis in zip(data.examples, references, hypotheses)][:SAMPLE_TRANSCRIPTS]
    return {"test": {"wer": wer(references, hypotheses), "cer": cer(references, hypotheses),
                     "utterances": len(references), "decoder": decoder_name},
            "test_greedy": {"wer": wer(references, greedy), "cer": cer(references, greedy)},
            "sample_transcripts": samples}


def check_files(config: DictConfig) -> None:
    """Fail before TensorFlow starts when a manifest or the alphabet file is missing, or ``trainer.init_from``
    names a bundle that is missing or has another alphabet or other features."""
    for key in ("train_manifest", "dev_manifest", "test_manifest", "alphabet"):
        value = config.data.get(key)
        if value and not Path(value).is_file():
            kind = "alphabet file" if key == "alphabet" else "manifest"
            raise UserError(f"data.{key}: {kind} not found: {value}")
    # a run that will resume never loads init_from (the Trainer decides for sure; this skips the early check)
    may_resume = config.trainer.resume and Path(config.exp_dir, "checkpoints", "checkpoint").is_file()
    if config.trainer.init_from and not may_resume:
        check_init_from(config)


def run(config: DictConfig, callbacks: Sequence[Any] = ()) -> dict:
    """Train, evaluate on the test manifest, write ``model.bin`` and ``result.json``; return the result."""
    import keras  # these three: see the module's docstring

    from asr.data.splits import load_alphabet
    from asr.training.loop import Trainer
    from asr.training.strategy import configure_threads, is_chief, make_strategy

    started = time.perf_counter()
    exp_dir = Path(config.exp_dir)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.getLogger("absl").setLevel(logging.WARNING)
    configure_threads(config.trainer.intra_op_threads, config.trainer.inter_op_threads)
    strategy = make_strategy(config.trainer.strategy)  # first: MultiWorkerMirroredStrategy needs a fresh runtime
    keras.utils.set_random_seed(int(config.seed))
    alphabet = load_alphabet(config)
    trainer = Trainer(config, alphabet=alphabet, callbacks=callbacks, strategy=strategy)
    training = trainer.fit()
    result: dict[str, Any] = {"exp_dir": str(exp_dir), **training.summary()}
    if training.history:
        last = training.history[-1]
        result["final"] = {key: last.get(key) for key in ("loss", "val_loss", "val_wer", "val_cer")}
    if not is_chief(strategy):
        return result
    if config.data.test_manifest:
        result.update(evaluate_split(training.model, config.data.test_manifest, config, alphabet))
    metrics = {"best_val_loss": result["best_val_loss"],
               **{f"test_{key}": value for key, value in result.get("test", {}).items() if key != "decoder"},
               **{f"test_greedy_{key}": value for key, value in result.get("test_greedy", {}).items()}}
    test = ({"decoder": result["test"]["decoder"], "manifest": Path(config.data.test_manifest).name}
            if "test" in result else None)
    save_bundle(exp_dir / "model.bin", training.model, config, alphabet, metrics=metrics, test=test)
    result["model_bundle"] = str(exp_dir / "model.bin")
    result["total_seconds"] = round(time.perf_counter() - started, 2)
    write_atomically(exp_dir / "result.json", json.dumps(result, indent=2, default=str) + "\n")
    logger.info("done: %s", json.dumps({key: result.get(key) for key in ("epochs_run", "best_val_loss", "test")},
                                        default=str))
    return result


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    try:
        config = validate(OmegaConf.to_container(cfg, resolve=True))
        OmegaConf.set_readonly(config, True)
        logger.info("exp_dir: %s", config.exp_dir)
        check_files(config)
        from asr.training.tracking import MlflowRunLogger, save_learning_curve

        mlflow_logger = MlflowRunLogger.from_environment()  # set by the queue: log into its MLflow run
        result = run(config, callbacks=[mlflow_logger] if mlflow_logger else [])
        if mlflow_logger is not None:
            mlflow_logger.log_outputs(Path(config.exp_dir), result)  # also writes learning_curve.png
        elif Path(config.exp_dir, "metrics.jsonl").is_file():
            save_learning_curve(Path(config.exp_dir))
    except UserError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        sys.exit(2)
    except NaNLossError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        sys.exit(2)
    except Exception:  # anything else may be transient: exit 1 so the queue retries
        traceback.print_exc()
        sys.exit(1)


if __name__ == "__main__":
    main()
