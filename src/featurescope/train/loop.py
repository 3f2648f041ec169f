"""Train a sparse autoencoder on an activation source, with atomic checkpoints and exact resume.

`train(TrainConfig(activations=..., out=...))` scales inputs so that E‖x‖ = √d_in (the scale is stored in
the SAE), trains with Adam (per-architecture betas) and a learning rate that decays linearly to 0 over the
last `lr_decay` of the steps, checkpoints to `OUT/checkpoint/` and writes the SAE (`cfg.json` +
`sae.safetensors`) and `training_summary.json` to OUT. Rerunning the same command continues from the last
checkpoint and ends with the same weights as an uninterrupted run: batch b of epoch e is always the same
rows (`ActivationSource.batches(..., start_batch=b)`), and every piece of state is in the checkpoint.
See docs/training.md.
"""

from __future__ import annotations

import functools
import math
import time
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor
from tqdm.auto import tqdm

from featurescope.activations import ActivationSource, open_source
from featurescope.atomic import read_json, write_json
from featurescope.distributed.world import pick_device
from featurescope.errors import FeaturescopeError
from featurescope.prefetch import prefetch
from featurescope.resume import resume_or_refuse, settings
from featurescope.sae import SAE, SAEConfig, architecture_class
from featurescope.sae.parallel import LOCAL, Parallel
from featurescope.sae.resample import resample_dead
from featurescope.train import checkpoint
from featurescope.train.config import VOLATILE, Plan, TrainConfig
from featurescope.train.layout import Layout
from featurescope.train.setup import (
    EVAL_ROWS,
    GEOMEDIAN_SAMPLE,
    SCALE_SAMPLE,
    HeadSource,
    arch_settings,
    check_config,
    check_ranks,
    default_dead_tokens,
    default_features,
    input_scale,
    param_groups,
)

__all__ = ["Plan", "TrainConfig", "TrainResult", "plan", "train"]

CONFIG_FILE = "train_config.json"
SUMMARY_FILE = "training_summary.json"
CHECKPOINT_DIR = "checkpoint"
OWNED = ("cfg.json", "sae.safetensors", CONFIG_FILE, SUMMARY_FILE)


class TrainResult(NamedTuple):
    """What `train` returns."""

    path: Path
    sae: SAE
    steps: int
    seconds: float
    """Wall time of training, summed over resumed runs."""
    metrics: dict[str, float]


def plan(cfg: TrainConfig, source: ActivationSource) -> Plan:
    """Resolve `cfg`'s defaults for `source` (and check what depends on the data)."""
    d_in = source.d_model
    arch = architecture_class(cfg.arch)
    features = cfg.features or default_features(d_in)
    k_default, k_aux_default = arch.default_k(features), arch.default_k_aux(d_in)
    k = None if k_default is None else cfg.k or k_default
    if k is not None and not 0 < k <= features:
        raise FeaturescopeError(f"`k` must be in 1..features ({features}), got {k}", settings=("k",))
    batches = source.num_batches(cfg.batch_size)
    total = batches * cfg.epochs
    lam = arch.default_sparsity_coefficient
    if lam is not None and cfg.sparsity_coefficient is not None:
        lam = cfg.sparsity_coefficient
    return Plan(
        features=features, k=k, lr=cfg.lr or arch.default_lr(features), sparsity_coefficient=lam,
        k_aux=None if k_aux_default is None else cfg.k_aux or k_aux_default,
        dead_tokens=cfg.dead_tokens or default_dead_tokens(total * cfg.batch_size, cfg.batch_size),
        batches_per_epoch=batches, total_steps=total,
    )


def record_settings(cfg: TrainConfig, source: ActivationSource, p: Plan) -> dict[str, Any]:
    """The configuration as compared between reruns: resolved defaults, no volatile fields, the data's shape."""
    rec = settings(cfg, VOLATILE)
    if rec.get("layer") is None:
        rec.pop("layer", None)  # a one-layer store's runs record what they did before `layer` existed
    if rec["activations"]:
        rec["activations"] = str(Path(rec["activations"]).resolve())
    rec.update(features=p.features, k=p.k, lr=p.lr, sparsity_coefficient=p.sparsity_coefficient, k_aux=p.k_aux,
               dead_tokens=p.dead_tokens)
    rec["data"] = {"rows": source.n_rows, "d_in": source.d_model}
    return rec


def check_out(cfg: TrainConfig, record: dict[str, Any]) -> Path:
    """OUT, if this run may write there: no clashing run and no foreign files (reads only)."""
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise FeaturescopeError(f"{out}: exists and is not a folder")
    if not out.is_dir():
        return out
    if cfg.overwrite:
        ours = {*OWNED, CHECKPOINT_DIR}
        if any(f.name not in ours for f in out.iterdir()):
            raise FeaturescopeError(f"{out}: folder is not empty and holds no training run; use a new `out`",
                                    settings=("out",))
        return out
    if (out / CONFIG_FILE).is_file():
        resume_or_refuse(read_json(out / CONFIG_FILE), record, VOLATILE,
                         f"{out} holds a training run with a different configuration",
                         advice="use a new `out`, or `overwrite` to discard it")
    elif any(out.iterdir()):
        raise FeaturescopeError(f"{out}: folder is not empty and holds no training run; use a new `out` or `overwrite`",
                                settings=("out", "overwrite"))
    return out


def prepare_out(cfg: TrainConfig, record: dict[str, Any]) -> Path:
    """`check_out`, then clear a run that `--overwrite` discards and record this run's configuration."""
    out = check_out(cfg, record)
    if cfg.overwrite and out.is_dir():
        for name in OWNED:
            (out / name).unlink(missing_ok=True)
        ckpt = out / CHECKPOINT_DIR
        if ckpt.is_dir():
            for f in ckpt.iterdir():
                f.unlink()
            ckpt.rmdir()
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / CONFIG_FILE, record)
    return out


class Meter:
    """Running sums of the logged quantities since the last display."""

    def __init__(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.n = 0

    def add(self, **values: Tensor) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums[k] + v if k in self.sums else v.detach().clone()
        self.n += 1

    def take(self, par: Parallel = LOCAL) -> dict[str, float]:
        """Means since the last call, over the global batch (loss and terms are row shares, L0 an entry share)."""
        sums = {k: par.all_sum(v) if k == "l0" else v if k == "fvu" else par.rows_sum(v)
                for k, v in self.sums.items()}
        out = {k: float(v) / max(self.n, 1) for k, v in sums.items()}
        self.sums, self.n = {}, 0
        return out


class Run:
    """The mutable state of one training run and its step."""

    def __init__(self, cfg: TrainConfig, source: ActivationSource, out: Path, record: dict[str, Any],
                 p: Plan, layout: Layout) -> None:
        self.cfg, self.source, self.out, self.record = cfg, source, out, record
        self.layout = lay = layout
        d_in = source.d_model
        self.device = lay.device
        self.lr, self.dead_tokens = p.lr, p.dead_tokens
        self.batches_per_epoch, self.total_steps = p.batches_per_epoch, p.total_steps
        self.ckpt_dir = out / CHECKPOINT_DIR
        arch = architecture_class(cfg.arch)
        self.sae_cfg = SAEConfig(
            d_in=d_in, d_sae=p.features, architecture=cfg.arch, k=p.k, apply_b_dec_to_input=arch.subtracts_b_dec,
            model=source.model, layer=source.layer, extra=arch_settings(cfg, p),
        )
        state = lay.load_checkpoint(self.ckpt_dir, self.sae_cfg)
        if state is not None and state.info.get("config") != record:
            raise FeaturescopeError(f"{self.ckpt_dir}: checkpoint of another configuration; use `overwrite`",
                                    settings=("overwrite",))
        if state is None:
            sae = lay.create_sae(self.sae_cfg, cfg.seed)
        else:
            sae = lay.sae_from_tensors(self.sae_cfg, state.group("sae"))
        self.sae = sae.to(self.device)
        self.par = sae.parallel
        self.optimizer = torch.optim.Adam(param_groups(sae, cfg), lr=self.lr, betas=arch.adam_betas, eps=arch.adam_eps)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.since_fired = torch.zeros(sae.d_sae, dtype=torch.int64, device=self.device)
        self.step, self.tokens, self.elapsed = 0, 0, 0.0
        self.resumed = state is not None
        if state is None:
            sample = source.sample(min(source.n_rows, SCALE_SAMPLE), seed=cfg.seed)
            sae.input_scale.fill_(input_scale(sample) if cfg.normalize else 1.0)
            sae.init_from_data(sae.normalize(sample[:GEOMEDIAN_SAMPLE].to(self.device)))
            lay.sync_init(sae)
        else:
            sae.load_training_state(state.group("sae_train"))
            names = {id(p): n for n, p in sae.named_parameters()}
            checkpoint.load_optimizer_tensors(self.optimizer, names, state.group("adam"))
            trainer_state = state.group("trainer")
            self.since_fired.copy_(trainer_state["since_fired"].to(self.device))
            self.generator.set_state(trainer_state["rng"])
            self.step, self.tokens = state.step, int(state.info["tokens"])
            self.elapsed = float(state.info["seconds"])
        self.resample_every = max(1, math.ceil(self.dead_tokens / cfg.batch_size))
        self.do_resample = cfg.resample and arch.resamples_dead
        self.autocast = torch.autocast(self.device.type, dtype=torch.bfloat16,
                                       enabled=cfg.autocast and self.device.type == "cuda")
        self.meter = Meter()

    def save_checkpoint(self, seconds: float) -> None:
        info = {"step": self.step, "tokens": self.tokens, "seconds": seconds, "total_steps": self.total_steps,
                "config": self.record, "sae_config": self.sae_cfg.to_json()}
        self.layout.save_checkpoint(self.ckpt_dir, info, self.sae, self.optimizer,
                                    {"since_fired": self.since_fired, "rng": self.generator.get_state()})

    def train_step(self, batch: Tensor) -> None:
        """One optimiser step on a raw global batch (this process trains on `layout.local_batch` of it)."""
        sae, cfg, lay, par = self.sae, self.cfg, self.layout, self.par
        x = sae.normalize(lay.local_batch(batch).to(self.device, non_blocking=True))
        rows = par.rows(x.shape[0])
        progress = self.step / self.total_steps
        with self.autocast:
            out = sae.training_loss(x, progress, dead=self.since_fired >= self.dead_tokens)
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        lay.sync_grads(sae)
        sae.before_step()
        if cfg.grad_clip > 0:
            lay.clip(sae, cfg.grad_clip)
        decay = min(1.0, (1.0 - progress) / cfg.lr_decay) if cfg.lr_decay > 0 else 1.0
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr * decay * group["lr_scale"]
        self.optimizer.step()
        sae.after_step()
        with torch.no_grad():
            self.since_fired += rows
            self.since_fired[lay.fired(out.fired)] = 0
            x_hat = out.x_hat.detach().float()
            if self.do_resample and (self.step + 1) % self.resample_every == 0 and progress < 0.5:
                dead = self.since_fired >= self.dead_tokens
                if resample_dead(sae, self.optimizer, dead, x, x_hat, self.generator):
                    self.since_fired[dead] = 0
            if par.rows_split:
                variance = par.batch_variance(x) * rows
                fvu = par.rows_sum((x_hat - x).pow(2).sum()) / variance.clamp_min(1e-12)
            else:
                fvu = (x_hat - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum().clamp_min(1e-12)
            self.meter.add(loss=out.loss.detach(), l0=out.l0, fvu=fvu)
        self.step += 1
        self.tokens += rows

    def dead_fraction(self) -> float:
        """Features that did not fire over the dead-feature window (or the whole run if shorter)."""
        dead = (self.since_fired >= min(self.dead_tokens, self.tokens)).float()
        return float(self.par.features_mean(dead))

    def run(self, progress: bool) -> float:
        """Train to the end; returns the wall time of training summed over resumes."""
        cfg = self.cfg
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not (progress and self.layout.is_main),
                   unit="step", desc="train", dynamic_ncols=True)
        t0 = last_ckpt = time.perf_counter()
        self.sae.train()
        while self.step < self.total_steps:
            epoch, start = divmod(self.step, self.batches_per_epoch)
            batches = prefetch(self.source.batches(cfg.batch_size, seed=cfg.seed, epoch=epoch, start_batch=start,
                                                   device=self.device), device=self.device)
            for batch in batches:
                self.train_step(batch)
                bar.update(1)
                if self.step % max(cfg.log_every, 1) == 0 or self.step == self.total_steps:
                    shown = self.meter.take(self.par)
                    bar.set_postfix({"loss": f"{shown['loss']:.4g}", "L0": f"{shown['l0']:.1f}",
                                     "FVU": f"{shown['fvu']:.3f}", "dead": f"{100 * self.dead_fraction():.1f}%"})
                now = time.perf_counter()
                timed = cfg.checkpoint_seconds > 0 and now - last_ckpt >= cfg.checkpoint_seconds
                if self.layout.size > 1 and cfg.checkpoint_seconds > 0:
                    timed = self.layout.agree(timed)  # the main process's clock decides
                if self.step < self.total_steps and (
                    (cfg.checkpoint_every > 0 and self.step % cfg.checkpoint_every == 0) or timed
                ):
                    self.save_checkpoint(self.elapsed + now - t0)
                    last_ckpt = now
                if self.step >= self.total_steps:
                    break
        bar.close()
        seconds = self.elapsed + time.perf_counter() - t0
        if self.layout.agree(seconds != self.elapsed or not self.resumed):
            self.save_checkpoint(seconds)
        return seconds


def _layout(cfg: TrainConfig, features: int) -> Layout:
    """One process, or this rank's part of the process group that torchrun started."""
    from featurescope.distributed.world import launched

    if not launched():
        return Layout(pick_device(cfg.device))
    from featurescope.distributed.world import join, requested_size
    from featurescope.train.data_parallel import DataParallelLayout
    from featurescope.train.feature_shard import FeatureShardLayout

    check_ranks(cfg, features, requested_size())
    world = join(cfg.device, cfg.dist_backend)
    return FeatureShardLayout(world, features) if cfg.shard_features else DataParallelLayout(world)


def _spawned(cfg: TrainConfig, progress: bool) -> TrainResult:
    """Run `cfg` on `cfg.distributed` local ranks (a torchrun subprocess) and read back its outputs."""
    from featurescope.distributed.launch import spawn
    from featurescope.sae import SAE

    spawn("train", cfg, cfg.distributed, progress=progress)
    out = Path(cfg.out)
    summary = read_json(out / SUMMARY_FILE)
    return TrainResult(out, SAE.load(out), int(summary["steps"]), float(summary["seconds"]), summary["metrics"])


def train(cfg: TrainConfig, *, source: ActivationSource | None = None, progress: bool = True) -> TrainResult:
    """Train an SAE as `cfg` says (on `source` if given, else on `cfg.activations`); resumes if possible.

    Under torchrun (or in any initialised process group of several ranks) every rank calls this with the
    same arguments; `cfg.distributed` > 1 starts that many local ranks itself. In a feature-sharded run,
    `TrainResult.sae` is this rank's shard (`SAE.load(result.path)` reads the whole SAE).
    """
    check_config(cfg, have_source=source is not None)
    from featurescope.distributed.world import launched

    spawn = cfg.distributed > 1 and not launched()
    if spawn and source is not None:
        raise FeaturescopeError("`distributed` starts new processes: give `activations` (a path), not a source",
                                settings=("distributed", "activations"))
    source = training_source(cfg, source)
    p = plan(cfg, source)
    record = record_settings(cfg, source, p)
    if spawn:  # the ranks would all fail on what can be checked here
        check_ranks(cfg, p.features, cfg.distributed)
        pick_device(cfg.device)
        check_out(cfg, record)
        return _spawned(cfg, progress)
    lay = _layout(cfg, p.features)
    try:
        lay.on_main(functools.partial(prepare_out, cfg, record))
        lay.barrier()
        run = Run(cfg, source, Path(cfg.out), record, p, lay)
        finished_before = run.resumed and run.step >= run.total_steps
        result = finish(run, run.elapsed if finished_before else run.run(progress))
    finally:
        lay.close()
    return result


def training_source(cfg: TrainConfig, source: ActivationSource | None) -> ActivationSource:
    """The rows `cfg` trains on: `source`, else the training split of `cfg.activations`; `max_rows` applied."""
    if source is None:
        source = open_source(cfg.activations, split="train", layer=cfg.layer)  # never the held-out rows
    if cfg.max_rows is not None:
        source = HeadSource(source, cfg.max_rows)
    if source.n_rows == 0 or source.d_model == 0:
        raise FeaturescopeError("the activation source is empty")
    return source


def finish(run: Run, seconds: float) -> TrainResult:
    """Evaluate the trained `run`, write its SAE and `training_summary.json` (`seconds`: its training time)."""
    cfg, lay, source, out = run.cfg, run.layout, run.source, run.out
    sae = run.sae.eval()
    metrics = lay.evaluate(sae, source, cfg.seed + 1)
    metrics["dead_fraction"] = run.dead_fraction()
    window = min(run.dead_tokens, run.tokens)
    measured_on = {
        "fvu": f"a sample of up to {EVAL_ROWS} training rows (in-sample; `featurescope eval` measures held out)",
        "dead_fraction": f"features that did not fire over the last {window} training tokens (the dead window)",
    }
    lay.save_sae(sae, out, run.sae_cfg)
    if lay.is_main:
        write_json(out / SUMMARY_FILE, {
            "format": "featurescope.training-summary", "version": 1, "steps": run.step, "tokens": run.tokens,
            "seconds": seconds, "tokens_per_second": run.tokens / seconds if seconds > 0 else None,
            "metrics": metrics, "measured_on": measured_on, "input_scale": float(sae.input_scale), "lr": run.lr,
            "dead_tokens": run.dead_tokens, "config": run.record, "sae": run.sae_cfg.to_json(),
            "world_size": lay.size, "layout": type(lay).__name__,
        })
    lay.barrier()
    return TrainResult(out, sae, run.step, seconds, metrics)
