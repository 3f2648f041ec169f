"""The SAE interface every architecture implements, and our on-disk format (cfg.json + sae.safetensors)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from featurescope.errors import FeaturescopeError
from featurescope.sae.config import SAEConfig
from featurescope.sae.parallel import LOCAL, Parallel
from featurescope.sae.registry import architecture_class, register

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae.safetensors"


class SparseCodes(NamedTuple):
    """Active features per row: `values[n, j]` is the activation of feature `indices[n, j]` (0 = padding)."""

    values: Tensor
    indices: Tensor


class ActiveFeatures(NamedTuple):
    """The positive activations of a batch of rows, one entry each, sorted by row, then feature."""

    row: Tensor
    """[nnz] int64 row of the input."""
    feature: Tensor
    """[nnz] int64 feature id."""
    value: Tensor
    """[nnz] float32 activation (> 0)."""


class LossOutput(NamedTuple):
    """What one training step's forward pass returns (all in normalised units)."""

    loss: Tensor
    """Scalar to minimise."""
    x_hat: Tensor
    """Reconstruction [batch, d_in]."""
    l0: Tensor
    """Mean number of active features per row (scalar, no grad)."""
    fired: Tensor
    """Bool [d_sae]: which features were active on at least one row of the batch."""
    terms: dict[str, Tensor]
    """Named parts of the loss for logging (mse, l1, auxk, ...), detached scalars."""


class SAE(nn.Module):
    """A sparse autoencoder over raw activations.

    `encode(x)` takes raw activations `[..., d_in]` and returns dense feature activations `[..., d_sae]`;
    `decode(f)` returns activations in the same raw units. Input normalisation (one constant scale, so that
    E‖x‖ = √d_in) lives inside as the buffer `input_scale`.

    Parameters: `W_enc_rows` [d_sae, d_in] (read `W_enc` for the usual [d_in, d_sae] view), `b_enc` [d_sae],
    `W_dec` [d_sae, d_in], `b_dec` [d_in]; architectures add their own (e.g. thresholds).
    """

    architecture: ClassVar[str] = ""
    """The name in cfg.json and `--arch`; a subclass that sets it registers itself (`featurescope.sae.registry`)."""
    parallel: Parallel = LOCAL
    """How training splits rows and features across processes (`featurescope.sae.parallel`)."""
    input_scale: Tensor
    """Buffer: raw activations × input_scale = the SAE's internal units."""

    # -- how `featurescope.train` trains it (class-level; each architecture sets its own) -------
    adam_betas: ClassVar[tuple[float, float]] = (0.9, 0.999)
    adam_eps: ClassVar[float] = 1e-8
    default_sparsity_coefficient: ClassVar[float | None] = None
    """λ of the sparsity penalty when `--sparsity-coefficient` is not given (None: there is no λ)."""
    fast_params: ClassVar[tuple[str, ...]] = ()
    """Parameters whose learning rate is `--lr` × `--threshold-lr-scale`."""
    resamples_dead: ClassVar[bool] = False
    """Whether `--resample` re-initialises dead features (`featurescope.sae.resample`)."""
    subtracts_b_dec: ClassVar[bool] = False
    """`SAEConfig.apply_b_dec_to_input` of a newly trained SAE."""
    training_settings: ClassVar[dict[str, str]] = {}
    """The `cfg.extra` keys the architecture reads, each with the training setting that fills it: a field of
    `featurescope.train.Plan` (resolved default) if it has one, else of `TrainConfig`."""

    @classmethod
    def default_k(cls, features: int) -> int | None:
        """`cfg.k` of an SAE with `features` features when `--k` is not given (None: the architecture has no k)."""
        return None

    @classmethod
    def default_k_aux(cls, d_in: int) -> int | None:
        """AuxK's `k_aux` when `--k-aux` is not given (None: the architecture has no AuxK)."""
        return None

    @classmethod
    def default_lr(cls, features: int) -> float:
        """Unit-norm decoders: 2.8e-3 / √(features / 2^14), at most 8e-3.

        OpenAI's 1/√features scaling with a 14x larger constant, tuned for runs of 10^2-10^4 steps on the
        synthetic benchmark (docs/training.md); OpenAI's own 2e-4 suits runs 100x longer.
        """
        return min(8e-3, 2.8e-3 / math.sqrt(features / 2**14))

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("architecture"):
            register(cls)

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d_in, d_sae = cfg.d_in, cfg.d_sae
        self.W_enc_rows = nn.Parameter(torch.zeros(d_sae, d_in))
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.W_dec = nn.Parameter(torch.zeros(d_sae, d_in))
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        self.register_buffer("input_scale", torch.ones(()))

    # -- construction -------------------------------------------------------------------------
    @staticmethod
    def create(cfg: SAEConfig, *, seed: int = 0) -> SAE:
        """A freshly initialised SAE of `cfg.architecture`."""
        sae = architecture_class(cfg.architecture)(cfg)
        sae.reset_parameters(torch.Generator().manual_seed(seed))
        return sae

    def reset_parameters(self, generator: torch.Generator) -> None:
        """Initialise weights (architecture-specific)."""
        raise NotImplementedError

    # -- views ----------------------------------------------------------------------------------
    @property
    def W_enc(self) -> Tensor:
        """Encoder matrix as [d_in, d_sae] (SAELens' layout), a view of `W_enc_rows`."""
        return self.W_enc_rows.T

    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def d_sae(self) -> int:
        return self.cfg.d_sae

    # -- normalisation --------------------------------------------------------------------------
    def normalize(self, x: Tensor) -> Tensor:
        """Raw activations -> the SAE's internal units."""
        return x * self.input_scale

    def denormalize(self, x: Tensor) -> Tensor:
        """The SAE's internal units -> raw activations."""
        return x / self.input_scale

    # -- inference ------------------------------------------------------------------------------
    def pre_acts(self, x_norm: Tensor) -> Tensor:
        """Encoder pre-activations from normalised input."""
        if self.cfg.apply_b_dec_to_input:
            x_norm = self.parallel.feature_input(x_norm - self.b_dec)
        return x_norm @ self.W_enc_rows.T + self.b_enc

    def activation(self, pre: Tensor) -> Tensor:
        """Dense feature activations from pre-activations (inference rule of the architecture)."""
        raise NotImplementedError

    def encode(self, x: Tensor) -> Tensor:
        """Raw activations [..., d_in] -> dense feature activations [..., d_sae]."""
        self._check_input(x)
        x = x.to(self.W_dec.dtype)
        return self.activation(self.pre_acts(self.normalize(x)))

    def decode(self, f: Tensor) -> Tensor:
        """Feature activations [..., d_sae] -> reconstructed raw activations [..., d_in]."""
        return self.denormalize(f.to(self.W_dec.dtype) @ self.W_dec + self.b_dec)

    def forward(self, x: Tensor) -> Tensor:
        """Reconstruction of raw activations, in raw units."""
        return self.decode(self.encode(x))

    def encode_sparse(self, x: Tensor) -> SparseCodes:
        """Raw activations [N, d_in] -> the active features of each row, padded to the busiest row.

        Generic version: the dense code's nonzeros (architectures with a fixed k override it).
        """
        f = self.encode(x.reshape(-1, self.cfg.d_in))
        width = max(int((f != 0).sum(-1).max()), 1) if f.shape[0] else 1
        indices = f.abs().topk(width, dim=-1).indices
        values = f.gather(-1, indices)
        indices = torch.where(values != 0, indices, torch.zeros_like(indices))
        return SparseCodes(values, indices)

    def decode_sparse(self, codes: SparseCodes) -> Tensor:
        """`SparseCodes` [N, k] -> reconstructed raw activations [N, d_in] (gathers k decoder rows)."""
        values, indices = codes
        out = F.embedding_bag(indices.long(), self.W_dec, mode="sum",
                              per_sample_weights=values.to(self.W_dec.dtype))
        return self.denormalize(out + self.b_dec)

    def encode_active(self, x: Tensor) -> ActiveFeatures:
        """Raw activations [N, d_in] -> their positive activations, by row, then feature (ascending).

        Generic version: the dense code's positive entries (architectures with a fixed k override it).
        """
        f = self.encode(x).float()
        row, feature = (f > 0).nonzero(as_tuple=True)
        return ActiveFeatures(row, feature, f[row, feature])

    def feature_thresholds(self, index: Tensor) -> Tensor | None:
        """θ [n] of features `index` if each one's activation is pre_i · 1[pre_i > θ_i], its own pre-activation
        alone; None if it also depends on the other features (TopK)."""
        return None

    def decode_partial(self, pre: Tensor) -> tuple[Tensor, Tensor]:
        """Inference decode of pre-activations `pre` [N, d_sae] by this process's features: the partial
        reconstruction [N, d_in] (before `parallel.features_sum`, b_dec and `denormalize`) and the number of
        active entries (feature sharding: each rank holds some features)."""
        f = self.activation(pre)
        return f @ self.W_dec, (f != 0).sum()

    def _check_input(self, x: Tensor) -> None:
        if x.shape[-1] != self.cfg.d_in:
            raise FeaturescopeError(
                f"activations have width {x.shape[-1]} but the SAE reads d_in={self.cfg.d_in}"
            )

    # -- training -------------------------------------------------------------------------------
    def training_loss(self, x_norm: Tensor, progress: float, dead: Tensor | None = None) -> LossOutput:
        """Loss of one batch of normalised inputs; `progress` in [0, 1] is the fraction of training done.

        `dead` (bool [d_sae]) marks features that have not fired for a while (used by AuxK).
        """
        raise NotImplementedError

    def init_from_data(self, x_norm: Tensor) -> None:
        """Data-dependent initialisation from a sample of normalised inputs (e.g. b_dec); default: none."""

    def before_step(self) -> None:
        """Called after the backward pass, before the optimiser step (e.g. to project gradients)."""

    def after_step(self) -> None:
        """Called after each optimiser step (e.g. to renormalise decoder rows)."""

    def per_feature_params(self) -> list[str]:
        """Names of the parameters indexed by feature along dim 0 (reset together when resampling)."""
        return ["W_enc_rows", "b_enc", "W_dec"]

    @torch.no_grad()
    def reinit_features(self, idx: Tensor, directions: Tensor, enc_norm: float, dec_norm: float) -> None:
        """Point features `idx` at unit `directions` [len(idx), d_in] (resampling dead features)."""
        self.W_dec[idx] = directions * dec_norm
        self.W_enc_rows[idx] = directions * enc_norm
        self.b_enc[idx] = 0.0

    def training_state(self) -> dict[str, Tensor]:
        """Training-only state outside `state_dict()` that a checkpoint must keep (default: none)."""
        return {}

    def load_training_state(self, state: dict[str, Tensor]) -> None:
        """Restore what `training_state()` returned."""

    # -- on disk --------------------------------------------------------------------------------
    def tensors(self) -> dict[str, Tensor]:
        """Everything saved to sae.safetensors."""
        return {k: v.detach() for k, v in self.state_dict().items()}

    def save(self, path: str | Path) -> Path:
        """Write cfg.json + sae.safetensors into folder `path` (atomically, file by file)."""
        from featurescope.atomic import write_json, write_safetensors

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        write_safetensors(path / WEIGHTS_FILE, self.tensors(), metadata={"format": "featurescope.sae"})
        write_json(path / CFG_FILE, self.cfg.to_json())
        return path

    @staticmethod
    def load(path: str | Path, *, device: str | torch.device = "cpu") -> SAE:
        """Load an SAE folder: ours, SAELens' or EleutherAI sparsify's (told apart by content)."""
        from featurescope.sae.io import load_any  # io reads folders into the classes of this module

        return load_any(Path(path), device=device)

    @staticmethod
    def from_tensors(cfg: SAEConfig, tensors: dict[str, Tensor]) -> SAE:
        """Build an SAE of `cfg.architecture` from a dict shaped like `tensors()`."""
        sae = architecture_class(cfg.architecture)(cfg)
        expected = sae.state_dict()
        missing = set(expected) - set(tensors)
        unexpected = set(tensors) - set(expected)
        if missing or unexpected:
            raise FeaturescopeError(
                f"SAE weights do not match a {cfg.architecture} SAE "
                f"(missing: {sorted(missing) or 'none'}, unexpected: {sorted(unexpected) or 'none'})"
            )
        for name, t in tensors.items():
            if tuple(t.shape) != tuple(expected[name].shape):
                raise FeaturescopeError(
                    f"SAE tensor {name} has shape {tuple(t.shape)}, expected {tuple(expected[name].shape)}"
                )
        sae.load_state_dict({k: v.to(expected[k].dtype) for k, v in tensors.items()})
        return sae
