#!/usr/bin/env bash
# The whole platform on its embedded defaults: an offline synthetic corpus, a sweep of two
# model sizes in the SQLite queue, one daemon on the CPU that trains them one after the
# other, every run tracked in the local MLflow store. Run it with `make demo`.
set -euo pipefail
cd "$(dirname "$0")/.."

export MLFLOW_TRACKING_URI="${MLFLOW_TRACKING_URI:-sqlite:///mlflow.db}"
export EXPCTL_TRACKING="${EXPCTL_TRACKING:-mlflow}"
export TF_CPP_MIN_LOG_LEVEL=2
export COLUMNS="${COLUMNS:-140}"  # rich tables at a readable width when piped
started=$(date +%s)

echo "== 1/4 synthesise an offline English corpus (espeak-ng, 16 kHz)"
if [[ -f data/synth/all.jsonl ]]; then
    echo "data/synth exists: reusing it (delete it to synthesise again)"
else
    asr data synth --out data/synth --count "${DEMO_UTTERANCES:-240}" --seed 0 --jobs 2
fi

echo "== 2/4 queue a sweep: two RNN sizes"
expctl enqueue config 'model.parameters.rnn_sizes=[96],[192]' \
    "trainer.epochs=${DEMO_EPOCHS:-6}" trainer.batch_size=16 experiment.name=demo --name demo

echo "== 3/4 run the queue on the CPU until it is empty"
expctl consume --gpus none --until-empty

echo "== 4/4 results"
expctl list
python scripts/demo_results.py --experiment demo
echo
echo "Demo finished in $(( $(date +%s) - started )) s. Browse the runs with:"
echo "    .venv/bin/mlflow ui --backend-store-uri ${MLFLOW_TRACKING_URI}    # then open http://127.0.0.1:5000"
