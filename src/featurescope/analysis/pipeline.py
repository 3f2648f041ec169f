"""`featurescope analyze`: stream a corpus (or an activation store) through an SAE and write the feature database.

Two passes over the same tokens: pass 1 gathers statistics, top contexts and non-firing windows; pass 2,
knowing each feature's max, gathers histograms and quantile samples. Then logit effects, neighbours, the
map and LLM-free labels are computed and the database is written (atomically); LLM explanations follow
if an explainer is given. Memory is O(d_sae × K), flat in the number of tokens. State is checkpointed to
`OUT.work/` every `checkpoint_seconds`, so a rerun of the same command resumes; the folder is removed
once the database is complete.
"""

from __future__ import annotations

import datetime
import hashlib
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from tqdm.auto import tqdm

from featurescope._version import __version__
from featurescope.activations import ActivationStore, open_source
from featurescope.analysis import state
from featurescope.analysis.accumulate import encode_batch, reconstruct
from featurescope.analysis.explain import Explainer
from featurescope.analysis.explain_all import ExplainConfig, explain_db
from featurescope.analysis.feature_map import METHODS, feature_map
from featurescope.analysis.images import ensure_image_analysis
from featurescope.analysis.logit_effects import logit_effects, norm_scale
from featurescope.analysis.neighbours import nearest_neighbours
from featurescope.analysis.source import ModelBatches, StoreBatches
from featurescope.analysis.write import Finished, referenced_contexts, token_ids_used, write_db
from featurescope.atomic import read_json
from featurescope.config_fields import option
from featurescope.errors import FeaturescopeError
from featurescope.featuredb.check import is_sqlite_file
from featurescope.featuredb.core import FORMAT, VERSION, FeatureStore
from featurescope.models import LanguageModel, load_model
from featurescope.resume import resume_or_refuse, settings
from featurescope.sae import SAE
from featurescope.tokentext import token_bytes

DEFAULT_TOKENS = 1_000_000
BATCH_FLOATS = 1 << 26
"""Default batch size: contexts × ctx_len × d_sae pre-activations at most this many floats (256 MiB)."""
MAX_BATCH_CONTEXTS = 64
VOLATILE = frozenset({"out", "device", "checkpoint_seconds", "overwrite", "explainer", "explainer_model",
                      "explain_features", "api_key_env"})
"""Fields that do not change the analysis: a rerun may differ in them and still resume."""


@dataclass
class AnalyzeConfig:
    """Settings of `featurescope analyze` (each field is also a `--flag`)."""

    sae: str = option("", "SAE folder (ours, SAELens or sparsify)")
    out: str = option("features.db", "feature database to write")
    model: str = option("", "model to load (empty: the SAE's, else the activation store's, else `default`)")
    layer: int | None = option(None, "block the SAE reads (auto: the SAE's layer)")
    corpus: str = option("wiki-en", "text to analyse when no --activations: wiki-en|fr|es, bible-<codes>, a "
                                    ".txt/.jsonl path, hf:NAME")
    activations: str = option("", "activation store (from `featurescope harvest`) to reuse instead of running the "
                                  "model")
    tokens: int | None = option(None, f"tokens to analyse (auto: all of --activations, else {DEFAULT_TOKENS:,})")
    ctx_len: int = option(128, "tokens per context when running the model (BOS first)")
    seed: int = option(0, "seed of the corpus order and of the sampling")
    batch_contexts: int | None = option(None, "contexts per batch (auto: as many as keep the SAE's pre-activations "
                                              "under 256 MiB, at most 64)")
    top_k: int = option(20, "top activating contexts kept per feature")
    intervals: int = option(10, "equal-width intervals of [0, max] to sample examples from")
    per_interval: int = option(5, "examples sampled per interval")
    negatives: int = option(10, "windows where the feature never fires kept per feature (for scoring labels)")
    window: int = option(32, "tokens shown around each example's position")
    histogram_bins: int = option(50, "bins of the activation histogram over (0, max]")
    logit_tokens: int = option(10, "top and bottom tokens of the logit effects kept per feature")
    neighbours: int = option(10, "nearest neighbours stored per feature")
    map: str = option("auto", "2-D map of the decoder directions: auto (umap if installed, else pca), umap, pca, none",
                      choices=METHODS)
    explainer: str = option("", "also explain features with an LLM: an OpenAI-compatible URL, or `local` for the "
                                "model itself (see `featurescope explain`)")
    explainer_model: str = option("", "model name sent to the explainer endpoint")
    explain_features: int | None = option(None, "explain only the first N features that fire")
    api_key_env: str = option("OPENAI_API_KEY", "environment variable holding the explainer's API key")
    device: str = option("auto", "cpu, cuda, cuda:N or auto")
    checkpoint_seconds: float = option(60.0, "checkpoint the running state every N seconds (0 = only between passes)")
    overwrite: bool = option(False, "replace an existing database or unfinished analysis of other settings")


class AnalyzeResult(NamedTuple):
    """What `analyze` did."""

    path: Path
    d_sae: int
    alive: int
    """Features that fired at least once."""
    tokens: int
    seconds: float
    """Time of the passes and the writing, summed over resumed runs."""
    resumed: bool
    explained: int


def _check(cfg: AnalyzeConfig, have_sae: bool) -> None:
    if not cfg.sae and not have_sae:
        raise FeaturescopeError("no SAE given")
    if not cfg.out:
        raise FeaturescopeError("no output database given (`out`)", settings=("out",))
    if cfg.tokens is not None and cfg.tokens <= 0:
        raise FeaturescopeError(f"`tokens` must be positive (got {cfg.tokens})", settings=("tokens",))
    if cfg.batch_contexts is not None and cfg.batch_contexts <= 0:
        raise FeaturescopeError(f"`batch_contexts` must be positive (got {cfg.batch_contexts})",
                                settings=("batch_contexts",))
    for name in ("top_k", "intervals", "per_interval", "negatives", "histogram_bins",
                 "logit_tokens", "neighbours"):
        if getattr(cfg, name) <= 0:
            raise FeaturescopeError(f"`{name}` must be positive (got {getattr(cfg, name)})", settings=(name,))
    if cfg.window < 2 or cfg.ctx_len < 2:
        raise FeaturescopeError("`window` and `ctx_len` must be at least 2", settings=("window", "ctx_len"))
    if cfg.map not in METHODS:
        raise FeaturescopeError(f"unknown `map` {cfg.map!r}; choose one of {', '.join(METHODS)}", settings=("map",))
    if Path(cfg.out).is_dir():
        raise FeaturescopeError(f"{cfg.out}: is a folder; `out` names the database file to write", settings=("out",))


def sae_fingerprint(sae: SAE) -> str:
    """SHA-256 of the SAE's tensors (to tell whether a checkpoint or database belongs to it)."""
    h = hashlib.sha256()
    for name, t in sorted(sae.tensors().items()):
        h.update(name.encode())
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def batch_contexts(given: int | None, ctx_len: int, d_sae: int) -> int:
    """`given`, else the most contexts (≤ MAX_BATCH_CONTEXTS) whose pre-activations fit in BATCH_FLOATS."""
    if given is not None:
        return given
    return max(1, min(MAX_BATCH_CONTEXTS, BATCH_FLOATS // (ctx_len * d_sae)))


class _Setup(NamedTuple):
    sae: SAE
    model: LanguageModel
    model_name: str
    layer: int
    source: StoreBatches | ModelBatches
    store: ActivationStore | None
    tokens: int
    ctx_len: int


def _resolve_layer(cfg: AnalyzeConfig, sae: SAE, store: ActivationStore | None) -> int:
    layer = cfg.layer if cfg.layer is not None else sae.cfg.layer
    if cfg.layer is not None and sae.cfg.layer is not None and cfg.layer != sae.cfg.layer:
        raise FeaturescopeError(f"`layer` {cfg.layer} but the SAE reads layer {sae.cfg.layer}", settings=("layer",))
    if layer is None and store is not None:
        layer = store.layer
    if layer is None:
        raise FeaturescopeError("the SAE does not record its layer; pass `layer`", settings=("layer",))
    if store is not None and store.layer is not None and int(store.layer) != layer:
        raise FeaturescopeError(f"the activation store is from layer {store.layer} but the SAE reads layer {layer}")
    return int(layer)


def _setup(cfg: AnalyzeConfig, model: LanguageModel | None, sae: SAE | None, device: str) -> _Setup:
    sae = (sae if sae is not None else SAE.load(cfg.sae, device=device)).to(device).eval()
    store = None
    if cfg.activations:
        src = open_source(cfg.activations, layer=cfg.layer, default_layer=sae.cfg.layer)  # several: the SAE's
        if not isinstance(src, ActivationStore):
            raise FeaturescopeError(f"{cfg.activations}: analysis needs an activation store with token ids "
                                    "(from `featurescope harvest`), not a bare .npy")
        store = src
        if store.d_model != sae.d_in:
            raise FeaturescopeError(f"the activation store has d_model={store.d_model} but the SAE reads "
                                    f"d_in={sae.d_in}")
    layer = _resolve_layer(cfg, sae, store)
    model_name = cfg.model or sae.cfg.model or (store.model if store else None) or "default"
    model = model if model is not None else load_model(model_name, device=device)
    if model.d_model != sae.d_in:
        raise FeaturescopeError(f"{model_name} has d_model={model.d_model} but the SAE reads d_in={sae.d_in}")
    model.check_layer(layer)
    if store is not None:
        tokens = min(cfg.tokens or store.n_rows, store.n_rows)
        ctx_len = int(store.manifest["ctx_len"])
        batch = batch_contexts(cfg.batch_contexts, ctx_len, sae.d_sae)
        return _Setup(sae, model, model_name, layer, StoreBatches(store, tokens, batch), store, tokens, ctx_len)
    tokens = cfg.tokens or DEFAULT_TOKENS
    batch = batch_contexts(cfg.batch_contexts, cfg.ctx_len, sae.d_sae)
    source = ModelBatches(model, layer, cfg.corpus, cfg.seed, cfg.ctx_len, tokens, batch)
    return _Setup(sae, model, model_name, layer, source, None, tokens, cfg.ctx_len)


def _identity(cfg: AnalyzeConfig, s: _Setup) -> dict[str, Any]:
    rec = settings(cfg, VOLATILE)
    rec.update(sae=str(Path(cfg.sae).resolve()) if cfg.sae else None, model=s.model_name, layer=s.layer,
               tokens=s.tokens, batch_contexts=s.source.batch_contexts, sae_sha256=sae_fingerprint(s.sae))
    if s.store is not None:  # the store read (a harvest of several layers: the layer's own)
        rec["activations"] = str(Path(s.store.path).resolve())
        rec["corpus"] = None
    return rec


def _existing(out: Path, identity: dict[str, Any], overwrite: bool) -> bool:
    """True if `out` already holds this analysis; raises if it holds something else (unless `overwrite`)."""
    if out.exists() and not is_sqlite_file(out):  # --overwrite replaces only a database, never a user's file
        raise FeaturescopeError(f"{out}: exists and is not a feature database; choose another `out`", settings=("out",))
    if not out.exists() or overwrite:
        return False
    try:
        with FeatureStore.open(out, full_check=True) as db:  # a damaged database is refused, never taken as done
            old = db.meta.get("identity", {})
    except FeaturescopeError as e:
        raise FeaturescopeError(f"{e}; choose another `out` or pass `overwrite`",
                                settings=(*e.settings, "out", "overwrite")) from None
    return resume_or_refuse(old, identity, VOLATILE, f"{out} holds an analysis with other settings")


def _work_dir(out: Path) -> Path:
    return out.with_name(out.name + ".work")


def _resume(work: Path, identity: dict[str, Any], overwrite: bool) -> dict[str, Any] | None:
    if overwrite and work.exists():
        shutil.rmtree(work)
    info = state.load_info(work)
    if info is not None:
        resume_or_refuse(info.get("identity", {}), identity, VOLATILE,
                         f"{work} holds an unfinished analysis with other settings",
                         advice="rerun it with its own settings, or pass `overwrite` to discard it")
    return info


def _run_pass(number: int, s: _Setup, acc: state.Accumulators, info: dict[str, Any], work: Path,
              cfg: AnalyzeConfig, progress: bool) -> None:
    t0 = last = time.perf_counter()
    bar = tqdm(total=s.tokens, initial=info["rows_done"], unit="tok", unit_scale=True, desc=f"analyze {number}/2",
               disable=not progress, dynamic_ncols=True)
    for batch in s.source.batches(info["next_context"], info["rows_done"]):
        codes = encode_batch(s.sae, batch)
        if number == 1:
            acc.stats.update(batch, codes, reconstruct(s.sae, codes, len(batch.acts)))
            acc.top.update(batch.contexts, codes)
            acc.negatives.update(batch.contexts, batch.length, codes)
        else:
            assert acc.hist is not None and acc.quantiles is not None
            acc.hist.update(codes)
            acc.quantiles.update(batch.contexts, codes)
        info["rows_done"] += len(batch.acts)
        info["next_context"] = int(batch.contexts[-1]) + 1
        bar.update(len(batch.acts))
        now = time.perf_counter()
        if cfg.checkpoint_seconds > 0 and now - last >= cfg.checkpoint_seconds:
            info["seconds"] += now - t0
            t0 = last = now
            state.save(work, info, acc)
    bar.close()
    info["seconds"] += time.perf_counter() - t0


def _sae_metrics(path: str) -> dict[str, Any] | None:
    """The metrics in the SAE folder's training_summary.json, if there is one."""
    from featurescope.sae.io import find_sae_folder

    if not path:
        return None
    try:
        summary = find_sae_folder(Path(path)) / "training_summary.json"
        return read_json(summary).get("metrics") if summary.is_file() else None
    except (FeaturescopeError, AttributeError):
        return None


def _finish(cfg: AnalyzeConfig, s: _Setup, acc: state.Accumulators, info: dict[str, Any], identity: dict[str, Any],
            out: Path, progress: bool) -> None:
    t0 = time.perf_counter()
    steps = tqdm(total=5, desc="finish", disable=not progress, dynamic_ncols=True, leave=False)
    ids = referenced_contexts(acc)
    tokens = s.source.fetch_tokens(ids)
    steps.update(1)
    w_dec = (s.sae.W_dec.detach().float() / s.sae.input_scale.float()).cpu()
    unembed = s.model.unembed
    logits = logit_effects(w_dec.to(unembed.device), unembed, norm_scale(s.model.final_norm, s.model.d_model),
                           cfg.logit_tokens)
    steps.update(1)
    nb = nearest_neighbours(w_dec.to(s.sae.W_dec.device), cfg.neighbours)
    steps.update(1)
    fmap = feature_map(w_dec, cfg.map, cfg.seed)
    steps.update(1)
    used = token_ids_used(acc, tokens, logits)
    texts = dict(zip(used, s.model.tokenizer.batch_decode([[i] for i in used]), strict=True))
    raw = token_bytes(s.model.tokenizer, used, texts)
    quality = acc.stats.quality()
    meta = {
        "format": FORMAT, "version": VERSION, "featurescope_version": __version__,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "sae": identity["sae"], "sae_architecture": s.sae.cfg.architecture, "sae_k": s.sae.cfg.k,
        "d_sae": s.sae.d_sae, "d_in": s.sae.d_in, "model": s.model_name, "model_source": s.model.source,
        "model_family": s.model.family, "layer": s.layer,
        "corpus": s.store.manifest.get("corpus") if s.store else cfg.corpus,
        "activations": identity.get("activations") or None, "tokens": acc.stats.rows,
        "contexts_analysed": info["contexts"],
        "ctx_len": s.ctx_len, "top_k": cfg.top_k, "intervals": cfg.intervals, "per_interval": cfg.per_interval,
        "negatives": cfg.negatives, "window": acc.window, "histogram_bins": cfg.histogram_bins,
        "logit_tokens": cfg.logit_tokens, "neighbours": cfg.neighbours,
        "map_method": fmap.method if fmap else None,
        "logit_effects": "W_U · (g ⊙ c(unit W_dec,i)), g = final norm gain",
        "quality": {**quality, "alive": int((acc.stats.count > 0).sum())}, "sae_metrics": _sae_metrics(cfg.sae),
        "identity": identity,
    }
    write_db(out, Finished(acc, ids, tokens, texts, logits, nb, fmap, w_dec, raw), meta, passes_seconds=info["seconds"],
             started=t0)
    steps.update(1)
    steps.close()


def analyze(cfg: AnalyzeConfig, *, model: LanguageModel | None = None, sae: SAE | None = None,
            explainer: Explainer | None = None, progress: bool = True) -> AnalyzeResult:
    """Analyse every feature of `cfg.sae` (or of `sae`) and write `cfg.out`; resumes an interrupted run of the same
    settings. `model` and `sae` may be given already loaded; the database records `cfg.sae` as the SAE's path."""
    _check(cfg, sae is not None)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    s = _setup(cfg, model, sae, device)
    identity = _identity(cfg, s)
    out, work = Path(cfg.out), _work_dir(Path(cfg.out))
    resumed = _existing(out, identity, cfg.overwrite)
    if not resumed:
        info = _resume(work, identity, cfg.overwrite)
        resumed = info is not None
        window = min(cfg.window, s.ctx_len)
        acc = state.Accumulators(
            s.sae.d_sae, s.sae.d_in, int(s.model.unembed.shape[0]), top_k=cfg.top_k, intervals=cfg.intervals,
            per_interval=cfg.per_interval, negatives=cfg.negatives, window=window, bins=cfg.histogram_bins,
            seed=cfg.seed, device=torch.device(device))
        if info is None:
            info = {"identity": identity, "pass": 1, "next_context": 0, "rows_done": 0, "seconds": 0.0}
        else:
            acc.load(state.load_tensors(work, info))
        if info["pass"] == 1:
            _run_pass(1, s, acc, info, work, cfg, progress)
            if info["rows_done"] == 0:
                raise FeaturescopeError("no tokens to analyse")
            info.update({"contexts": info["next_context"], "pass1_rows": info["rows_done"], "pass": 2,
                         "next_context": 0, "rows_done": 0})
            acc.start_pass2()
            state.save(work, info, acc)
        if info["pass"] == 2:
            _run_pass(2, s, acc, info, work, cfg, progress)
            if info["rows_done"] != info["pass1_rows"]:
                raise FeaturescopeError(f"the second pass read {info['rows_done']} tokens, the first "
                                        f"{info['pass1_rows']}: the activations changed during the analysis")
            info["pass"] = 3
            state.save(work, info, acc)
        _finish(cfg, s, acc, info, identity, out, progress)
    if s.store is not None:  # an image store: top images, text-only contexts, modality (analysis/images.py)
        ensure_image_analysis(out, s.store, s.sae, s.model.tokenizer, device=device, progress=progress)
    explained = 0
    if cfg.explainer or explainer is not None:
        result = explain_db(ExplainConfig(db=str(out), explainer=cfg.explainer, explainer_model=cfg.explainer_model,
                                          features=cfg.explain_features, api_key_env=cfg.api_key_env, seed=cfg.seed,
                                          device=device),
                            explainer=explainer, local_model=s.model, progress=progress)
        explained = result.explained
    if work.exists():
        shutil.rmtree(work)
    with FeatureStore.open(out) as db:
        meta = db.meta
        alive = int(db.con.execute("SELECT COUNT(*) FROM features WHERE count > 0").fetchone()[0])
    return AnalyzeResult(out, int(meta["d_sae"]), alive, int(meta["tokens"]), float(meta["seconds"]), resumed,
                         explained)
