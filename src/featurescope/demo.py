"""`featurescope demo`: the whole pipeline on the embedded default model, then the explorer.

harvest → train → analyse → multilingual scores → safety probes → evaluate (CE loss recovered) → serve, in one
process (the model is loaded once), so every view of the explorer has data. Every step resumes or is skipped when
its output is complete, so a rerun goes straight to serving.
`--scale` picks the sizes: `small` fits in minutes on a 2-core CPU; `full` is the larger run.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from featurescope.atomic import read_json, write_json
from featurescope.config_fields import option
from featurescope.errors import FeaturescopeError


class Scale(NamedTuple):
    """Sizes of one demo preset."""

    tokens: int
    """Activation rows harvested (and analysed)."""
    features: int
    k: int
    epochs: int
    ce_contexts: int
    batch_size: int = 4096
    verses: int = 200
    """Bible verses per language of the multilingual scores."""
    permutations: int = 2000
    """Label permutations of the safety probes' held-out test."""
    lr: float | None = None
    """Adam learning rate (None: `train`'s default)."""
    ood_contexts: int = 0
    """Contexts of the out-of-domain evaluation (0: as many as `ce_contexts`)."""


# `small`: measured in BENCHMARKS.md ("The demo SAE"): sized so that `make demo` fits in 10 minutes on 2 CPU cores
# with dead ≤ 1 % and dense (> 10 % of tokens) ≤ 0.25 % of the features; `train`'s default lr for 4,096 features
# (5.6e-3) left 43 % dead, and with k 32 on 300k tokens 0.37 % were dense.
SCALES = {
    "tiny": Scale(tokens=12_000, features=512, k=16, epochs=2, ce_contexts=2, batch_size=256, verses=20,
                  permutations=200),
    "small": Scale(tokens=300_000, features=4096, k=24, epochs=3, ce_contexts=64, batch_size=2048, lr=1.5e-3),
    "full": Scale(tokens=2_000_000, features=16384, k=32, epochs=2, ce_contexts=64),
}
SERVE_MODES = ("auto", "forever", "check", "no")
EVAL_FILE = "eval.json"


@dataclass
class DemoConfig:
    """Settings of `featurescope demo` (each field is also a `--flag`)."""

    out: str = option("runs/demo", "folder for the activations, the SAE, the feature database and eval.json")
    scale: str = option("small", "preset sizes: tiny (a smoke test), small (minutes on a laptop CPU), full",
                        choices=tuple(SCALES))
    tokens: int | None = option(None, "override the preset's token count")
    features: int | None = option(None, "override the preset's SAE width")
    k: int | None = option(None, "override the preset's TopK k")
    model: str = option("default", "model (the embedded Gemma 3 270M by default)")
    layer: int = option(9, "block whose residual stream the SAE reads")
    corpus: str = option("mix", "text to harvest (mix: Wikipedia, Python sources and the Bible in 8 languages)")
    serve: str = option("auto", "after the pipeline: forever (until Ctrl-C), check (start, fetch one page, stop), "
                                "no, or auto (forever on a terminal, check under CI=true or without a TTY)",
                        choices=SERVE_MODES)
    host: str = option("127.0.0.1", "explorer address")
    port: int = option(8765, "explorer port (0 picks a free one)")
    device: str = option("auto", "cpu, cuda or auto")
    dtype: str = option("bfloat16", "the model's compute dtype (bfloat16 runs ~4x faster than float32 on a CPU)",
                        choices=("bfloat16", "float32"))


def serve_mode(requested: str) -> str:
    """`requested`, with auto resolved: forever on an interactive terminal, check under CI or without a TTY."""
    if requested != "auto":
        return requested
    interactive = sys.stdin is not None and sys.stdin.isatty() and not os.environ.get("CI")
    return "forever" if interactive else "check"


class Steps:
    """Times each step and prints one line per step."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.times: dict[str, float] = {}

    def done(self, name: str, t0: float, what: str) -> None:
        self.times[name] = time.perf_counter() - t0
        print(f"[demo] {name}: {what} ({self.times[name]:.0f} s)", flush=True)

    @property
    def total(self) -> float:
        return time.perf_counter() - self.start


def _evaluate(scale: Scale, sae_dir: Path, sae: Any, model: Any, acts: Path, path: Path) -> dict[str, Any]:
    """FVU, L0, dead % and CE loss recovered on the store's held-out part, and CE loss recovered on the
    out-of-domain probe texts, as `featurescope eval --json` prints them (cached in `path`)."""
    from featurescope.evaluate import EvalConfig, evaluate

    if path.is_file():
        return read_json(path)
    r = evaluate(EvalConfig(sae=str(sae_dir), activations=str(acts), rows=20_000, ce_contexts=scale.ce_contexts,
                            ood_contexts=scale.ood_contexts),
                 sae=sae, model=model, progress=False)
    result = r.as_dict()
    write_json(path, result)
    return result


def _probes(scale: Scale, db: Path, sae: Any, model: Any, device: str, steps: Steps, progress: bool) -> None:
    """`featurescope multilingual` and `featurescope probe --set safety` on `db`, each skipped when stored."""
    from featurescope.featuredb.probes import get_meta
    from featurescope.probes.multilingual import MultilingualConfig, run_multilingual
    from featurescope.probes.probe import ProbeConfig, ProbeResult, run_probe

    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
        done_ml, done_probe = get_meta(con, "multilingual"), get_meta(con, "probe:safety")
    t0 = time.perf_counter()
    if done_ml:
        steps.done("multilingual", t0, "stored already")
    else:
        m = run_multilingual(MultilingualConfig(db=str(db), verses=scale.verses, device=device), sae=sae, model=model,
                             progress=progress)
        steps.done("multilingual", t0, f"{m.listed} cross-lingual features in {', '.join(m.langs)}")
    t0 = time.perf_counter()
    if done_probe:
        steps.done("safety probes", t0, "stored already")
        return
    r = run_probe(ProbeConfig(db=str(db), set="safety", permutations=scale.permutations, device=device), sae=sae,
                  model=model, progress=progress)
    assert isinstance(r, ProbeResult)
    found = sum(bool(c.reported) for c in r.categories)
    steps.done("safety probes", t0, f"features that generalise in {found} of {len(r.categories)} categories")


def check_server(url: str, timeout: float = 30.0) -> None:
    """Fetch the overview API once; FeaturescopeError unless it answers 200."""
    try:
        with urllib.request.urlopen(url + "api/overview", timeout=timeout) as reply:
            if reply.status != 200:
                raise FeaturescopeError(f"{url}: the explorer answered {reply.status}")
    except OSError as e:
        raise FeaturescopeError(f"{url}: the explorer did not answer ({e})") from None


def _serve(cfg: DemoConfig, db: Path, sae: Any, model: Any, eval_path: Path, device: str) -> None:
    from featurescope.server import create_app
    from featurescope.server.run import ServerThread, allowed_hosts, serve

    mode = serve_mode(cfg.serve)
    if mode == "no":
        print(f"[demo] to browse it: featurescope serve {db} --sae {db.parent / 'sae'} --eval {eval_path}")
        return
    if mode == "forever":
        with contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises the Ctrl-C it shut down on
            serve(db, sae=sae, model=model, host=cfg.host, port=cfg.port, device=device, eval_path=eval_path,
                  announce=lambda url: print(f"[demo] explorer: {url}  (Ctrl-C stops it)", flush=True))
        print("[demo] explorer stopped", flush=True)
        return
    app = create_app(db, sae=sae, model=model, allowed_hosts=allowed_hosts(cfg.host), device=device,
                     eval_path=eval_path)
    with ServerThread(app, host=cfg.host, port=cfg.port) as server:
        check_server(server.url)
        print(f"[demo] explorer: {server.url}  answered; not kept running (no terminal or CI=true). "
              f"Browse it with: featurescope serve {db} --sae {db.parent / 'sae'} --eval {eval_path}", flush=True)


def run_demo(cfg: DemoConfig, *, progress: bool = True) -> int:
    """Run every step that is not done yet, then serve as `cfg.serve` says; returns the exit status."""
    from featurescope.analysis import AnalyzeConfig, analyze
    from featurescope.harvest import HarvestConfig, harvest
    from featurescope.models import default_device, load_model
    from featurescope.train import TrainConfig, train

    if cfg.scale not in SCALES:
        raise FeaturescopeError(f"unknown `scale` {cfg.scale!r}; choose one of {', '.join(SCALES)}",
                                settings=("scale",))
    if cfg.serve not in SERVE_MODES:
        raise FeaturescopeError(f"unknown `serve` {cfg.serve!r}; choose one of {', '.join(SERVE_MODES)}",
                                settings=("serve",))
    preset = SCALES[cfg.scale]
    scale = preset._replace(tokens=cfg.tokens or preset.tokens, features=cfg.features or preset.features,
                            k=cfg.k or preset.k)
    device = default_device() if cfg.device == "auto" else cfg.device
    out = Path(cfg.out)
    acts, sae_dir, db, eval_path = out / "acts", out / "sae", out / "features.db", out / EVAL_FILE
    steps = Steps()
    print(f"[demo] scale {cfg.scale}: {scale.tokens:,} tokens of {cfg.corpus}, {scale.features:,}-feature TopK SAE "
          f"(k {scale.k}) on {cfg.model} layer {cfg.layer}, in {out}/", flush=True)
    t0 = time.perf_counter()
    model = load_model(cfg.model, device=device, dtype=cfg.dtype)
    steps.done("load model", t0, model.name)
    t0 = time.perf_counter()
    h = harvest(HarvestConfig(out=str(acts), model=cfg.model, layer=cfg.layer, corpus=cfg.corpus, tokens=scale.tokens,
                              device=device), model=model, progress=progress)
    steps.done("harvest", t0, f"{h.rows:,} rows ({h.new_rows:,} new)")
    t0 = time.perf_counter()
    t = train(TrainConfig(activations=str(acts), out=str(sae_dir), arch="topk", features=scale.features, k=scale.k,
                          epochs=scale.epochs, batch_size=scale.batch_size, lr=scale.lr, device=device),
              progress=progress)
    steps.done("train", t0, f"{t.steps} steps, FVU {t.metrics.get('fvu', float('nan')):.3f}")
    t0 = time.perf_counter()
    a = analyze(AnalyzeConfig(sae=str(t.path), out=str(db), activations=str(acts), device=device), model=model,
                sae=t.sae, progress=progress)
    steps.done("analyse", t0, f"{a.alive:,} of {a.d_sae:,} features fire{' (resumed or reused)' if a.resumed else ''}")
    _probes(scale, db, t.sae, model, device, steps, progress)
    t0 = time.perf_counter()
    e = _evaluate(scale, sae_dir, t.sae, model, acts, eval_path)
    steps.done("evaluate", t0, f"held-out CE loss recovered {e.get('loss_recovered', float('nan')):.3f}, "
                               f"FVU {e.get('fvu', float('nan')):.3f}; out-of-domain CE loss recovered "
                               f"{e.get('ood_loss_recovered', float('nan')):.3f}")
    print(f"[demo] pipeline done in {steps.total:.0f} s", flush=True)
    _serve(cfg, db, t.sae, model, eval_path, device)
    return 0
