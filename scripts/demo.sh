#!/usr/bin/env bash
# The whole platform on its embedded defaults, starting from the packaged English model `en`:
# it transcribes voices and sentences it never heard, then an offline synthetic corpus is made,
# a small fine-tuning sweep from `en` is queued in SQLite, one daemon on the CPU runs it, and
# every run is tracked in the local MLflow store. Run it with `make demo`.
set -euo pipefail
cd "$(dirname "$0")/.."

export MLFLOW_TRACKING_URI="${MLFLOW_TRACKING_URI:-sqlite:///mlflow.db}"
export EXPCTL_TRACKING="${EXPCTL_TRACKING:-mlflow}"
export TF_CPP_MIN_LOG_LEVEL=2
export COLUMNS="${COLUMNS:-140}"  # rich tables at a readable width when piped
started=$(date +%s)

echo "== 1/5 the packaged model 'en' on Festival voices it never heard, saying sentences it never saw"
asr models list
python scripts/demo_samples.py recipes/en/samples/festival.jsonl --model en

echo "== 2/5 synthesise an offline English corpus (espeak-ng, 16 kHz)"
if [[ -f data/synth/all.jsonl ]]; then
    echo "data/synth exists: reusing it (delete it to synthesise again)"
else
    asr data synth --out data/synth --count "${DEMO_UTTERANCES:-240}" --seed 0 --jobs 2
fi
asr evaluate --model en --manifest data/synth/test.jsonl --decoder greedy --worst 3

echo "== 3/5 queue a fine-tuning sweep from 'en': two learning rates"
expctl enqueue config +preset=en trainer.init_from=en 'optimizer.learning_rate=0.0001,0.0005' \
    optimizer.schedule=constant optimizer.warmup_steps=0 "trainer.epochs=${DEMO_EPOCHS:-2}" \
    trainer.batch_size=16 experiment.name=demo --name demo

echo "== 4/5 run the queue on the CPU until it is empty"
expctl consume --gpus none --until-empty

echo "== 5/5 results"
expctl list
python scripts/demo_results.py --experiment demo
echo
echo "Demo finished in $(( $(date +%s) - started )) s. Browse the runs with:"
echo "    .venv/bin/mlflow ui --backend-store-uri ${MLFLOW_TRACKING_URI}    # then open http://127.0.0.1:5000"
