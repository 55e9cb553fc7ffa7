import os
import platform
import subprocess
import sys

import pytest

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")


def _state_after_import(env_value):
    env = {k: v for k, v in os.environ.items() if k != "BIOPLAUSIBLE_MALLOC_TUNING"}
    if env_value is not None:
        env["BIOPLAUSIBLE_MALLOC_TUNING"] = env_value
    out = subprocess.run(
        [sys.executable, "-c", "import bioplausible.experiments.malloc as m, bioplausible.experiments; print(m._state)"],
        capture_output=True, text=True, env=env, check=True)
    return out.stdout.strip()


@glibc
def test_importing_experiments_tunes_glibc_once():
    assert _state_after_import(None) == "{'done': True}"


@glibc
def test_tuning_can_be_switched_off():
    assert _state_after_import("0") == "{'done': False}"


def test_tune_malloc_is_idempotent():
    from bioplausible.experiments.malloc import tune_malloc

    first = tune_malloc()
    assert tune_malloc() is first
