"""The one resume-or-refuse rule of the resumable stages (featurescope.resume), and how the CLI words its errors."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from featurescope.cli import flag_wording
from featurescope.errors import FeaturescopeError
from featurescope.resume import differing, resume_or_refuse, settings

VOLATILE = frozenset({"device", "out"})


def test_nothing_saved_starts_afresh():
    assert resume_or_refuse(None, {"lr": 1.0}, VOLATILE, "OUT holds a run") is False


def test_same_settings_resume():
    assert resume_or_refuse({"lr": 1.0, "k": 4}, {"k": 4, "lr": 1.0}, VOLATILE, "OUT holds a run") is True


def test_a_volatile_difference_still_resumes():
    saved = {"lr": 1.0, "device": "cpu", "out": "a"}
    assert resume_or_refuse(saved, {"lr": 1.0, "device": "cuda"}, VOLATILE, "OUT holds a run") is True


def test_a_differing_setting_refuses_naming_it():
    with pytest.raises(FeaturescopeError) as e:
        resume_or_refuse({"lr": 1.0, "k": 4, "device": "cpu"}, {"lr": 2.0, "k": 4, "device": "cuda"}, VOLATILE,
                         "OUT holds a run")
    assert str(e.value) == "OUT holds a run (lr differ); use another `out` or `overwrite`"
    assert flag_wording(e.value) == "OUT holds a run (lr differ); use another --out or --overwrite"


def test_a_missing_setting_differs_and_values_are_shown_on_request():
    with pytest.raises(FeaturescopeError) as e:
        resume_or_refuse({"layer": 9}, {"layer": 5, "seed": 0}, (), "OUT: holds a harvest", values=True,
                         advice="use a new `out`")
    assert str(e.value) == "OUT: holds a harvest (layer 9 vs 5, seed None vs 0); use a new `out`"
    assert differing({"b": 1, "a": 1}, {"a": 2, "b": 2, "c": 3}, {"c"}) == ["a", "b"]


def test_settings_leave_out_the_volatile_fields():
    @dataclass
    class Config:
        out: str = "x"
        lr: float = 1.0

    assert settings(Config(), VOLATILE) == {"lr": 1.0}


def test_the_cli_writes_only_the_named_settings_as_flags():
    e = FeaturescopeError("`batch_size` and `shard_contexts` must be positive; see `featurescope probe`",
                          settings=("batch_size", "shard_contexts"))
    assert flag_wording(e) == "--batch-size and --shard-contexts must be positive; see `featurescope probe`"
    assert flag_wording(FeaturescopeError("plain `text`")) == "plain `text`"
