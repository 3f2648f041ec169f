"""Train a family of SAEs in one pass over the data: every member sees the same shuffled batches, read once.

`members(cfg, lists, sweep)` expands a base `TrainConfig` into members (the product of the listed values, for
each entry of a sweep); `train_family(cfg, members)` trains them together and writes each into its own folder,
`OUT/<name>/`, laid out exactly as a single run's OUT (SAE, summary, `train_config.json`, `checkpoint/`), with
`OUT/family.json` listing the members and their settings. Each member checkpoints and resumes on its own: a
rerun skips the finished members and continues every other one from its own checkpoint. A member ends with
the same weights as a run of its settings alone (same seed, hence the same batches). See docs/training.md.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import re
import time
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from tqdm.auto import tqdm

from featurescope.activations import ActivationSource
from featurescope.atomic import read_json, write_json
from featurescope.config_fields import base_type
from featurescope.distributed.world import pick_device
from featurescope.errors import FeaturescopeError
from featurescope.resume import settings
from featurescope.sae import SAE
from featurescope.train.config import VOLATILE, TrainConfig
from featurescope.train.layout import Layout
from featurescope.train.loop import (
    CONFIG_FILE,
    SUMMARY_FILE,
    Run,
    TrainResult,
    check_out,
    finish,
    plan,
    prepare_out,
    record_settings,
    training_source,
)
from featurescope.train.setup import check_config

__all__ = ["FAMILY_FILE", "SHARED", "FamilyResult", "Member", "members", "read_sweep", "train_family"]

FAMILY_FILE = "family.json"
FORMAT = "featurescope.train-family"
VERSION = 1
SHARED = frozenset({"activations", "layer", "out", "batch_size", "epochs", "seed", "max_rows", *VOLATILE})
"""Settings every member shares: what fixes the batches (data and its layer, batch size, epochs, seed) and the
volatile ones."""
SHORT = {"arch": "", "k": "k", "features": "f"}
"""A member's name joins `SHORT.get(field, field) + value` over the settings that vary (these first)."""
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.=+-]*")


class Member(NamedTuple):
    """One SAE of a family: its folder name under OUT and the settings it changes from the base config."""

    name: str
    settings: dict[str, Any]


class FamilyResult(NamedTuple):
    """What `train_family` returns."""

    path: Path
    members: dict[str, TrainResult]
    """By member name, in the family's order."""
    skipped: tuple[str, ...]
    """Members finished before this call (read back from disk, not retrained)."""
    seconds: float
    """Wall time of this call's pass over the data (0 if every member was finished)."""


@functools.cache
def _field_types() -> dict[str, tuple[type, bool]]:
    """(type, optional) of each `TrainConfig` field."""
    hints = typing.get_type_hints(TrainConfig)
    return {f.name: base_type(hints[f.name]) for f in dataclasses.fields(TrainConfig)}


def _check_value(name: str, value: Any, where: str) -> Any:
    """`value` for field `name` (an int is a float too), or a FeaturescopeError naming it."""
    types = _field_types()
    if name not in types:
        raise FeaturescopeError(f"{where}: no setting `{name}`")
    if name in SHARED:
        raise FeaturescopeError(f"{where}: `{name}` is shared by every member and cannot vary", settings=(name,))
    kind, optional = types[name]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if (value is None and optional) or (isinstance(value, kind) and (kind is bool or not isinstance(value, bool))):
        return value
    raise FeaturescopeError(f"{where}: `{name}` must be {kind.__name__}, got {value!r}", settings=(name,))


def read_sweep(path: str | Path) -> list[dict[str, Any]]:
    """The entries of a sweep file: a JSON list of objects, each a set of `TrainConfig` settings (and an
    optional `name`, the member's folder)."""
    try:
        data = read_json(Path(path))
    except (OSError, ValueError) as e:
        raise FeaturescopeError(f"{path}: unreadable sweep file ({e})") from None
    if not isinstance(data, list) or not data or not all(isinstance(e, dict) for e in data):
        raise FeaturescopeError(f"{path}: a sweep file is a non-empty JSON list of objects of settings")
    return data


def _token(name: str, value: Any) -> str:
    if isinstance(value, bool):
        shown = "on" if value else "off"
    elif isinstance(value, float):
        shown = f"{value:g}"
    else:
        shown = str(value)
    return SHORT.get(name, name) + shown


def _name(settings_: Mapping[str, Any], varying: Sequence[str]) -> str:
    keys = [k for k in varying if k in settings_] or list(settings_)
    return "-".join(_token(k, settings_[k]) for k in keys) or "run"


def members(cfg: TrainConfig, lists: Mapping[str, Sequence[Any]] | None = None,
            sweep: Sequence[Mapping[str, Any]] | None = None) -> list[Member]:
    """The members of a family: for each `sweep` entry (one empty entry if none), every combination of the
    values in `lists` (field -> values), on top of `cfg`. Names come from the settings that vary across members
    (`k16-f4096`) unless an entry gives `name`; names and settings must be distinct."""
    lists = dict(lists or {})
    for field, values in lists.items():
        values = [_check_value(field, v, "a list") for v in values]
        if not values:
            raise FeaturescopeError(f"`{field}` has no values", settings=(field,))
        dupes = sorted({str(v) for v in values if values.count(v) > 1})
        if dupes:
            raise FeaturescopeError(f"`{field}` lists {', '.join(dupes)} more than once", settings=(field,))
        lists[field] = values
    entries: list[tuple[str | None, dict[str, Any]]] = []
    for i, entry in enumerate(sweep or [{}]):
        entry = dict(entry)
        name = entry.pop("name", None)
        if name is not None and not isinstance(name, str):
            raise FeaturescopeError(f"sweep entry {i + 1}: `name` must be a string")
        clash = sorted(set(entry) & set(lists))
        if clash:
            raise FeaturescopeError(f"sweep entry {i + 1} sets `{clash[0]}`, which is also given as a list",
                                    settings=(clash[0],))
        entry = {k: _check_value(k, v, f"sweep entry {i + 1}") for k, v in entry.items()}
        fields = list(lists)
        for combo in itertools.product(*lists.values()):
            named = name if name is None or not fields else name + "-" + "-".join(map(_token, fields, combo))
            entries.append((named, {**entry, **dict(zip(fields, combo, strict=True))}))
    order = [f.name for f in dataclasses.fields(TrainConfig)]
    order = [*SHORT, *(f for f in order if f not in SHORT)]
    varying = [f for f in order if len({repr(s.get(f, "\0default")) for _, s in entries}) > 1]
    out = [Member(n or _name(s, varying), s) for n, s in entries]
    seen: dict[str, Member] = {}
    for m in out:
        if not _NAME.fullmatch(m.name) or m.name in (FAMILY_FILE, CONFIG_FILE, SUMMARY_FILE):
            raise FeaturescopeError(f"member name {m.name!r} is not a usable folder name")
        if m.name in seen:
            raise FeaturescopeError(f"two members are named {m.name!r} ({seen[m.name].settings} and {m.settings}); "
                                    "give each sweep entry a distinct `name` or distinct settings")
        seen[m.name] = m
    return out


def _check_family_out(out: Path, names: Sequence[str]) -> dict[str, Any] | None:
    """OUT's `family.json` (None if none yet), if OUT may hold this family (reads only)."""
    if out.exists() and not out.is_dir():
        raise FeaturescopeError(f"{out}: exists and is not a folder", settings=("out",))
    if not out.is_dir():
        return None
    if (out / CONFIG_FILE).is_file():
        raise FeaturescopeError(f"{out} holds a single training run; train a family into a new `out`",
                                settings=("out",))
    index = read_json(out / FAMILY_FILE) if (out / FAMILY_FILE).is_file() else None
    if index is not None and (not isinstance(index, dict) or index.get("format") != FORMAT
                              or not isinstance(index.get("members", []), list)
                              or not all(isinstance(m, dict) and isinstance(m.get("name"), str)
                                         for m in index.get("members", []))):
        raise FeaturescopeError(f"{out / FAMILY_FILE}: not a featurescope family index (or a corrupt one)")
    known = {FAMILY_FILE, *names, *(m["name"] for m in (index or {}).get("members", []))}
    foreign = sorted(f.name for f in out.iterdir() if f.name not in known)
    if foreign:
        raise FeaturescopeError(f"{out}: holds {foreign[0]}, which is no member of this family; use a new `out`",
                                settings=("out",))
    return index


def _write_index(out: Path, cfg: TrainConfig, family: Sequence[Member], old: dict[str, Any] | None) -> None:
    """`family.json`: the shared settings and every member (earlier members that this call does not name kept)."""
    listed = {m["name"]: m for m in (old or {}).get("members", [])}
    listed.update({m.name: {"name": m.name, "path": m.name, "settings": m.settings} for m in family})
    shared = {k: v for k, v in settings(cfg, VOLATILE).items() if k in SHARED}
    write_json(out / FAMILY_FILE, {"format": FORMAT, "version": VERSION, "shared": shared,
                                   "members": list(listed.values())})


def _finished(out: Path, record: dict[str, Any], total_steps: int) -> TrainResult | None:
    """The result of a member that a run before this one finished, read from its folder, else None."""
    path = out / SUMMARY_FILE
    if not path.is_file():
        return None
    summary = read_json(path)
    if summary.get("config") != record or int(summary.get("steps", -1)) != total_steps:
        return None
    return TrainResult(out, SAE.load(out), int(summary["steps"]), float(summary["seconds"]), summary["metrics"])


def _train_together(runs: Sequence[Run], source: ActivationSource, cfg: TrainConfig, progress: bool) -> float:
    """Step every run on one stream of batches until all are done; returns the wall time of the pass.

    A run behind the others (a rerun after a kill between two members' checkpoints) trains alone on the
    batches it lacks; the others join it at their own step, each taking batch b at its step b.
    """
    step, total = min(r.step for r in runs), runs[0].total_steps
    per_epoch = runs[0].batches_per_epoch
    bar = tqdm(total=total, initial=step, disable=not progress, unit="step", desc=f"train {len(runs)} SAEs",
               dynamic_ncols=True)
    t0 = last_ckpt = time.perf_counter()
    for r in runs:
        r.sae.train()
    while step < total:
        epoch, start = divmod(step, per_epoch)
        for batch in source.batches(cfg.batch_size, seed=cfg.seed, epoch=epoch, start_batch=start,
                                    device=runs[0].device):
            for r in runs:
                if r.step == step:
                    r.train_step(batch)
            step += 1
            bar.update(1)
            if step % max(cfg.log_every, 1) == 0 or step == total:
                shown = [r.meter.take(r.par) for r in runs]
                bar.set_postfix({"L0": "/".join(f"{m.get('l0', 0):.1f}" for m in shown),
                                 "FVU": "/".join(f"{m.get('fvu', 0):.3f}" for m in shown)})
            now = time.perf_counter()
            timed = cfg.checkpoint_seconds > 0 and now - last_ckpt >= cfg.checkpoint_seconds
            if step < total and ((cfg.checkpoint_every > 0 and step % cfg.checkpoint_every == 0) or timed):
                for r in runs:
                    r.save_checkpoint(r.elapsed + now - t0)
                last_ckpt = now
            if step >= total:
                break
    bar.close()
    seconds = time.perf_counter() - t0
    for r in runs:
        r.save_checkpoint(r.elapsed + seconds)
    return seconds


def train_family(cfg: TrainConfig, family: Sequence[Member], *, source: ActivationSource | None = None,
                 progress: bool = True) -> FamilyResult:
    """Train every member of `family` (`members(cfg, ...)`) into `cfg.out`/NAME on one pass over the data.

    Each member's `seconds` is the wall time of the passes that trained it (shared with the other members).
    One process only: a distributed run is refused.
    """
    from featurescope.distributed.world import launched

    if cfg.distributed > 0 or launched():
        raise FeaturescopeError("a family trains in one process; train each member alone to use `distributed`",
                                settings=("distributed",))
    if not family:
        raise FeaturescopeError("a family needs at least one member")
    out = Path(cfg.out)
    if not cfg.out:
        raise FeaturescopeError("`out` is required (the folder to write the family to)", settings=("out",))
    configs = [dataclasses.replace(cfg, out=str(out / m.name), **m.settings) for m in family]
    for c in configs:
        check_config(c, have_source=source is not None)
    source = training_source(cfg, source)
    plans = [plan(c, source) for c in configs]
    records = [record_settings(c, source, p) for c, p in zip(configs, plans, strict=True)]
    index = _check_family_out(out, [m.name for m in family])
    for c, rec in zip(configs, records, strict=True):
        check_out(c, rec)
    lay = Layout(pick_device(cfg.device))
    out.mkdir(parents=True, exist_ok=True)
    _write_index(out, cfg, family, index)
    results: dict[str, TrainResult | None] = {}
    runs: dict[str, Run] = {}
    for m, c, p, rec in zip(family, configs, plans, records, strict=True):
        done = None if c.overwrite else _finished(Path(c.out), rec, p.total_steps)
        results[m.name] = done
        if done is None:
            prepare_out(c, rec)
            runs[m.name] = Run(c, source, Path(c.out), rec, p, lay)
    skipped = tuple(name for name, r in results.items() if r is not None)
    training = [r for r in runs.values() if r.step < r.total_steps]
    seconds = _train_together(training, source, cfg, progress) if training else 0.0
    for name, run in runs.items():
        results[name] = finish(run, run.elapsed + seconds if run in training else run.elapsed)
    return FamilyResult(out, {n: r for n, r in results.items() if r is not None}, skipped, seconds)
