"""Images and text through the same SAE, end to end on a tiny random Gemma 3 (real config, real processor class and
Gemma 3 4B's processor settings): harvest-images → train → analyse → explorer API, search --image, image probe
and steering with an image prompt.

Planted cases: `coffee-marked.png` is scikit-image's coffee with one grid cell painted red. The position whose
residual changes most between the plain and the marked image is found from the model alone (no bookkeeping);
the store must record that position as patch (ROW, COL). Feature 0 of the planted SAE fires only where that
position's residual is (a linear threshold separating that one row from all others), so the analysis must show
it on that patch; feature 1 fires 1.0 everywhere, so its
modality score must be the share of image positions, counted from the token ids.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from featurescope.activations import ActivationStore
from featurescope.errors import FeaturescopeError
from featurescope.featuredb.core import FeatureStore
from featurescope.sae import SAE
from featurescope.vision.store import read_positions
from vision_helpers import sample_image, vision_model, write_images

ROW, COL = 5, 11  # the painted cell of Gemma 3's 16 × 16 grid
NAMES = ("astronaut", "camera", "chelsea", "coffee", "rocket")


def _marked(arr: np.ndarray, rows: int, cols: int, row: int, col: int) -> np.ndarray:
    """`arr` with the inner part of grid cell (row, col) of a rows × cols grid over the whole image painted red."""
    h, w = arr.shape[:2]
    out = arr.copy()
    y0, y1 = int(h * row / rows), int(h * (row + 1) / rows)
    x0, x1 = int(w * col / cols), int(w * (col + 1) / cols)
    out[y0 + 2:y1 - 2, x0 + 2:x1 - 2] = (255, 0, 0)
    return out


def _pre(sae: SAE, x: torch.Tensor) -> torch.Tensor:
    """The encoder's input space (normalised, b_dec removed where the SAE does so)."""
    xn = sae.normalize(x)
    return xn - sae.b_dec if sae.cfg.apply_b_dec_to_input else xn


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from PIL import Image

    from featurescope.analysis import AnalyzeConfig, analyze
    from featurescope.harvest.images import ImageHarvestConfig, harvest_images
    from featurescope.train import TrainConfig, train

    base = tmp_path_factory.mktemp("vision")
    model = vision_model("gemma3")
    images = write_images(base / "images", NAMES)
    Image.fromarray(_marked(sample_image("coffee"), 16, 16, ROW, COL)).save(images / "coffee-marked.png")
    (images / "coffee-marked.txt").write_text("A cup of coffee.", encoding="utf-8")
    acts = base / "acts"
    harvest = harvest_images(ImageHarvestConfig(out=str(acts), images=str(images), model="tiny-gemma3", layer=1,
                                                ctx_len=320, batch_size=3, shard_contexts=4, dtype="float32"),
                             model=model, progress=False)
    trained = train(TrainConfig(activations=str(acts), out=str(base / "sae"), arch="relu", features=64,
                                batch_size=256, epochs=1, checkpoint_every=0, checkpoint_seconds=0), progress=False)
    store = ActivationStore(acts)
    # p*: the position whose residual the red cell changes most, from the model alone
    plain, marked = (Image.open(images / n).convert("RGB") for n in ("coffee.png", "coffee-marked.png"))
    text = model.prompt("A cup of coffee.", chat=False)
    inputs = model.prepare([plain, marked], [text, text], chat=False)
    resid = model.residual_inputs(inputs, 1).float()
    p_star = int((resid[1] - resid[0]).norm(dim=-1).argmax())
    # the planted SAE: feature 0 fires on the row of r_marked[p*] alone, feature 1 is constant 1.0
    sae = trained.sae
    t = {k: v.detach().clone() for k, v in sae.tensors().items()}
    x_star = _pre(sae, resid[1, p_star]).detach()
    rows = _pre(sae, torch.cat([store.read_shard(i).acts.float() for i in range(len(store.shards))])).detach()
    rest = rows[(rows - x_star).norm(dim=-1) > 1e-3 * x_star.norm()]
    assert len(rest) == len(rows) - 1, "the marked patch's row is stored once"
    cov = torch.cov(rest.T.double()) + 1e-4 * torch.eye(rows.shape[1], dtype=torch.float64)
    u = torch.linalg.solve(cov, (x_star - rest.mean(0)).double()).float()  # Fisher's direction: x* vs the rest
    u = u / u.norm()
    target, others = float(x_star @ u), rest @ u
    assert target > float(others.max()), "the marked patch's residual is not the most extreme along its direction"
    threshold = (target + float(others.max())) / 2
    t["W_enc_rows"][0], t["b_enc"][0] = u, -threshold
    t["W_enc_rows"][1], t["b_enc"][1] = 0.0, 1.0
    planted = SAE.from_tensors(sae.cfg, t)
    planted_dir = planted.save(base / "planted")
    db = base / "features.db"
    result = analyze(AnalyzeConfig(sae=str(planted_dir), out=str(db), activations=str(acts), map="pca", top_k=6,
                                   intervals=3, per_interval=2, window=16, negatives=3, checkpoint_seconds=0),
                     model=model, progress=False)
    return {"base": base, "model": model, "images": images, "acts": acts, "store": store, "db": db,
            "harvest": harvest, "analyze": result, "p_star": p_star, "inputs": inputs, "sae": planted,
            "sae_dir": planted_dir}


def _context_of(store: ActivationStore, ref: str) -> tuple[int, int, int]:
    """(global context, shard, local index) of image `ref`."""
    c = 0
    for i in range(len(store.shards)):
        for j, rec in enumerate(read_positions(store, i).records):
            if rec["ref"] == ref:
                return rec["context"], i, j
            c += 1
    raise AssertionError(f"{ref} not in the store")


def test_store_records_the_patch_found_from_pixels(run):
    store = run["store"]
    assert store.manifest["modality"] == "image+text" and run["harvest"].images == len(NAMES) + 1
    ctx, shard, j = _context_of(store, "coffee-marked.png")
    pos = read_positions(store, shard)
    p = run["p_star"]
    assert int(pos.image[j, p]) == ctx
    assert (int(pos.view[j, p]), int(pos.row[j, p]), int(pos.col[j, p])) == (0, ROW, COL)
    # every image token is a patch of a 16 × 16 grid, each patch once; every other position is text
    tokens = store.read_shard(shard).tokens[j]
    is_img = tokens == run["model"].image_token_id
    assert torch.equal(is_img, pos.image[j] >= 0)
    cells = {(int(r), int(c)) for r, c in zip(pos.row[j][is_img], pos.col[j][is_img], strict=True)}
    assert len(cells) == int(is_img.sum()) == 256 and max(cells) == (15, 15)
    assert pos.records[j]["grid"] == [16, 16] and pos.records[j]["canvas"] == [0.0, 0.0, 600.0, 400.0]


def test_planted_patch_feature_is_shown_on_its_patch(run):
    from featurescope.featuredb.images import feature_images

    ctx, _, _ = _context_of(run["store"], "coffee-marked.png")
    with FeatureStore.open(run["db"]) as fs:
        fi = feature_images(fs, 0)
    assert [e.image for e in fi.images] == [ctx], "feature 0 fires on the marked image only"
    top = fi.images[0]
    assert (top.row, top.col, top.grid) == (ROW, COL, (16, 16))
    acts = np.array(top.acts).reshape(16, 16)
    assert acts[ROW, COL] > 0 and (acts > 0).sum() == 1
    assert fi.modality.image_count == 1 and fi.modality.text_count == 0 and fi.modality.score == 1.0
    assert fi.texts == []


def test_modality_score_of_a_constant_feature(run):
    from featurescope.featuredb.images import feature_images

    store, image_token = run["store"], run["model"].image_token_id
    n_img = n_txt = 0
    for i in range(len(store.shards)):
        s = store.read_shard(i)
        n_img += int((s.mask & (s.tokens == image_token)).sum())
        n_txt += int((s.mask & (s.tokens != image_token)).sum())
    assert n_img == (len(NAMES) + 1) * 256 and n_txt > 0
    with FeatureStore.open(run["db"]) as fs:
        fi = feature_images(fs, 1)
    m = fi.modality
    assert (m.image_count, m.text_count) == (n_img, n_txt)
    assert m.score == pytest.approx(n_img / (n_img + n_txt), rel=1e-6)
    assert m.balanced == pytest.approx(0.5, rel=1e-6)
    assert len(fi.images) == 6 and all(np.allclose(e.acts, 1.0) for e in fi.images)
    assert fi.texts and all(t.tokens[t.position - t.start] not in ("<image_soft_token>", "<pad>") for t in fi.texts)


def test_explorer_shows_images_next_to_texts(run):
    from fastapi.testclient import TestClient

    from featurescope.server.app import create_app

    ctx, _, _ = _context_of(run["store"], "coffee-marked.png")
    with TestClient(create_app(run["db"]), base_url="http://127.0.0.1") as client:
        data = client.get("/api/features/0/images").json()
        assert data["available"] and [i["image"] for i in data["images"]] == [ctx]
        img = data["images"][0]
        assert (img["row"], img["col"], img["rows"], img["cols"]) == (ROW, COL, 16, 16)
        assert int(np.argmax(img["acts"])) == ROW * 16 + COL
        thumb = client.get(img["thumbnail"])
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
        assert thumb.content[:3] == b"\xff\xd8\xff"
        assert client.get("/api/images/999.jpg").status_code == 404
        assert client.get("/api/features/1/images").json()["texts"]
        page = client.get("/feature/0")
        assert page.status_code == 200
        assert "imagesSection" in client.get("/static/js/feature.js").text
        js = client.get("/static/js/images.js").text
        assert "/api/features/${id}/images" in js and "data-row" in js


def test_text_only_database_has_no_image_section(tmp_path):
    from featurescope.featuredb.images import feature_images, has_images

    db = tmp_path / "text.db"
    from featurescope.featuredb.core import create_db

    with create_db(db) as w:
        w.meta({"format": "featurescope.features", "version": 1, "d_sae": 2, "d_in": 4})
    with FeatureStore.open(db) as fs:
        assert not has_images(fs)
        assert feature_images(fs, 1).images == [] and feature_images(fs, 1).modality is None


def test_search_image_finds_the_planted_feature_on_its_patch(run):
    from featurescope.analysis.image_search import search_image

    with FeatureStore.open(run["db"]) as fs:
        hit = search_image(fs, run["images"] / "coffee-marked.png", sae=run["sae"], model=run["model"], n=64)
        plain = search_image(fs, run["images"] / "coffee.png", sae=run["sae"], model=run["model"], n=64)
    found = {h.feature: h for h in hit.hits}
    assert 0 in found and (found[0].row, found[0].col) == (ROW, COL) and hit.grid == (16, 16)
    assert 0 not in {h.feature for h in plain.hits} and 1 in {h.feature for h in plain.hits}


def test_cli_refuses_a_text_only_model(run, tmp_path):
    from conftest import run_cli

    # the CLI path: a text-only model named on the command line is refused in one line
    proc = run_cli("harvest-images", "--out", str(tmp_path / "acts"), "--images", str(run["images"]),
                   "--model", "smollm2", "-q")
    assert proc.returncode == 2 and "text-only model" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "acts").exists()


def test_image_probe_scores(run):
    from featurescope.analysis.image_probe import ImageProbeConfig, image_probe

    db = run["base"] / "probe.db"
    shutil.copy(run["db"], db)
    pairs = run["base"] / "pairs"
    pairs.mkdir()
    for name in ("coffee.png", "coffee-marked.png", "rocket.png"):
        shutil.copy(run["images"] / name, pairs / name)
        shutil.copy(run["images"] / name.replace(".png", ".txt"), pairs / name.replace(".png", ".txt"))
    result = image_probe(ImageProbeConfig(db=str(db), pairs=str(pairs), top=64), sae=run["sae"], model=run["model"],
                         progress=False)
    scores = {s.feature: s for s in result.top}
    assert result.pairs == 3 and len(scores) == 64
    assert scores[1].jaccard == 1.0 and scores[1].both_pairs == 3 and scores[1].consistency == 0.0
    assert scores[0].image_pairs == 1  # of the three images, only the marked one has the planted patch
    assert all(-1.0 - 1e-9 <= s.consistency <= 1.0 + 1e-9 for s in result.top)


def test_steering_a_generation_given_an_image(run):
    from featurescope.steering.images import generate_with_image

    model, sae = run["model"], run["sae"]
    image = run["images"] / "coffee.png"
    a = generate_with_image(model, sae, "Describe it.", image, {1: 0.0}, mode="add", max_new_tokens=6)
    b = generate_with_image(model, sae, "Describe it.", image, {1: 0.0}, mode="add", max_new_tokens=6)
    assert a.baseline == b.baseline == a.steered  # adding 0 changes nothing; the same seed gives the same text
    c = generate_with_image(model, sae, "Describe it.", image, {2: 500.0}, mode="add", max_new_tokens=6)
    assert c.baseline == a.baseline and c.steered != c.baseline
    with pytest.raises(FeaturescopeError, match="no such image"):
        generate_with_image(model, sae, "x", run["base"] / "missing.png", {1: 1.0})
