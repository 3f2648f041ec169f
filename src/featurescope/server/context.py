"""What one explorer serves: the feature database (read-only) and, optionally, the model and SAE behind it.

One SQLite connection is shared by the request threads behind a lock (reads take milliseconds); live work
(text search, steering, CE loss) holds a second lock for the model, whose hooks must not overlap, and uses
its own read-only connection so that slow generations never block page loads.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from torch import Tensor

from featurescope.atomic import read_json
from featurescope.errors import FeaturescopeError
from featurescope.featuredb.core import FeatureStore
from featurescope.server.generation import FairLock
from featurescope.server.limits import LiveQueue

log = logging.getLogger(__name__)


class NotFound(FeaturescopeError):
    """A feature id (or other thing asked for) that the database does not hold: answered with 404."""


class NotLoaded(FeaturescopeError):
    """A live request to an explorer started without a model and SAE: answered with 409."""


class Unavailable(FeaturescopeError):
    """The database cannot be served now (replaced by one this explorer cannot switch to): answered with 503."""


def _stamp(path: Path) -> tuple[int, int, int, int] | None:
    """What changes when a file is replaced or rewritten: device, inode, size, mtime (None: gone)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def finite(x: Any) -> float | None:
    """`x` as a float, or None if it is missing, NaN or infinite (JSON has no NaN)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def read_eval(path: str | Path) -> tuple[dict[str, float | None], dict[str, str]]:
    """The numbers of a `featurescope eval --json` output file, and what each counts (its `measured_on`)."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise FeaturescopeError(f"{path}: expected the JSON object that `featurescope eval --json` prints")
    numbers = {k: finite(v) for k, v in data.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    what = data.get("measured_on")
    return numbers, {k: v for k, v in what.items() if isinstance(v, str)} if isinstance(what, dict) else {}


class Live:
    """The model and SAE that live search and steering run, with the lock that serialises their use."""

    def __init__(self, sae: Any, model: Any, store: FeatureStore) -> None:
        self.sae, self.model, self.store = sae, model, store
        self.lock = FairLock()
        """First come first served; streamed generations release it between tokens (see `generation`)."""
        self.queue = LiveQueue()
        """Where the one-shot live routes (and a stream's `auto` calibration) wait, in the event loop, for their turn
        to take `lock`; streamed generations take it from their own threads, bounded by `generation.Jobs`."""
        self.ce: dict[str, Any] | None = None
        """The last CE-loss-recovered measurement (kept in memory only)."""
        self.auto: dict[tuple[int, str], Any] = {}
        """Calibrated `auto` steering choices by (feature, mode), kept in memory (`steering.auto`)."""


class Explorer:
    """The database an explorer serves, its cached whole-database views, and the optional live model."""

    def __init__(self, db_path: str | Path, *, sae: Any = None, model: Any = None, device: str = "cpu",
                 eval_path: str | Path | None = None) -> None:
        self.path = Path(db_path)
        self.eval_metrics, self.eval_measured_on = read_eval(eval_path) if eval_path else ({}, {})
        self._stamp = _stamp(self.path)
        self.store = FeatureStore.open(self.path)
        self.meta: dict[str, Any] = dict(self.store.meta)
        self.d_sae = self.store.d_sae
        self._lock = threading.Lock()
        self._cache: dict[str, Any] = {}
        self.live: Live | None = None
        if sae is not None or model is not None:
            self.live = self._load_live(sae, model, device)

    def _load_live(self, sae: Any, model: Any, device: str) -> Live:
        from featurescope.analysis.search import load_for_store

        live_store = FeatureStore.open(self.path)
        try:
            sae, model = load_for_store(live_store, sae=sae, model=model, device=device)
        except BaseException:
            live_store.close()
            raise
        return Live(sae, model, live_store)

    def close(self) -> None:
        """Close the database connections."""
        self.store.close()
        if self.live is not None:
            self.live.store.close()

    @contextmanager
    def read(self) -> Iterator[FeatureStore]:
        """The shared store, held by this thread for the block (reopened first if the file was replaced)."""
        with self._lock:
            self._follow_replacement()
            yield self.store

    def _follow_replacement(self) -> None:
        """Reopen the database if `analyze --overwrite` or `probe` replaced the file (called under the lock).

        The live model's SAE must match: a database of another SAE is refused (503) until a restart."""
        stamp = _stamp(self.path)
        if stamp is None or stamp == self._stamp:
            return
        try:
            new = FeatureStore.open(self.path)
        except FeaturescopeError as e:  # replaced by a damaged or foreign file: the server's fault, not the request's
            raise Unavailable(f"{self.path.name} was replaced by a file that cannot be served: {e}") from None
        if self.live is not None and new.d_sae != self.d_sae:
            new.close()
            raise Unavailable(f"{self.path.name} was replaced by the database of another SAE ({new.d_sae} features, "
                              f"the loaded SAE has {self.d_sae}); restart the explorer")
        old, self.store = self.store, new
        self.meta, self.d_sae, self._stamp = dict(new.meta), new.d_sae, stamp
        self._cache.clear()
        old.close()
        log.warning("%s was replaced on disk: reopened it", self.path)

    def check_id(self, i: int) -> int:
        """`i` if it is a feature id of the database, else NotFound."""
        if not 0 <= i < self.d_sae:
            raise NotFound(f"feature {i} is out of range: this database has features 0..{self.d_sae - 1}")
        return i

    def require_live(self) -> Live:
        """The live model and SAE, else NotLoaded."""
        if self.live is None:
            raise NotLoaded("no model is loaded: start the explorer with --sae (and --model) for live search "
                            "and steering")
        return self.live

    def cached(self, key: str, build: Any) -> Any:
        """`build(store)` computed once under the store lock, then kept."""
        with self._lock:
            self._follow_replacement()
            if key not in self._cache:
                self._cache[key] = build(self.store)
            return self._cache[key]

    def max_activations(self) -> Tensor:
        """Each feature's max activation over the analysed corpus (cached)."""
        return self.cached("max_acts", lambda s: s.max_activations())
