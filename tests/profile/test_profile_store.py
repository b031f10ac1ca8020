"""The shipped zoo profiles (dora_rl/data/profiles) equal a fresh profile of each model."""

import pytest

from dora_rl.profile.profiler import get_profile as live
from dora_rl.profile.store import STORE, get_profile
from dora_rl.profile.zoo import model_names


@pytest.mark.parametrize("name", model_names())
def test_shipped_profile_matches_fresh(name):
    assert (STORE / f"{name}.json").is_file(), "run `python -m dora_rl.profile.store` to rebuild the shipped profiles"
    assert get_profile(name).to_dict() == live(name).to_dict()


def test_store_does_not_import_torch():
    import subprocess
    import sys

    code = ("import sys; from dora_rl.scenario import load_scenario; load_scenario('smart_home'); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
