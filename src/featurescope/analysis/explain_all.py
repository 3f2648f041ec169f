"""Explain the features of a feature database with an LLM, resumably, and store the scored labels in it.

Progress is kept in `DB.explain.json` (rewritten atomically every few features), so an interrupted run
continues where it stopped; the database itself is replaced only once, by a complete copy with the new
`llm` labels (`store.update_db`: copied, updated and renamed into place under the update lock).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from tqdm.auto import tqdm

from featurescope.analysis.explain import Explainer, LocalChat, OpenAIChat, explain_feature
from featurescope.atomic import read_json, write_json
from featurescope.errors import FeaturescopeError
from featurescope.featuredb.core import FeatureStore, has_column, update_db
from featurescope.models import LanguageModel, load_model

PROGRESS_FORMAT = "featurescope.explanations"
SAVE_EVERY = 10


@dataclass
class ExplainConfig:
    """Settings of `featurescope explain`."""

    db: str = field(default="", metadata={"help": "feature database written by `featurescope analyze`"})
    explainer: str = field(default="", metadata={
        "help": "OpenAI-compatible endpoint URL (e.g. http://localhost:8080/v1 for llama.cpp, "
                "http://localhost:11434/v1 for Ollama) or `local` for the analysed model itself"})
    explainer_model: str = field(default="", metadata={"help": "model name sent to the endpoint"})
    features: int | None = field(default=None, metadata={
        "help": "explain the first N features that fire, by id (auto: all of them)"})
    examples: int = field(default=10, metadata={"help": "top contexts shown to the explainer"})
    score_examples: int = field(default=10, metadata={
        "help": "held-out firing windows, and as many non-firing ones, to score each explanation on"})
    api_key_env: str = field(default="OPENAI_API_KEY", metadata={
        "help": "environment variable holding the endpoint's API key (unset: no key sent)"})
    seed: int = field(default=0, metadata={"help": "seed of the held-out windows' order"})
    device: str = field(default="auto", metadata={"help": "cpu, cuda or auto (for --explainer local)"})


class ExplainResult(NamedTuple):
    """What `explain_db` did."""

    path: Path
    explained: int
    """Features with an LLM label from this explainer after the run."""
    scored: int
    mean_score: float | None
    seconds: float


def make_explainer(spec: str, model_name: str = "", *, api_key_env: str = "OPENAI_API_KEY",
                   local_model: LanguageModel | None = None) -> Explainer:
    """`local` → the given (or loaded) model; a URL → an OpenAI-compatible endpoint."""
    if spec == "local":
        if local_model is None:
            local_model = load_model(model_name or "default")
        return LocalChat(local_model)
    return OpenAIChat(spec, model_name, api_key=os.environ.get(api_key_env) or None)


def _progress_path(db: Path) -> Path:
    return db.with_name(db.name + ".explain.json")


def _load_progress(path: Path, identity: Any, explainer: str) -> dict[str, Any]:
    if path.is_file():
        data = read_json(path)
        if (data.get("format") == PROGRESS_FORMAT and data.get("identity") == identity
                and data.get("explainer") == explainer):
            return data
    return {"format": PROGRESS_FORMAT, "identity": identity, "explainer": explainer, "labels": {}}


def _write_labels(db: Path, labels: dict[str, Any]) -> None:
    rows = [(int(f), "llm", v["text"], v["score"], json.dumps(v["details"]), v.get("score_lower"))
            for f, v in labels.items()]
    with update_db(db) as con:
        if has_column(con, "labels", "score_lower"):
            con.executemany("INSERT OR REPLACE INTO labels (feature, kind, text, score, details, score_lower) "
                            "VALUES (?, ?, ?, ?, ?, ?)", rows)
        else:  # a version 1 database: no lower bounds
            con.executemany("INSERT OR REPLACE INTO labels (feature, kind, text, score, details) VALUES "
                            "(?, ?, ?, ?, ?)", [r[:5] for r in rows])


def _llm_labels(store: FeatureStore, explainer: str) -> dict[int, float | None]:
    """Feature id → score of the `llm` labels made by `explainer`."""
    rows = store.con.execute("SELECT feature, score, details FROM labels WHERE kind = 'llm'")
    return {f: s for f, s, d in rows if json.loads(d).get("explainer") == explainer}


def explain_db(cfg: ExplainConfig, *, explainer: Explainer | None = None, local_model: LanguageModel | None = None,
               progress: bool = True) -> ExplainResult:
    """Give features of `cfg.db` an `llm` label scored by detection (resumes an interrupted run)."""
    start = time.perf_counter()
    db = Path(cfg.db)
    if cfg.features is not None and cfg.features <= 0:
        raise FeaturescopeError(f"`features` must be positive (got {cfg.features})", settings=("features",))
    with FeatureStore.open(db) as store:
        if explainer is None:
            if not cfg.explainer:
                raise FeaturescopeError("no explainer given (`explainer` URL or local)", settings=("explainer",))
            if cfg.explainer == "local" and local_model is None:
                local_model = load_model(store.meta["model"], device=cfg.device)
            explainer = make_explainer(cfg.explainer, cfg.explainer_model, api_key_env=cfg.api_key_env,
                                       local_model=local_model)
        alive = [r[0] for r in store.con.execute("SELECT id FROM features WHERE count > 0 ORDER BY id")]
        wanted = alive[: cfg.features] if cfg.features is not None else alive
        done_before = set(_llm_labels(store, explainer.name))
        path = _progress_path(db)
        state = _load_progress(path, store.meta.get("identity"), explainer.name)
        todo = [f for f in wanted if f not in done_before and str(f) not in state["labels"]]
        bar = tqdm(total=len(wanted), initial=len(wanted) - len(todo), unit="feature", desc="explain",
                   disable=not progress, dynamic_ncols=True)
        for n, f in enumerate(todo):
            exp = explain_feature(explainer, store.feature(f), examples=cfg.examples,
                                  score_examples=cfg.score_examples, seed=cfg.seed)
            state["labels"][str(f)] = exp._asdict()
            bar.update(1)
            if (n + 1) % SAVE_EVERY == 0:
                write_json(path, state)
        bar.close()
    if state["labels"]:
        write_json(path, state)
        _write_labels(db, state["labels"])
    path.unlink(missing_ok=True)
    with FeatureStore.open(db) as store:
        labelled = _llm_labels(store, explainer.name)
    scores = [s for s in labelled.values() if s is not None]
    return ExplainResult(db, len(labelled), len(scores), sum(scores) / len(scores) if scores else None,
                         time.perf_counter() - start)
