"""Evaluate SAEs: FVU, L0, dead fraction over activations, and CE loss recovered and KL inside the model.

By default every figure is measured on data the SAE never trained on: the store's (or .npy's) held-out
rows and the store's held-out contexts (`split="heldout"`), plus CE loss recovered on a second,
out-of-domain text set (`ood_corpus`, default `probe-texts`). Asked for `split="train"`, or given a source
without a held-out part, the figures are in-sample and the result says so (`in_sample`, `notes`).

FVU is around the mean: Σ‖x − x̂‖² / Σ‖x − mean(x)‖² (raw units); CE loss recovered and KL are defined in
`featurescope.evaluate.metrics`. `evaluate_many` measures several SAEs of one model and layer on the same rows
and contexts, loading the model once and running its clean forward pass once per batch for all of them.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

from featurescope.activations import ActivationSource, ActivationStore, open_source, store_path
from featurescope.config_fields import option
from featurescope.corpus import contexts, open_corpus
from featurescope.errors import FeaturescopeError
from featurescope.evaluate.metrics import CEMetrics, ReconstructionMetrics, ce_metrics_many, reconstruction_metrics
from featurescope.models import LanguageModel, default_device, load_model
from featurescope.sae import SAE


@dataclass
class EvalConfig:
    """Settings of `featurescope eval`."""

    sae: str = option("", "SAE folder (ours, SAELens or sparsify); the command takes several, or a glob, to compare")
    activations: str = option("", "activation store or .npy to measure FVU, L0 and dead %% on")
    layer: int | None = option(None, "the layer to read from a harvest of several layers (auto: the SAE's)")
    model: str = option("", "model for CE loss recovered (default: the store's or the SAE's model); with several "
                        "SAEs that record the same model under other names, the one they all read")
    corpus: str = option("", "corpus for CE contexts (default: the store's own contexts of --split)")
    split: str = option("heldout", "rows and contexts to measure on: heldout (never trained on) or train "
                        "(in-sample)", choices=("heldout", "train"))
    ood_corpus: str = option("probe-texts", "second, out-of-domain corpus for CE loss recovered ('' skips it)")
    rows: int = option(200_000, "activation rows sampled for FVU, L0 and dead %%")
    ce_contexts: int = option(64, "contexts for CE loss recovered, in-domain and out-of-domain each (0 skips it)")
    ood_contexts: int = option(0, "contexts of --ood-corpus (0: as many as --ce-contexts)")
    batch_size: int = option(8, "contexts per forward pass")
    seed: int = option(0, "seed for sampling rows")
    device: str = option("auto", "cpu, cuda or auto")
    model_dtype: str = option("auto", "the model's compute dtype: auto (fp32 on CPU, bf16 on GPU), float32, bfloat16 "
                              "(~2x faster on a CPU; CE loss recovered within 1e-4 of float32 on the demo SAE)")
    compare_out: str = option("", "with several SAEs: folder for compare.json, pareto.html and pareto.png "
                              "(default: eval-compare)")
    db: str = option("", "with several SAEs: also store the comparison in this feature database (the explorer's "
                     "SAEs page); with --suite, the suite's results (and the features AutoInterp explains)")


def _store_contexts(source: ActivationSource, n: int, split: str) -> Tensor | None:
    """Up to `n` contexts of `split` recorded in a store: the first held-out ones, or the last training ones
    (None for sources without token ids)."""
    if not isinstance(source, ActivationStore):
        return None
    heldout = split == "heldout"
    out: list[Tensor] = []
    got = 0
    for i in range(len(source.shards)) if heldout else reversed(range(len(source.shards))):
        data = source.read_shard(i)
        out.append(data.tokens.long()[data.heldout == heldout])
        got += len(out[-1])
        if got >= n:
            break
    if not heldout:
        out.reverse()
    ids = torch.cat(out)  # a store has at least one shard
    return ids[:n] if heldout else ids[-n:]


class EvalResult(NamedTuple):
    """All metrics of `evaluate`, and what they were measured on."""

    reconstruction: ReconstructionMetrics | None
    ce: CEMetrics | None
    ood_ce: CEMetrics | None = None
    """CE loss recovered on `ood_corpus` (None when skipped)."""
    split: str = "heldout"
    """Rows and store contexts measured on: "heldout" (never trained on) or "train" (in-sample)."""
    ce_source: str = ""
    """Where the in-domain CE contexts came from, in words."""
    ood_corpus: str = ""
    notes: tuple[str, ...] = ()
    """Caveats in words (in-sample figures, fewer contexts than asked for)."""

    @property
    def in_sample(self) -> bool:
        """True when the figures are measured on rows the SAE may have trained on."""
        return self.split != "heldout"

    def as_dict(self) -> dict[str, Any]:
        """Flat JSON record: every figure, plus `measured_on` naming what each one counts."""
        data: dict[str, Any] = {"split": self.split, "in_sample": self.in_sample}
        what: dict[str, str] = {}
        rows_kind = "training (in-sample)" if self.in_sample else "held-out"
        if self.reconstruction is not None:
            r = self.reconstruction
            data.update(r._asdict())
            what["fvu"] = f"fraction of variance unexplained (around the mean) on {r.rows} {rows_kind} rows"
            what["l0"] = f"mean active features per row on the same {r.rows} {rows_kind} rows"
            what["dead_fraction"] = f"features that never fired on the same {r.rows} {rows_kind} rows"
        if self.ce is not None:
            data.update(self.ce._asdict())
            what["loss_recovered"] = f"CE loss recovered over {self.ce.tokens} predicted tokens of {self.ce_source}"
            what["kl"] = ("mean KL(clean ‖ spliced) of the next-token distributions, in nats, over the same "
                          f"{self.ce.tokens} predicted tokens")
        if self.ood_ce is not None:
            data["ood_corpus"] = self.ood_corpus
            data.update({f"ood_{k}": v for k, v in self.ood_ce._asdict().items()})
            what["ood_loss_recovered"] = (f"CE loss recovered over {self.ood_ce.tokens} predicted tokens of "
                                          f"{self.ood_corpus} (out-of-domain text)")
        data["measured_on"] = what
        data["notes"] = list(self.notes)
        return data


def _check_fits(sae: SAE, source: ActivationSource) -> None:
    if source.d_model != sae.d_in:
        raise FeaturescopeError(f"the store has d_model={source.d_model} but the SAE reads d_in={sae.d_in}")
    if source.layer is not None and sae.cfg.layer is not None and source.layer != sae.cfg.layer:
        raise FeaturescopeError(f"the store is from layer {source.layer} but the SAE reads layer {sae.cfg.layer}")


def _open_split(path: str, split: str, notes: list[str], layer: int | None = None, default_layer: int | None = None
                ) -> tuple[ActivationSource, str]:
    """The source of `path` reading `split`, falling back to the training rows (with a note) when it has
    no held-out part; the split actually read. In a harvest of several layers, `layer` (else `default_layer`)
    picks the store."""
    if split not in ("heldout", "train"):
        raise FeaturescopeError(f"unknown split {split!r}; choose heldout or train")
    path = str(store_path(path, layer, default=default_layer))
    if split == "train":
        notes.append("asked for training rows (--split train): these figures are in-sample")
        return open_source(path, "train", layer), "train"
    whole = open_source(path, layer=layer)
    if whole.heldout_rows == 0:
        notes.append(f"{path} has no held-out part (harvested with --heldout 0, by store version 1, or a .npy "
                     "under 20 rows): measuring on training rows, so these figures are in-sample")
        return whole, "train"
    return open_source(path, "heldout", layer), "heldout"


def _corpus_ids(spec: str, model: LanguageModel, ctx_len: int, n: int, seed: int) -> Tensor:
    stream = contexts(open_corpus(spec, seed=seed), model.tokenizer, ctx_len=ctx_len, bos_id=model.bos_id)
    ids = torch.tensor(list(itertools.islice(stream, n)), dtype=torch.long)
    if len(ids) == 0:
        raise FeaturescopeError(f"no contexts of {ctx_len} tokens in corpus {spec} (empty corpus?)")
    return ids


def evaluate(cfg: EvalConfig, *, sae: SAE | None = None, model: LanguageModel | None = None,
             progress: bool = True) -> EvalResult:
    """Reconstruction metrics, CE loss recovered and KL (in-domain and out-of-domain), as configured."""
    if not cfg.sae and sae is None:
        raise FeaturescopeError("no SAE given")
    return evaluate_many(cfg, [sae if sae is not None else cfg.sae], model=model, progress=progress)[0]


def _load(saes: Sequence[SAE | str], device: str) -> list[SAE]:
    return [SAE.load(s, device=device) if isinstance(s, str) else s for s in saes]


def check_same_input(saes: Sequence[SAE], names: Sequence[str], *, models: bool = True) -> None:
    """One clear error unless every SAE reads the same activations: the same width, layer (SAELens' and
    sparsify's hook names read as layers) and, with `models`, model (each compared where recorded)."""
    fields = {"d_in": lambda s: s.d_in, "layer": lambda s: s.cfg.layer, "model": lambda s: s.cfg.model}
    for what, get in fields.items():
        known = [(name, get(sae)) for sae, name in zip(saes, names, strict=True) if get(sae) is not None]
        other = next(((name, v) for name, v in known[1:] if v != known[0][1]), None)
        if other is not None and (models or what != "model"):
            hint = " (give --model if these name the same model)" if what == "model" else ""
            raise FeaturescopeError(f"the SAEs do not read the same activations: {known[0][0]} has {what}="
                                    f"{known[0][1]} but {other[0]} has {what}={other[1]}{hint}")


def eval_device(cfg: EvalConfig) -> str:
    """The device `cfg` asks for (`auto`: the best one here)."""
    return default_device() if cfg.device == "auto" else cfg.device


def model_name(cfg: EvalConfig, saes: Sequence[SAE], source: ActivationSource | None = None) -> str | None:
    """The model the SAEs read: `cfg.model`, else the store's, else the first one an SAE records (None if none)."""
    return cfg.model or (source.model if source is not None else None) or next(
        (s.cfg.model for s in saes if s.cfg.model), None)


def eval_model(cfg: EvalConfig, name: str, sae: SAE, device: str, *, model: LanguageModel | None = None,
               label: str = "the SAE") -> LanguageModel:
    """`model`, else model `name` loaded with `cfg`'s dtype on `device`; an error unless `sae` fits its width."""
    model = model or load_model(name, device=device, dtype=cfg.model_dtype)
    if model.d_model != sae.d_in:
        raise FeaturescopeError(f"{model.name} has d_model={model.d_model} but {label} reads d_in={sae.d_in}")
    return model


def evaluate_many(cfg: EvalConfig, saes: Sequence[SAE | str], *, names: Sequence[str] | None = None,
                  model: LanguageModel | None = None, progress: bool = True) -> list[EvalResult]:
    """`evaluate` of each of `saes` (SAEs or folders) on the same rows and contexts: the rows are sampled once,
    the model is loaded once and its clean (and zero-ablated) forward pass runs once per batch for all of them.
    They must read the same activations (`check_same_input`; `names` label them in errors)."""
    if not saes:
        raise FeaturescopeError("no SAE given")
    if not cfg.activations and not cfg.corpus:
        raise FeaturescopeError("give `activations` (a store or .npy) and/or `corpus` for CE loss recovered",
                                settings=("activations", "corpus"))
    if cfg.ce_contexts < 0 or cfg.ood_contexts < 0:
        raise FeaturescopeError("the numbers of CE contexts (ce_contexts, ood_contexts) must be 0 or more")
    device = eval_device(cfg)
    loaded = _load(saes, device)
    names = list(names) if names is not None else [s if isinstance(s, str) else f"SAE {i}" for i, s in enumerate(saes)]
    check_same_input(loaded, names, models=not cfg.model)  # --model names the one model to use
    first = loaded[0]
    notes: list[str] = []
    sae_layer = next((s.cfg.layer for s in loaded if s.cfg.layer is not None), None)
    source, split = (_open_split(cfg.activations, cfg.split, notes, cfg.layer, sae_layer) if cfg.activations
                     else (None, cfg.split))
    recons: list[ReconstructionMetrics | None] = [None] * len(loaded)
    if source is not None:
        for sae in loaded:
            _check_fits(sae, source)
        rows = source.sample(cfg.rows, seed=cfg.seed)
        recons = [reconstruction_metrics(sae, rows) for sae in loaded]
    ces: list[CEMetrics | None] = [None] * len(loaded)
    oods: list[CEMetrics | None] = [None] * len(loaded)
    ce_source = ""
    if cfg.ce_contexts > 0:
        name = model_name(cfg, loaded, source)
        layer = next((s.cfg.layer for s in loaded if s.cfg.layer is not None),
                     source.layer if source is not None else None)
        if name and layer is not None:
            model = eval_model(cfg, name, first, device, model=model)
            model.check_layer(layer)
            ctx_len = int(source.manifest["ctx_len"]) if isinstance(source, ActivationStore) else 128
            ids, ce_source = _ce_contexts(cfg, model, source, split, ctx_len, notes)
            loaded = [sae.to(model.device) for sae in loaded]
            ces = list(ce_metrics_many(model, loaded, layer, ids, batch_size=cfg.batch_size, progress=progress))
            if cfg.ood_corpus:
                ood_ids = _corpus_ids(cfg.ood_corpus, model, ctx_len, cfg.ood_contexts or cfg.ce_contexts, cfg.seed + 1)
                oods = list(ce_metrics_many(model, loaded, layer, ood_ids, batch_size=cfg.batch_size,
                                            progress=progress))
        elif cfg.model or cfg.corpus:
            raise FeaturescopeError("CE loss recovered needs the SAE's layer (not recorded in its cfg or the store)")
    ood_name = cfg.ood_corpus if oods[0] is not None else ""
    return [EvalResult(r, c, o, split, ce_source, ood_name, tuple(notes)) for r, c, o in zip(recons, ces, oods,
                                                                                           strict=True)]


def _ce_contexts(cfg: EvalConfig, model: LanguageModel, source: ActivationSource | None, split: str, ctx_len: int,
                 notes: list[str]) -> tuple[Tensor, str]:
    """The in-domain CE contexts (the store's of `split`, else --corpus's) and where they came from, in words."""
    ids = None if cfg.corpus or source is None else _store_contexts(source, cfg.ce_contexts, split)
    if ids is None:
        corpus = cfg.corpus or "wiki-en"
        ids = _corpus_ids(corpus, model, ctx_len, cfg.ce_contexts, cfg.seed + 1)
        if isinstance(source, ActivationStore) and source.manifest.get("corpus") == corpus:
            notes.append(f"CE contexts from --corpus {corpus}, the store's own corpus: they may include "
                         "training text (omit --corpus to use the store's held-out contexts)")
        return ids, f"{len(ids)} contexts of corpus {corpus}"
    kind = "held-out" if split == "heldout" else "training (in-sample)"
    if len(ids) < cfg.ce_contexts:
        notes.append(f"the store holds only {len(ids)} {kind} contexts (asked for {cfg.ce_contexts})")
    return ids, f"{len(ids)} {kind} contexts of the store"
