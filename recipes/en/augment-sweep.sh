#!/usr/bin/env bash
# The augmentation sweep behind the packaged `en` model's choices (docs/models/en.md, "Augmentation sweep").
# Each arm trains the `en` shape from scratch for the same number of steps on espeak-ng voices only (the dectalk
# arm: espeak-ng and DECtalk), and is judged on flite voices and WordNet sentences it never heard: a synthesizer
# unknown to the model stands in for an unknown speaker. Festival is not used here (it stays reserved for the final evaluation).
#   bash recipes/en/augment-sweep.sh            # ~10 min synthesis, then ~3.4 h of training on 2 cores
# Needs flite, DECtalk and wordnet-base (make voices). Results: expctl list; MLflow experiment asr-en-augment-sweep.
set -euo pipefail
COUNT=${COUNT:-4000}
asr data synth --out data/sweep --count "$COUNT" --seed 21 --engines espeak --text generator,fortunes \
    --room 0 --splits train=1.0
asr data synth --out data/sweep-room --count "$COUNT" --seed 21 --engines espeak --text generator,fortunes \
    --room 0.4 --splits train=1.0
for effect in reverb band noise; do  # the room's effects one at a time, on the same utterances as above
    asr data synth --out "data/sweep-$effect" --count "$COUNT" --seed 21 --engines espeak --text generator,fortunes \
        --room 0.4 --room-effects "$effect" --splits train=1.0
done
asr data synth --out data/sweep-dectalk --count "$COUNT" --seed 21 --engines espeak,dectalk \
    --text generator,fortunes --room 0.4 --splits train=1.0    # the same sentences, half of them by DECtalk
asr data synth --out data/sweep-heldout --count 400 --seed 22 --engines flite --text wordnet \
    --splits dev=0.5,test=0.5
expctl enqueue --file recipes/en/augment-sweep.txt --name en-augment-sweep
expctl consume --gpus none --until-empty
