#!/usr/bin/env bash
# Turn the recipe's trained run (experiments/en/model.bin) into the packaged model asr/pretrained/en.bin:
# a 3-gram LM of the training transcripts plus the fortunes the corpus did not use (never the dev or
# test sentences), its weights tuned on the dev split (training voices only: Festival never enters).
set -euo pipefail
cd "$(dirname "$0")/../.."
corpus=${CORPUS:-data/en}
run=${RUN:-experiments/en}
python - "$corpus" <<'PY'
import json, sys
from pathlib import Path
from asr.data.texts import fortune_sentences
corpus = Path(sys.argv[1])
def texts(name):
    return [json.loads(line)["text"] for line in (corpus / f"{name}.jsonl").read_text().splitlines()]
held_out = set(texts("dev")) | set(texts("test"))
unused = [text for text in fortune_sentences() if text not in set(texts("all"))]
lines = texts("train") + unused
assert not held_out & set(lines)
(corpus / "lm.txt").write_text("\n".join(lines) + "\n")
print(f"LM text: {len(lines)} sentences ({len(unused)} unused fortunes), none from dev or test")
PY
asr lm build --order 3 --text "$corpus/lm.txt" --out "$corpus/lm.arpa"
cp "$run/model.bin" "$corpus/en.bin"
asr lm tune --model "$corpus/en.bin" --manifest "$corpus/dev.jsonl" --lm "$corpus/lm.arpa" --trials "${TRIALS:-16}"
dest=${DEST:-asr/pretrained/en.bin}
mkdir -p "$(dirname "$dest")"
cp "$corpus/en.bin" "$dest"
ls -l "$dest"
