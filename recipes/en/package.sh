#!/usr/bin/env bash
# Turn the recipe's trained run (experiments/en-2/model.bin, the second stage) into the packaged model asr/pretrained/en.bin:
# a 3-gram LM of the training transcripts, the fortunes the corpus did not use and WordNet's example
# sentences (never a dev or test sentence), its weights tuned on the dev split (training voices only: Festival never enters).
set -euo pipefail
cd "$(dirname "$0")/../.."
corpus=${CORPUS:-data/en}
run=${RUN:-experiments/en-2}
python - "$corpus" <<'PY'
import json, sys
from pathlib import Path
from asr.data.texts import fortune_sentences, wordnet_sentences
corpus = Path(sys.argv[1])
def texts(name):
    return [json.loads(line)["text"] for line in (corpus / f"{name}.jsonl").read_text().splitlines()]
held_out = set(texts("dev")) | set(texts("test"))
in_corpus = set(texts("all"))
extra = [text for text in (*fortune_sentences(), *wordnet_sentences()) if text not in in_corpus]
lines = [text for text in (*texts("train"), *extra) if text not in held_out]
(corpus / "lm.txt").write_text("\n".join(lines) + "\n")
print(f"LM text: {len(lines)} sentences (training split + {len(extra)} fortunes and WordNet examples "
      "the corpus did not use), none from dev or test")
PY
asr lm build --order 3 --text "$corpus/lm.txt" --out "$corpus/lm.arpa"
cp "$run/model.bin" "$corpus/en.bin"
# Tuning decodes the dev logits once per trial: a subset keeps it to minutes on 2 cores. TUNE_MANIFEST: tune on
# another dev manifest (more-voices.sh's five-synthesizer selection set).
head -n "${TUNE_UTTERANCES:-400}" "$corpus/dev.jsonl" > "$corpus/dev-tune.jsonl"
asr lm tune --model "$corpus/en.bin" --manifest "${TUNE_MANIFEST:-$corpus/dev-tune.jsonl}" --lm "$corpus/lm.arpa" \
    --trials "${TRIALS:-12}"
# The bundle's test figures (asr models list), decoded as it ships: the test split (training voices, sentences never heard).
asr evaluate --model "$corpus/en.bin" --manifest "$corpus/test.jsonl" --worst 0 --record
dest=${DEST:-asr/pretrained/en.bin}
mkdir -p "$(dirname "$dest")"
cp "$corpus/en.bin" "$dest"
ls -l "$dest"
