"""Helpers of the explorer tests: a small real feature database whose corpus holds HTML payloads, a live
server on a free port, and headless Chromium (Debian's package, driven by Playwright)."""

from __future__ import annotations

import itertools
import os
import shutil
import sqlite3
from pathlib import Path
from typing import Any, NamedTuple

import pytest

CHROMIUM = os.environ.get("FEATURESCOPE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
# Each payload, if it ever ran, would set window.__xss; the tests check that it stays unset.
PAYLOADS = (
    'Markup sample: <script>window.__xss = "script";</script> end of sample.',
    'Image sample: <img src=x onerror="window.__xss = \'img\'"> end of sample.',
)
LABEL_PAYLOAD = '<img src=x onerror="window.__xss = \'label\'"><b>bold</b>'
_BUILT: dict[str, ExplorerDB] = {}


class ExplorerDB(NamedTuple):
    """The test database, its SAE folder, and the feature whose label holds LABEL_PAYLOAD."""

    db: Path
    sae_dir: Path
    payload_feature: int


def _corpus(path: Path, documents: int = 30) -> Path:
    """Wikipedia paragraphs with a payload paragraph after each one."""
    from featurescope.corpus import open_corpus

    paragraphs = []
    for i, doc in enumerate(itertools.islice(open_corpus("wiki-en").documents(), documents)):
        paragraphs += [doc.text, PAYLOADS[i % len(PAYLOADS)]]
    path.write_text("\n\n".join(paragraphs), encoding="utf-8")
    return path


def _plant_label(db: Path) -> int:
    """Replace one feature's label by LABEL_PAYLOAD (a copy of what a hostile corpus could yield); returns it."""
    con = sqlite3.connect(db)
    try:
        alive = [r[0] for r in con.execute("SELECT id FROM features WHERE count > 1 ORDER BY density, id")]
        feature = alive[len(alive) // 2]
        with con:
            con.execute("UPDATE labels SET text = ? WHERE feature = ?", (LABEL_PAYLOAD, feature))
    finally:
        con.close()
    return int(feature)


def build_db(model: Any, base: Path) -> ExplorerDB:
    """Harvest 2,000 tokens of the payload corpus, train a 256-feature TopK SAE, analyse it (once per session)."""
    from featurescope.analysis import AnalyzeConfig, analyze
    from featurescope.harvest import HarvestConfig, harvest
    from featurescope.train import TrainConfig, train

    key = str(base)
    if key in _BUILT:
        return _BUILT[key]
    folder = base / "explorer"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    corpus = _corpus(folder / "corpus.txt")
    acts = folder / "acts"
    harvest(HarvestConfig(out=str(acts), corpus=str(corpus), tokens=2000, shard_contexts=8, layer=9), model=model,
            progress=False)
    result = train(TrainConfig(activations=str(acts), out=str(folder / "sae"), features=256, k=8, batch_size=500,
                               epochs=2, checkpoint_every=0, checkpoint_seconds=0), progress=False)
    db = folder / "features.db"
    analyze(AnalyzeConfig(sae=str(result.path), out=str(db), activations=str(acts), map="pca", top_k=8, intervals=5,
                          per_interval=2, window=24, negatives=5, checkpoint_seconds=0), model=model,
            sae=result.sae, progress=False)
    _BUILT[key] = ExplorerDB(db, result.path, _plant_label(db))
    return _BUILT[key]


def start_server(db: Path, sae: Any = None, model: Any = None) -> Any:
    """A running explorer (a `ServerThread`) on a free local port."""
    from featurescope.server import create_app
    from featurescope.server.run import ServerThread

    return ServerThread(create_app(db, sae=sae, model=model)).start()


def start_live_server(built: ExplorerDB, model: Any) -> Any:
    """A running explorer of the test database with its SAE and `model` loaded (live search and steering)."""
    from featurescope.sae import SAE

    return start_server(built.db, sae=SAE.load(built.sae_dir), model=model)


def running_generations(server: Any) -> int:
    """How many streamed generations the explorer `server` (a `ServerThread`) is running."""
    state = server.server.config.app.state
    return state.generations.running() if hasattr(state, "generations") else 0


def launch_chromium(playwright: Any, user_data_dir: Path) -> Any:
    """A headless browser context of Debian's Chromium with a fresh profile (skips when it is not installed)."""
    if not Path(CHROMIUM).is_file():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: .ci/run installs Debian's chromium package")
        pytest.skip(f"{CHROMIUM} is missing: apt-get install -y chromium")
    return playwright.chromium.launch_persistent_context(
        str(user_data_dir), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
        viewport={"width": 1280, "height": 800})
