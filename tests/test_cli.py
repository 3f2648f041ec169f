"""The `featurescope` command: help, one-line errors, and the whole pipeline end to end."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import subprocess
import sys

import numpy as np
import pytest

from cli_helpers import run_main
from conftest import run_cli
from featurescope import cli


def test_help_lists_every_stage():
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("harvest", "train", "eval", "export", "info", "models", "corpora"):
        assert command in result.stdout
    harvest_help = run_cli("harvest", "--help").stdout
    for flag in ("--model", "--layer", "--corpus", "--tokens", "--out", "--dtype", "--ctx-len"):
        assert flag in harvest_help
    train_help = run_cli("train", "--help").stdout
    for flag in ("--activations", "--arch", "--k", "--features", "--batch-size", "--epochs", "--lr", "--seed"):
        assert flag in train_help


def test_every_option_shows_one_readable_default():
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for name, sub in commands.items():
        text = " ".join(sub.format_help().split())  # argparse wraps lines; compare the words
        assert "(default: )" not in text, name
        for action in sub._actions:
            assert (action.help or "").count("(default:") <= 1, (name, action.dest, action.help)


def test_train_builds_its_parser_alone_and_imports_no_model_code():
    code = ("import sys\nfrom featurescope.cli import main\ntry:\n    main(['-q', 'train', '--help'])\n"
            "except SystemExit:\n    pass\n"
            "print(sorted(m for m in ('scipy', 'transformers', 'featurescope.probes', 'featurescope.harvest') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "--activations" in out and out.strip().endswith("[]")
    assert set(cli.ALONE) < set(cli.build_parser()._subparsers._group_actions[0].choices)  # the full parser has them


def test_library_notices_are_plain_stderr_lines_while_a_command_runs(capsys):
    log = logging.getLogger("featurescope.harvest.writer")
    with cli._notices_to_stderr():
        log.info("featurescope: converting \x1b]0;title\x07x.gguf")
        log.warning("featurescope: corpus c ran out")
        log.debug("not shown")
    log.warning("after the command")
    err = capsys.readouterr().err.splitlines()
    assert err[:2] == ["featurescope: converting ]0;titlex.gguf", "featurescope: corpus c ran out"]
    assert "not shown" not in err and logging.getLogger("featurescope").level == logging.NOTSET


def _assert_one_line_error(result, pattern: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("featurescope: error: "), result.stderr
    assert "Traceback" not in result.stderr
    assert pattern in lines[0], lines[0]


def test_user_mistakes_get_one_line_errors(tmp_path, small_store):
    _assert_one_line_error(run_cli("harvest", "--model", "nope", "--out", str(tmp_path / "a")), "unknown model")
    _assert_one_line_error(run_cli("harvest", "--corpus", "nope", "--out", str(tmp_path / "a")), "unknown corpus")
    _assert_one_line_error(run_cli("harvest", "--tokens", "0", "--out", str(tmp_path / "a")), "--tokens")
    np.save(tmp_path / "r3.npy", np.zeros((2, 3, 4), dtype=np.float32))
    _assert_one_line_error(run_cli("train", "--activations", str(tmp_path / "r3.npy"), "--out", str(tmp_path / "s")),
                           "2-D")
    _assert_one_line_error(run_cli("train", "--activations", str(small_store), "--arch", "nope",
                                   "--out", str(tmp_path / "s")), "nope")
    _assert_one_line_error(run_cli("eval", str(tmp_path / "missing"), "--activations", str(small_store)),
                           "missing")
    assert not (tmp_path / "a").exists() or not any((tmp_path / "a").iterdir())


def test_errors_are_worded_as_flags(capsys, tmp_path):
    """A library error names settings (`ctx_len`); the CLI writes them as the flags the user typed."""
    code, _, err = run_main(capsys, "harvest", "--ctx-len", "1", "--out", str(tmp_path / "a"))
    assert code == 2 and err == "featurescope: error: --ctx-len must be at least 2 (got 1)\n"
    code, _, err = run_main(capsys, "train", "--activations", str(tmp_path / "x.npy"), "--out", str(tmp_path / "b"),
                            "--lr-decay", "2")
    assert code == 2 and err == "featurescope: error: --lr-decay must be a fraction in [0, 1]\n"
    for command in ("probe", "multilingual"):  # --show is the CLI's own, checked before any work
        code, _, err = run_main(capsys, command, str(tmp_path / "none.db"), "--show", "0")
        assert code == 2 and err == "featurescope: error: --show must be positive (got 0)\n"


def test_library_configs_hold_no_output_options():
    from featurescope.evaluate import EvalConfig
    from featurescope.probes.multilingual import MultilingualConfig
    from featurescope.probes.probe import ProbeConfig
    from featurescope.steering.sweep import SweepConfig

    for cfg in (EvalConfig, MultilingualConfig, ProbeConfig, SweepConfig):
        assert not {f.name for f in dataclasses.fields(cfg)} & {"json", "show", "distinct_only"}, cfg
    code = ("import sys, featurescope.harvest, featurescope.train, featurescope.analysis, featurescope.probes; "
            "sys.exit('featurescope.cli_args' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_pipeline_end_to_end(tmp_path):
    acts, sae, exported = tmp_path / "acts", tmp_path / "sae", tmp_path / "sae-saelens"
    result = run_cli("-q", "harvest", "--tokens", "4000", "--out", str(acts), "--corpus", "wiki-fr")
    assert result.returncode == 0, result.stderr
    assert "4000 activation rows" in result.stdout
    result = run_cli("-q", "train", "--activations", str(acts), "--out", str(sae), "--features", "512", "--k", "16",
                     "--batch-size", "512", "--epochs", "4")
    assert result.returncode == 0, result.stderr
    cfg = json.loads((sae / "cfg.json").read_text())
    assert (cfg["model"], cfg["layer"], cfg["d_in"], cfg["d_sae"], cfg["k"]) == ("default", 9, 640, 512, 16)
    result = run_cli("-q", "eval", str(sae), "--activations", str(acts), "--ce-contexts", "2", "--json")
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout)
    assert 0 < metrics["fvu"] < 0.6 and metrics["l0"] == pytest.approx(16, abs=0.01)
    assert 0 < metrics["loss_recovered"] <= 1.05 and metrics["ce_clean"] < metrics["ce_spliced"] < metrics["ce_zero"]
    result = run_cli("export", str(sae), "--format", "saelens", "--out", str(exported))
    assert result.returncode == 0, result.stderr
    assert (exported / "sae_weights.safetensors").is_file()
    info = json.loads(run_cli("info", str(acts)).stdout)
    assert info["n_rows"] == 4000 and info["layer"] == 9
