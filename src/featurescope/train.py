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

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor
from tqdm.auto import tqdm

from featurescope import checkpoint
from featurescope.activations import ActivationSource, open_source
from featurescope.atomic import read_json, write_json
from featurescope.errors import FeaturescopeError
from featurescope.sae import SAE, SAEConfig
from featurescope.sae.config import ARCHITECTURES
from featurescope.sae.resample import resample_dead
from featurescope.train_setup import (
    ADAM,
    GEOMEDIAN_SAMPLE,
    SCALE_SAMPLE,
    SPARSITY,
    HeadSource,
    arch_settings,
    check_config,
    default_dead_tokens,
    default_features,
    default_k,
    default_lr,
    evaluate_sample,
    input_scale,
    param_groups,
    pick_device,
)

CONFIG_FILE = "train_config.json"
SUMMARY_FILE = "training_summary.json"
CHECKPOINT_DIR = "checkpoint"
OWNED = ("cfg.json", "sae.safetensors", CONFIG_FILE, SUMMARY_FILE)
VOLATILE = ("out", "device", "log_every", "checkpoint_every", "checkpoint_seconds", "overwrite")
"""Fields that do not change the result: a rerun may differ in them and still resume."""


def _opt(default: Any, help_text: str, **meta: Any) -> Any:
    """A dataclass field with a default and `--help` text (and optional `choices`)."""
    return field(default=default, metadata={"help": help_text, **meta})


@dataclass
class TrainConfig:
    """Settings of one training run (each field is also a `featurescope train --flag`)."""

    activations: str = _opt("", "activation store folder or .npy file [N, d] (required)")
    out: str = _opt("", "output folder for the SAE, its checkpoints and training summary (required)")
    arch: str = _opt("topk", "SAE architecture", choices=ARCHITECTURES)
    features: int | None = _opt(None, "number of SAE features (default 8 × d_in)")
    k: int | None = _opt(None, "topk/batchtopk: active features per token (default 32, at most features/4)")
    batch_size: int = _opt(4096, "activation rows per optimiser step")
    epochs: int = _opt(1, "passes over the activations")
    lr: float | None = _opt(None, "Adam learning rate (default: relu 3e-3; others 2.8e-3·√(16384/features), "
                                  "at most 8e-3)")
    sparsity_coefficient: float | None = _opt(None, "λ: relu's L1·‖W_dec‖ coefficient (default 5), "
                                                    "jumprelu's L0 coefficient (default 1)")
    warmup: float = _opt(0.05, "relu/jumprelu: fraction of training over which λ rises from 0")
    lr_decay: float = _opt(0.2, "final fraction of training over which the lr decays linearly to 0")
    auxk_coefficient: float = _opt(1 / 32, "topk/batchtopk: weight of the AuxK loss (0 = off)")
    k_aux: int | None = _opt(None, "topk/batchtopk: dead latents used by AuxK (default d_in / 2)")
    bandwidth: float = _opt(0.05, "jumprelu: bandwidth ε of the straight-through estimator")
    init_threshold: float = _opt(0.1, "jumprelu: initial threshold θ")
    threshold_lr_scale: float = _opt(10.0, "jumprelu: the thresholds' lr (of log θ) relative to --lr")
    resample: bool = _opt(True, "relu/jumprelu: resample dead features")
    dead_tokens: int | None = _opt(None, "a feature is dead after this many tokens without firing "
                                         "(default 10%% of the run's tokens, at most 10M)")
    select_dtype: str = _opt("bfloat16", "topk/batchtopk: dtype of the selection matmul",
                             choices=("bfloat16", "float32"))
    grad_clip: float = _opt(1.0, "clip the gradient norm to this (0 = off)")
    normalize: bool = _opt(True, "scale inputs by one constant so that E‖x‖ = √d_in")
    max_rows: int | None = _opt(None, "train on the first N rows only")
    seed: int = _opt(0, "seed of the initialisation and of the data order")
    device: str = _opt("auto", "cpu, cuda, cuda:N or auto (cuda if available)")
    autocast: bool = _opt(False, "bfloat16 autocast (CUDA only)")
    checkpoint_every: int = _opt(1000, "checkpoint every N steps (0 = off)")
    checkpoint_seconds: float = _opt(300.0, "also checkpoint every N seconds (0 = off)")
    log_every: int = _opt(10, "update the progress bar every N steps")
    overwrite: bool = _opt(False, "discard an existing run in --out")


class TrainResult(NamedTuple):
    """What `train` returns."""

    path: Path
    sae: SAE
    steps: int
    seconds: float
    """Wall time of training, summed over resumed runs."""
    metrics: dict[str, float]


class Plan(NamedTuple):
    """The settings of a run with every default resolved against the data."""

    features: int
    k: int | None
    lr: float
    sparsity_coefficient: float | None
    k_aux: int | None
    dead_tokens: int
    batches_per_epoch: int
    total_steps: int


def plan(cfg: TrainConfig, source: ActivationSource) -> Plan:
    """Resolve `cfg`'s defaults for `source` (and check what depends on the data)."""
    d_in = source.d_model
    features = cfg.features or default_features(d_in)
    topk = cfg.arch in ("topk", "batchtopk")
    k = (cfg.k or default_k(cfg.arch, features)) if topk else None
    if k is not None and not 0 < k <= features:
        raise FeaturescopeError(f"--k must be in 1..features ({features}), got {k}")
    batches = source.num_batches(cfg.batch_size)
    total = batches * cfg.epochs
    lam = None if topk else (cfg.sparsity_coefficient if cfg.sparsity_coefficient is not None
                             else SPARSITY[cfg.arch])
    return Plan(
        features=features, k=k, lr=cfg.lr or default_lr(cfg.arch, features), sparsity_coefficient=lam,
        k_aux=(cfg.k_aux or max(1, d_in // 2)) if topk else None,
        dead_tokens=cfg.dead_tokens or default_dead_tokens(total * cfg.batch_size, cfg.batch_size),
        batches_per_epoch=batches, total_steps=total,
    )


def _record(cfg: TrainConfig, source: ActivationSource, p: Plan) -> dict[str, Any]:
    """The configuration as compared between reruns: resolved defaults, no volatile fields, the data's shape."""
    rec = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in VOLATILE}
    if rec["activations"]:
        rec["activations"] = str(Path(rec["activations"]).resolve())
    rec.update(features=p.features, k=p.k, lr=p.lr, sparsity_coefficient=p.sparsity_coefficient, k_aux=p.k_aux,
               dead_tokens=p.dead_tokens)
    rec["data"] = {"rows": source.n_rows, "d_in": source.d_model}
    return rec


def _prepare_out(cfg: TrainConfig, record: dict[str, Any]) -> Path:
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise FeaturescopeError(f"{out}: exists and is not a folder")
    if cfg.overwrite and out.is_dir():
        for name in OWNED:
            (out / name).unlink(missing_ok=True)
        ckpt = out / CHECKPOINT_DIR
        if ckpt.is_dir():
            for f in ckpt.iterdir():
                f.unlink()
            ckpt.rmdir()
    if (out / CONFIG_FILE).is_file():
        old = read_json(out / CONFIG_FILE)
        changed = sorted(k for k in set(old) | set(record) if old.get(k) != record.get(k))
        if changed:
            raise FeaturescopeError(
                f"{out} holds a training run with a different configuration ({', '.join(changed)} differ); "
                "use a new --out, or --overwrite to discard it"
            )
    elif out.is_dir() and any(out.iterdir()):
        hint = "use a new --out" if cfg.overwrite else "use a new --out or --overwrite"
        raise FeaturescopeError(f"{out}: folder is not empty and holds no training run; {hint}")
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / CONFIG_FILE, record)
    return out


class _Meter:
    """Running sums of the logged quantities since the last display."""

    def __init__(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.n = 0

    def add(self, **values: Tensor) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums[k] + v if k in self.sums else v.detach().clone()
        self.n += 1

    def take(self) -> dict[str, float]:
        out = {k: float(v) / max(self.n, 1) for k, v in self.sums.items()}
        self.sums, self.n = {}, 0
        return out


class _Run:
    """The mutable state of one training run and its step."""

    def __init__(self, cfg: TrainConfig, source: ActivationSource, out: Path, record: dict[str, Any],
                 p: Plan) -> None:
        self.cfg, self.source, self.out, self.record = cfg, source, out, record
        d_in = source.d_model
        self.device = pick_device(cfg.device)
        self.lr, self.dead_tokens = p.lr, p.dead_tokens
        self.batches_per_epoch, self.total_steps = p.batches_per_epoch, p.total_steps
        self.ckpt_dir = out / CHECKPOINT_DIR
        state = checkpoint.load(self.ckpt_dir)
        if state is not None and state.info.get("config") != record:
            raise FeaturescopeError(f"{self.ckpt_dir}: checkpoint of another configuration; use --overwrite")
        self.sae_cfg = SAEConfig(
            d_in=d_in, d_sae=p.features, architecture=cfg.arch, k=p.k, apply_b_dec_to_input=p.k is not None,
            model=source.model, layer=source.layer, extra=arch_settings(cfg, p),
        )
        if state is None:
            sae = SAE.create(self.sae_cfg, seed=cfg.seed)
        else:
            sae = SAE.from_tensors(self.sae_cfg, state.group("sae"))
        self.sae = sae.to(self.device)
        betas, eps = ADAM[cfg.arch]
        self.optimizer = torch.optim.Adam(param_groups(sae, cfg), lr=self.lr, betas=betas, eps=eps)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.since_fired = torch.zeros(p.features, dtype=torch.int64, device=self.device)
        self.step, self.tokens, self.elapsed = 0, 0, 0.0
        self.resumed = state is not None
        if state is None:
            sample = source.sample(min(source.n_rows, SCALE_SAMPLE), seed=cfg.seed)
            sae.input_scale.fill_(input_scale(sample) if cfg.normalize else 1.0)
            sae.init_from_data(sae.normalize(sample[:GEOMEDIAN_SAMPLE].to(self.device)))
        else:
            sae.load_training_state(state.group("sae_train"))
            names = {id(p): n for n, p in sae.named_parameters()}
            checkpoint.load_optimizer_tensors(self.optimizer, names, state.group("adam"))
            trainer_state = state.group("trainer")
            self.since_fired.copy_(trainer_state["since_fired"])
            self.generator.set_state(trainer_state["rng"])
            self.step, self.tokens = state.step, int(state.info["tokens"])
            self.elapsed = float(state.info["seconds"])
        self.resample_every = max(1, math.ceil(self.dead_tokens / cfg.batch_size))
        self.do_resample = cfg.resample and cfg.arch in ("relu", "jumprelu")
        self.autocast = torch.autocast(self.device.type, dtype=torch.bfloat16,
                                       enabled=cfg.autocast and self.device.type == "cuda")
        self.meter = _Meter()

    def save_checkpoint(self, seconds: float) -> None:
        info = {"step": self.step, "tokens": self.tokens, "seconds": seconds, "total_steps": self.total_steps,
                "config": self.record, "sae_config": self.sae_cfg.to_json()}
        checkpoint.save(self.ckpt_dir, info, self.sae, self.optimizer,
                        {"since_fired": self.since_fired, "rng": self.generator.get_state()})

    def train_step(self, batch: Tensor) -> None:
        """One optimiser step on a raw batch."""
        sae, cfg = self.sae, self.cfg
        x = sae.normalize(batch.to(self.device, non_blocking=True))
        progress = self.step / self.total_steps
        with self.autocast:
            out = sae.training_loss(x, progress, dead=self.since_fired >= self.dead_tokens)
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        sae.before_step()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(sae.parameters(), cfg.grad_clip)
        decay = min(1.0, (1.0 - progress) / cfg.lr_decay) if cfg.lr_decay > 0 else 1.0
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr * decay * group["lr_scale"]
        self.optimizer.step()
        sae.after_step()
        with torch.no_grad():
            self.since_fired += x.shape[0]
            self.since_fired[out.fired] = 0
            x_hat = out.x_hat.detach().float()
            if self.do_resample and (self.step + 1) % self.resample_every == 0 and progress < 0.5:
                dead = self.since_fired >= self.dead_tokens
                if resample_dead(sae, self.optimizer, dead, x, x_hat, self.generator):
                    self.since_fired[dead] = 0
            fvu = (x_hat - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum().clamp_min(1e-12)
            self.meter.add(loss=out.loss.detach(), l0=out.l0, fvu=fvu)
        self.step += 1
        self.tokens += x.shape[0]

    def dead_fraction(self) -> float:
        """Features that did not fire over the dead-feature window (or the whole run if shorter)."""
        return float((self.since_fired >= min(self.dead_tokens, self.tokens)).float().mean())

    def run(self, progress: bool) -> float:
        """Train to the end; returns the wall time of training summed over resumes."""
        cfg = self.cfg
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not progress, unit="step", desc="train",
                   dynamic_ncols=True)
        t0 = last_ckpt = time.perf_counter()
        self.sae.train()
        while self.step < self.total_steps:
            epoch, start = divmod(self.step, self.batches_per_epoch)
            for batch in self.source.batches(cfg.batch_size, seed=cfg.seed, epoch=epoch, start_batch=start):
                self.train_step(batch)
                bar.update(1)
                if self.step % max(cfg.log_every, 1) == 0 or self.step == self.total_steps:
                    shown = self.meter.take()
                    bar.set_postfix({"loss": f"{shown['loss']:.4g}", "L0": f"{shown['l0']:.1f}",
                                     "FVU": f"{shown['fvu']:.3f}", "dead": f"{100 * self.dead_fraction():.1f}%"})
                now = time.perf_counter()
                if self.step < self.total_steps and (
                    (cfg.checkpoint_every > 0 and self.step % cfg.checkpoint_every == 0)
                    or (cfg.checkpoint_seconds > 0 and now - last_ckpt >= cfg.checkpoint_seconds)
                ):
                    self.save_checkpoint(self.elapsed + now - t0)
                    last_ckpt = now
                if self.step >= self.total_steps:
                    break
        bar.close()
        seconds = self.elapsed + time.perf_counter() - t0
        if seconds != self.elapsed or not self.resumed:
            self.save_checkpoint(seconds)
        return seconds


def train(cfg: TrainConfig, *, source: ActivationSource | None = None, progress: bool = True) -> TrainResult:
    """Train an SAE as `cfg` says (on `source` if given, else on `cfg.activations`); resumes if possible."""
    check_config(cfg, have_source=source is not None)
    if source is None:
        source = open_source(cfg.activations)
    if cfg.max_rows is not None:
        source = HeadSource(source, cfg.max_rows)
    if source.n_rows == 0 or source.d_model == 0:
        raise FeaturescopeError("the activation source is empty")
    p = plan(cfg, source)
    record = _record(cfg, source, p)
    out = _prepare_out(cfg, record)
    run = _Run(cfg, source, out, record, p)
    finished_before = run.resumed and run.step >= run.total_steps
    seconds = run.elapsed if finished_before else run.run(progress)
    sae = run.sae.eval()
    metrics = evaluate_sample(sae, source, seed=cfg.seed + 1, device=run.device)
    metrics["dead_fraction"] = run.dead_fraction()
    sae.cpu()
    sae.save(out)
    write_json(out / SUMMARY_FILE, {
        "format": "featurescope.training-summary", "version": 1, "steps": run.step, "tokens": run.tokens,
        "seconds": seconds, "tokens_per_second": run.tokens / seconds if seconds > 0 else None,
        "metrics": metrics, "input_scale": float(sae.input_scale), "lr": run.lr,
        "dead_tokens": run.dead_tokens, "config": record, "sae": run.sae_cfg.to_json(),
    })
    return TrainResult(out, sae, run.step, seconds, metrics)
