"""Big sweeps compose in seconds: specs that differ only in value overrides reuse one composition
(expctl.specs.compose_child's fast path). Each printed config must be the one a full ``--cfg job`` run
prints, byte for byte (dedup and config hashes depend on it); refusals keep Hydra's own message."""

from __future__ import annotations

import pytest
import yaml

from expctl.specs import compose
from expctl.errors import UserError

pytestmark = pytest.mark.timeout(600)


def test_the_fast_path_prints_what_a_full_composition_prints() -> None:
    plan = compose.expand("asr.train", "config", [
        "seed=0,7", "model.parameters.rnn_sizes=[16],[32,32]", "optimizer.learning_rate=0.1,1e-3",
        "model=deepspeech,deepspeech2", "trainer.init_from=null,'a b: c'", "features.type=mfcc,logmel",
        "exp_dir=runs/a", "+preset=en", "data.cache_dir='x#y'",
    ])
    assert len(plan.specs) == 64
    fast = compose.compose_all(plan.specs, max_workers=2)
    chosen = list(range(0, 64, 7)) + [63]
    for index in chosen:  # each alone: a child's first spec always takes the full path
        [alone] = compose.compose_all([plan.specs[index]])
        assert fast[index].config_yaml == alone.config_yaml, plan.specs[index]
        assert fast[index].config_hash == alone.config_hash
    assert len({composed.config_hash for composed in fast}) == 64
    # the config as data that the children send along (parsed by section on the fast path) is the YAML's
    assert all(composed.config == yaml.safe_load(composed.config_yaml) for composed in fast)


def test_a_value_refused_on_the_fast_path_is_reported_in_hydras_words() -> None:
    plan = compose.expand("asr.train", "config", ["trainer.epochs=1,2,x,4"])
    with pytest.raises(UserError, match=r"trainer.epochs=x.*could not be converted to Integer|"
                                        r"Value 'x' of type 'str' could not be converted to Integer"):
        compose.compose_all(plan.specs, max_workers=1)


def test_value_sweeps_take_the_fast_path_and_group_choices_the_full_one() -> None:
    import json
    import subprocess
    import sys

    from expctl_helpers import REPO

    request = {"app": "asr.train", "specs": [
        [index, ["--config-name", "config"], overrides] for index, overrides in enumerate([
            ["seed=1"], ["seed=2"], ["seed=3", "model.parameters.rnn_sizes=[8]"],
            ["model=deepspeech", "seed=1"], ["model=deepspeech", "seed=2"], ["+preset=en"]])]}
    answer = subprocess.run([sys.executable, "-m", "expctl.specs.compose_child"], input=json.dumps(request), cwd=REPO,
                            capture_output=True, text=True, timeout=300, check=True)
    paths = [json.loads(line)["path"] for line in answer.stdout.splitlines()]
    assert paths == ["full", "fast", "fast", "full", "fast", "full"]
