"""The streaming state of an analysis and its checkpoints (safetensors + JSON in the work folder).

Pass 1 fills `FeatureStats`, `TopContexts` and `NegativeWindows`; pass 2, which needs each feature's max
from pass 1, fills `Histograms` and `QuantileSamples`. A checkpoint is a tensor file and `state.json`,
written in that order, each atomically; `state.json` names the tensor file and the next context to read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from featurescope.analysis.accumulate import FeatureStats, Histograms
from featurescope.analysis.contexts import NegativeWindows, QuantileSamples, TopContexts
from featurescope.atomic import read_json, write_json, write_safetensors
from featurescope.errors import FeaturescopeError

FORMAT = "featurescope.analysis-state"
VERSION = 1
STATE = "state.json"


class Accumulators:
    """Everything the two passes accumulate, sized by the number of features, never by the tokens."""

    def __init__(self, d_sae: int, d_in: int, vocab: int, *, top_k: int, intervals: int, per_interval: int,
                 negatives: int, window: int, bins: int, seed: int, device: torch.device) -> None:
        self.device = device
        self.intervals, self.per_interval, self.window, self.bins = intervals, per_interval, window, bins
        self.stats = FeatureStats(d_sae, d_in, vocab, device)
        self.top = TopContexts(d_sae, top_k, window, device)
        self.rng1 = torch.Generator(device=device).manual_seed(seed)
        self.rng2 = torch.Generator(device=device).manual_seed(seed + 1)
        self.negatives = NegativeWindows(d_sae, negatives, window, self.rng1)
        self.hist: Histograms | None = None
        self.quantiles: QuantileSamples | None = None

    @property
    def max(self) -> Tensor:
        """Each feature's maximum activation so far (0 if it never fired)."""
        return self.top.value.max(dim=1).values.clamp_min(0)

    def start_pass2(self) -> None:
        """Create the pass-2 accumulators from the maxima and top contexts of pass 1."""
        self.hist = Histograms(self.max, self.bins)
        self.quantiles = QuantileSamples(self.max, self.intervals, self.per_interval, self.window, self.rng2,
                                        exclude=self.top.context)

    def tensors(self) -> dict[str, Tensor]:
        out = {f"stats/{k}": v for k, v in self.stats.state_dict().items()}
        out.update({f"top/{k}": v for k, v in self.top.state_dict().items()})
        out.update({f"neg/{k}": v for k, v in self.negatives.state_dict().items()})
        out["rng/1"], out["rng/2"] = self.rng1.get_state(), self.rng2.get_state()
        if self.hist is not None and self.quantiles is not None:
            out.update({f"hist/{k}": v for k, v in self.hist.state_dict().items()})
            out.update({f"quant/{k}": v for k, v in self.quantiles.state_dict().items()})
        return out

    def load(self, tensors: dict[str, Tensor]) -> None:
        def group(prefix: str) -> dict[str, Tensor]:
            return {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + "/")}

        self.stats.load_state_dict(group("stats"))
        self.top.load_state_dict(group("top"))
        self.negatives.load_state_dict(group("neg"))
        self.rng1.set_state(tensors["rng/1"])
        self.rng2.set_state(tensors["rng/2"])
        if group("hist"):
            self.start_pass2()
            assert self.hist is not None and self.quantiles is not None
            self.hist.load_state_dict(group("hist"))
            self.quantiles.load_state_dict(group("quant"))


def save(work: Path, info: dict[str, Any], acc: Accumulators) -> None:
    """Checkpoint `acc` and `info` (pass, next_context, rows_done, ...) into folder `work`."""
    work.mkdir(parents=True, exist_ok=True)
    n = int(info.get("checkpoints", 0)) + 1
    name = f"state-{n:06d}.safetensors"
    write_safetensors(work / name, {k: v.cpu() for k, v in acc.tensors().items()}, metadata={"format": FORMAT})
    write_json(work / STATE, {"format": FORMAT, "version": VERSION, **info, "checkpoints": n, "tensors": name})
    for old in work.glob("state-*.safetensors"):
        if old.name != name:
            old.unlink(missing_ok=True)


def load_info(work: Path) -> dict[str, Any] | None:
    """The checkpoint manifest in `work`, or None if there is none."""
    if not (work / STATE).is_file():
        return None
    info = read_json(work / STATE)
    if info.get("format") != FORMAT or int(info.get("version", 0)) > VERSION:
        raise FeaturescopeError(f"{work / STATE}: not an analysis checkpoint this featurescope reads; "
                                "rerun with `overwrite`", settings=("overwrite",))
    return info


def load_tensors(work: Path, info: dict[str, Any]) -> dict[str, Tensor]:
    """The tensors of the checkpoint `info` describes."""
    path = work / str(info.get("tensors", ""))
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise FeaturescopeError(f"{path}: unreadable analysis checkpoint ({e}); rerun with `overwrite`",
                                settings=("overwrite",)) from None
