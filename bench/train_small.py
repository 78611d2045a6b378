"""Train the default small model on synthetic speech for a fixed time budget; print throughput and CER/WER.

    .venv/bin/python bench/train_small.py                       # 20,000 utterances, 20 minutes in all
    .venv/bin/python bench/train_small.py --minutes 5 -- model.parameters.rnn_type=lstm

The budget covers everything after the corpus exists: features, training, validation. The test
split holds sentences of the same generator that training never saw. The model is the default
one (conf/); the bench only sets the learning rate: 3e-3 annealed along a cosine to 0 over the
time budget (``optimizer.schedule=cosine``), because a fixed budget wants the rate at its lowest
when time runs out, whatever the validation loss does; the last epoch is cut short to end on time.
Synthesis is cheap (~400 utterances/s, outside the budget), so the bench trains on 18,500 fresh
sentences rather than repeating a few thousand (7,000 overfit within 20 minutes). Prints figures only.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import argparse
import json
import logging
import os
import tempfile
import time
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
SPLITS = {"train": 0.925, "dev": 0.025, "test": 0.05}
# The trainer sets the longest validation's time aside, but this machine has slow spells: twice the
# final validation took 42 s and 57 s instead of ~5 s. A minute of slack keeps the run inside --minutes.
SLACK_MINUTES = 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=20000, help="utterances to synthesise (92.5/2.5/5 split)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--minutes", type=float, default=20.0, help="budget for features + training")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "asr-bench-train-small")
    parser.add_argument("--lm-order", type=int, default=3,
                        help="also decode the test split with beam search and an n-gram LM of the training "
                             "transcripts (0: greedy only)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides on top of conf/config.yaml")
    arguments = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)

    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    import asr
    from asr.configuration import register_configs, validate
    from asr.data.synth import synthesize_corpus

    corpus_dir = arguments.out / f"corpus-{arguments.count}-{arguments.seed}-92-2-5"
    if not (corpus_dir / "all.jsonl").exists():  # 2.5 % dev (validated every epoch, inside the budget), 5 % test
        synthesize_corpus(corpus_dir, arguments.count, arguments.seed, SPLITS, jobs=os.cpu_count() or 1)
    exp_dir = arguments.out / time.strftime("run-%Y%m%d-%H%M%S")
    register_configs()
    with initialize_config_dir(config_dir=str(Path(asr.__file__).parent / "conf"), version_base="1.3"):
        composed = compose("config", overrides=[
            f"data.train_manifest={corpus_dir / 'train.jsonl'}", f"data.dev_manifest={corpus_dir / 'dev.jsonl'}",
            f"data.test_manifest={corpus_dir / 'test.jsonl'}", f"exp_dir={exp_dir}", "trainer.epochs=1000",
            f"trainer.time_limit_minutes={arguments.minutes - SLACK_MINUTES}", "trainer.resume=false",
            "optimizer.learning_rate=3e-3", "optimizer.schedule=cosine",
            "trainer.log_every_steps=1000",
            *arguments.overrides])
    config = validate(OmegaConf.to_container(composed, resolve=True))

    import keras

    from asr.train import evaluate_split
    from asr.data.splits import load_alphabet
    from asr.training.loop import Trainer

    keras.utils.set_random_seed(int(config.seed))
    started = time.perf_counter()
    alphabet = load_alphabet(config)
    training = Trainer(config, alphabet=alphabet).fit()
    budget_seconds = time.perf_counter() - started
    test = evaluate_split(training.model, config.data.test_manifest, config, alphabet)
    history = training.history
    steady = history[1:] or history  # the first epoch includes tracing
    throughput = sum(epoch["audio_seconds_per_second"] for epoch in steady) / len(steady)
    best = min(history, key=lambda epoch: epoch.get("val_loss", epoch["loss"]))
    figures = {
        "model": f"{config.model.name} {config.model.parameters.rnn_type} {list(config.model.parameters.rnn_sizes)}",
        "parameters": int(training.model.count_params()), "batch_size": int(config.trainer.batch_size),
        "train_utterances": sum(1 for _ in open(config.data.train_manifest)),
        "epochs": len(history), "minutes_used": round(budget_seconds / 60, 2),
        "train_audio_seconds_per_second": round(throughput, 1),
        "best_epoch": best["epoch"], "best_val_cer": round(best.get("val_cer", float("nan")), 4),
        "test_utterances": test["utterances"], "test_cer": round(test["cer"], 4), "test_wer": round(test["wer"], 4),
    }
    if arguments.lm_order:
        figures.update(beam_lm_figures(training.model, config, alphabet, arguments.lm_order, exp_dir / "lm.arpa"))
    print(json.dumps(figures, indent=2))
    for sample in test["samples"][:5]:
        print(f"  ref: {sample['reference']}\n  hyp: {sample['hypothesis']}")


def beam_lm_figures(model: Any, config: Any, alphabet: Any, order: int, lm_path: Path) -> dict:
    """Test CER/WER with beam search and an n-gram LM built from the *training* transcripts only."""
    from asr.decoding.decoders import make_decoder
    from asr.decoding.lm import build_arpa
    from asr.data.manifest import read_manifest
    from asr.metrics import cer, wer
    from asr.data.splits import load_split
    from asr.training.validation import transcribe_split

    started = time.perf_counter()
    build_arpa([utterance.text.split() for utterance in read_manifest(config.data.train_manifest)], order).write(lm_path)
    decoder = make_decoder({"name": "beam_lm", "beam_width": 32, "alpha": 0.5, "beta": 1.0}, alphabet, lm_path=lm_path)
    test = load_split(config.data.test_manifest, config, alphabet, "test")
    references, hypotheses = transcribe_split(model, test, alphabet, config, decoder)
    decoder.close()
    return {f"test_cer_beam_lm{order}": round(cer(references, hypotheses), 4),
            f"test_wer_beam_lm{order}": round(wer(references, hypotheses), 4),
            "beam_lm_seconds": round(time.perf_counter() - started, 1)}


if __name__ == "__main__":
    main()
