"""The SAE's configuration: what `cfg.json` holds."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from featurescope.errors import FeaturescopeError
from featurescope.sae.registry import architecture_class

FORMAT_NAME = "featurescope.sae"
FORMAT_VERSION = 1


@dataclass
class SAEConfig:
    """Shape, architecture and provenance of a sparse autoencoder."""

    d_in: int
    """Width of the activations it reads (the model's d_model)."""
    d_sae: int
    """Number of features."""
    architecture: str = "topk"
    """A name of `featurescope.sae.registry`: relu (Anthropic's ReLU + L1·‖W_dec‖), topk, batchtopk, jumprelu."""
    k: int | None = None
    """Active features per token for topk; mean active features per token for batchtopk."""
    apply_b_dec_to_input: bool = True
    """Subtract b_dec from the (normalised) input before encoding."""
    model: str | None = None
    """The model the SAE was trained on (a name `load_model` accepts)."""
    layer: int | None = None
    """The block whose output (residual stream) the SAE reads, 0-based."""
    hook: str | None = None
    """A free-form hook name, e.g. `blocks.9.hook_resid_post` for SAEs from SAELens."""
    dtype: str = "float32"
    extra: dict[str, Any] = field(default_factory=dict)
    """Architecture- or source-specific settings kept for provenance."""

    def __post_init__(self) -> None:
        arch = architecture_class(self.architecture)
        if self.d_in <= 0 or self.d_sae <= 0:
            raise FeaturescopeError(f"SAE sizes must be positive (d_in={self.d_in}, d_sae={self.d_sae})")
        if arch.default_k(self.d_sae) is not None and (self.k is None or not 0 < self.k <= self.d_sae):
            raise FeaturescopeError(
                f"{self.architecture} needs 0 < k <= d_sae (k={self.k}, d_sae={self.d_sae})"
            )

    def to_json(self) -> dict[str, Any]:
        """The dict written to cfg.json (carries the format name and version)."""
        return {"format": FORMAT_NAME, "version": FORMAT_VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SAEConfig:
        """Read a dict written by `to_json`; unknown keys are an error."""
        if data.get("format") != FORMAT_NAME:
            raise FeaturescopeError(f"not a featurescope SAE config (format={data.get('format')!r})")
        if int(data.get("version", 0)) > FORMAT_VERSION:
            raise FeaturescopeError(
                f"SAE format version {data.get('version')} is newer than this featurescope reads "
                f"({FORMAT_VERSION})"
            )
        fields = {f.name for f in dataclasses.fields(cls)}
        body = {k: v for k, v in data.items() if k not in ("format", "version")}
        unknown = set(body) - fields
        if unknown:
            raise FeaturescopeError(f"unknown keys in SAE config: {', '.join(sorted(unknown))}")
        try:
            return cls(**body)
        except TypeError as e:
            raise FeaturescopeError(f"bad SAE config: {e}") from None
