"""Image-text models through featurescope: a tiny random SmolVLM (Idefics3 config and processor class, SmolVLM's
processor settings: 512-px tiles of an image up to 2048 px, a global view) loaded from a local folder, its patch
bookkeeping checked against pixels, a short harvest → train → analyse, and the bad inputs (an undecodable image,
an empty folder, an image over the processor's limit, a text-only model) with what they leave on disk."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from featurescope.errors import FeaturescopeError
from featurescope.harvest.images import ImageHarvestConfig, harvest_images
from vision_helpers import sample_image, smolvlm, write_images


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """The tiny SmolVLM saved as a Hugging Face folder (model + processor)."""
    hf, processor = smolvlm()
    path = tmp_path_factory.mktemp("smolvlm") / "model"
    hf.save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def model(folder):
    from featurescope.models import load_model

    return load_model(str(folder), device="cpu")


def test_loads_from_a_folder_as_a_vision_model(model, folder):
    from featurescope.models.vision import VisionLanguageModel

    assert isinstance(model, VisionLanguageModel)
    assert model.vision_family == "idefics3" and model.n_layers == 2 and model.d_model == 64
    assert model.source.startswith("local:") and model.limit.longest_edge == 2048
    assert model.image_token_id not in model.special_ids
    assert model.tokenizer.convert_tokens_to_ids("<global-img>") in model.special_ids
    ids = model.tokenizer("A cat.", return_tensors="pt")["input_ids"]
    assert model.residual(ids, 1).shape == (1, ids.shape[1], 64)  # text alone: the same stop-after-L forward


def test_tiles_and_global_view_match_the_pixels(model):
    from PIL import Image

    arr = sample_image("astronaut")  # 512 px → 2048 px: 4 × 4 tiles of 8 × 8 patches, then the global view
    marked = arr.copy()
    marked[20 * 16 + 3:21 * 16 - 3, 9 * 16 + 3:10 * 16 - 3] = (255, 0, 0)  # patch (20, 9) of the 32 × 32 grid
    text = model.prompt("", chat=False)
    inputs = model.prepare([Image.fromarray(arr), Image.fromarray(marked)], [text, text], chat=False)
    patches = model.patches(inputs, 1)
    assert len(patches) == 1
    p = patches[0]
    assert p.grid == (32, 32) and len(p.positions) == 1024 + 64
    assert int((p.view == 0).sum()) == 1024 and int((p.view == 1).sum()) == 64
    cells = {(int(r), int(c)) for r, c, v in zip(p.row, p.col, p.view, strict=True) if v == 0}
    assert len(cells) == 1024
    resid = model.residual_inputs(inputs, 0).float()
    diff = (resid[1] - resid[0]).norm(dim=-1)
    tiles = p.positions[p.view == 0]
    best = int(tiles[int(diff[tiles].argmax())])
    k = int((p.positions == best).nonzero())
    assert (int(p.row[k]), int(p.col[k])) == (20, 9)


def test_harvest_train_analyse(model, tmp_path):
    from fastapi.testclient import TestClient

    from featurescope.analysis import AnalyzeConfig, analyze
    from featurescope.featuredb.core import FeatureStore
    from featurescope.featuredb.images import feature_images
    from featurescope.server.app import create_app
    from featurescope.train import TrainConfig, train

    images = write_images(tmp_path / "images", ("chelsea", "coffee"))
    acts = tmp_path / "acts"
    r = harvest_images(ImageHarvestConfig(out=str(acts), images=str(images), model="tiny", layer=1, ctx_len=1200,
                                          batch_size=2, shard_contexts=1), model=model, progress=False)
    assert (r.images, r.shards) == (2, 2) and r.image_rows == 2 * (24 * 32 + 64)  # 600 × 400 → 3 × 4 tiles
    sae = train(TrainConfig(activations=str(acts), out=str(tmp_path / "sae"), features=32, k=4, batch_size=256,
                            epochs=1, checkpoint_every=0, checkpoint_seconds=0), progress=False)
    db = tmp_path / "f.db"
    analyze(AnalyzeConfig(sae=str(sae.path), out=str(db), activations=str(acts), map="none", top_k=4, intervals=2,
                          per_interval=1, window=8, negatives=2, checkpoint_seconds=0), model=model, progress=False)
    with FeatureStore.open(db) as fs:
        f = int(fs.con.execute("SELECT feature FROM image_examples ORDER BY value DESC LIMIT 1").fetchone()[0])
        fi = feature_images(fs, f)
    grids = {e.ref: e.grid for e in fi.images}
    assert grids.get("coffee.png", (24, 32)) == (24, 32) and grids.get("chelsea.png", (24, 32)) == (24, 32)
    with TestClient(create_app(db), base_url="http://127.0.0.1") as client:
        data = client.get(f"/api/features/{f}/images").json()
    assert data["images"] and len(data["images"][0]["acts"]) == data["images"][0]["rows"] * data["images"][0]["cols"]


def test_oversized_image_is_downscaled_and_reported(model, tmp_path, caplog):
    from PIL import Image

    from featurescope.activations import ActivationStore
    from featurescope.vision.store import read_positions

    images = tmp_path / "images"
    images.mkdir()
    wide = np.tile(sample_image("coffee")[:100, :400], (1, 7, 1))  # 2800 × 100: over 2048 px
    Image.fromarray(wide).save(images / "wide.png")
    harvest_images(ImageHarvestConfig(out=str(tmp_path / "acts"), images=str(images), model="tiny", layer=0,
                                      ctx_len=1200), model=model, progress=False)
    err = "\n".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert "1 image(s) larger than the processor's limit (2048 px longest edge)" in err and "wide.png" in err
    rec = read_positions(ActivationStore(tmp_path / "acts"), 0).records[0]
    assert rec["resized"] and rec["width"] == 2800 and max(rec["input_size"]) == 2048


def test_bad_inputs_fail_clearly_and_keep_what_was_written(model, tmp_path):
    from PIL import Image

    from featurescope.activations import ActivationStore

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FeaturescopeError, match="no images"):
        harvest_images(ImageHarvestConfig(out=str(tmp_path / "a"), images=str(empty), model="tiny"), model=model)
    images = write_images(tmp_path / "images", ("chelsea", "coffee"), captions=False)
    (images / "broken.png").write_bytes(b"not a png at all")
    out = tmp_path / "acts"
    with pytest.raises(FeaturescopeError, match=r"cannot decode image .*broken\.png"):
        harvest_images(ImageHarvestConfig(out=str(out), images=str(images), model="tiny", layer=0, ctx_len=1200),
                       model=model, progress=False)
    assert not out.exists(), "a bad file is found before anything is written"
    # a file whose header reads but whose data is cut: found mid-run, after a shard was written
    buf = images / "zz-truncated.png"
    Image.fromarray(sample_image("rocket")).save(buf)
    buf.write_bytes(buf.read_bytes()[:2000])
    (images / "broken.png").unlink()
    cfg = ImageHarvestConfig(out=str(out), images=str(images), model="tiny", layer=0, ctx_len=1200, shard_contexts=2)
    with pytest.raises(FeaturescopeError, match=r"cannot decode image .*zz-truncated\.png"):
        harvest_images(cfg, model=model, progress=False)
    kept = json.loads((out / "manifest.json").read_text())
    assert [s["contexts"] for s in kept["shards"]] == [2] and not kept["complete"]
    before = (out / "shard-00000.safetensors").read_bytes()
    buf.unlink()
    r = harvest_images(cfg, model=model, progress=False)
    assert (r.images, r.new_images) == (2, 0) and (out / "shard-00000.safetensors").read_bytes() == before
    assert ActivationStore(out).info.complete


def test_text_only_models_refuse_images(tmp_path):
    from featurescope.models import LanguageModel
    from featurescope.models.vision import as_vision_model, load_vision_model

    with pytest.raises(FeaturescopeError, match="smollm2 is a text-only model"):
        load_vision_model("smollm2")
    fake = LanguageModel.__new__(LanguageModel)
    fake.name, fake.family = "tiny-llama", "llama"
    with pytest.raises(FeaturescopeError, match="tiny-llama is a text-only model"):
        as_vision_model(fake)
    images = write_images(tmp_path / "images", ("coins",))
    with pytest.raises(FeaturescopeError, match="text-only"):
        harvest_images(ImageHarvestConfig(out=str(tmp_path / "acts"), images=str(images), model="x"), model=fake)
    assert not (tmp_path / "acts").exists()


def test_layout_of_qwen_and_llava_sequences():
    from featurescope.models.image_layout import family_layout

    ids = torch.tensor([1, 9, 9, 9, 9, 9, 9, 2, 9, 9, 9, 9])
    q = family_layout("qwen2_vl").locate(ids, 9, image_grid_thw=torch.tensor([[1, 4, 6], [1, 4, 4]]), merge_size=2)
    assert [p.grid for p in q] == [(2, 3), (2, 2)] and q[0].row.tolist() == [0, 0, 0, 1, 1, 1]
    assert q[1].positions.tolist() == [8, 9, 10, 11] and q[1].col.tolist() == [0, 1, 0, 1]
    with pytest.raises(FeaturescopeError, match="not a square"):
        family_layout("llava").locate(ids[:7], 9)

    class Clip:  # LLaVA-1.5's CLIP settings: shortest edge 336, centre crop 336
        do_resize, size, do_center_crop, crop_size, do_pad = True, {"shortest_edge": 336}, True, \
            {"height": 336, "width": 336}, False

    assert family_layout("llava").canvas(Clip(), (600, 400)) == pytest.approx((100.0, 0.0, 500.0, 400.0))
    Clip.do_pad = True
    assert family_layout("llava").canvas(Clip(), (600, 400)) == pytest.approx((0.0, -100.0, 600.0, 500.0))


def test_family_registry_owns_what_differs():
    from featurescope.models.image_layout import family_layout

    with pytest.raises(FeaturescopeError, match=r"^tiny: featurescope does not know the image-token layout of mllama "
                       r"models \(supported: llava, gemma3, paligemma, idefics3, smolvlm, qwen2_vl, qwen2_5_vl\)$"):
        family_layout("mllama", model="tiny")
    qwen, gemma, llava, smol = (family_layout(f) for f in ("qwen2_5_vl", "gemma3", "llava", "smolvlm"))
    assert qwen.placeholder("<|image_pad|>") == "<|vision_start|><|image_pad|><|vision_end|>"
    assert gemma.placeholder("<img>") == "<img>"
    assert qwen.nest(["a", "b"]) == ["a", "b"] and llava.nest(["a", "b"]) == [["a"], ["b"]]
    assert dict(gemma.processor_kwargs) == {"do_pan_and_scan": False} and not llava.processor_kwargs

    class Processor:
        size, max_pixels = {"longest_edge": 1536, "height": 384, "width": 512}, None

    assert smol.limit(Processor()).longest_edge == 1536 and qwen.limit(Processor()).max_pixels == 1536
    assert gemma.limit(Processor()).input_size == (512, 384)
    assert gemma.canvas(Processor(), (600, 400)) == (0.0, 0.0, 600.0, 400.0)

    class Vocab:  # the two lookups the tiled layout makes
        tokens = ("<pad>", "<global-img>", "<row_1_col_1>", "<image>", "hello")

        def convert_tokens_to_ids(self, token):
            return self.tokens.index(token)

        def convert_ids_to_tokens(self, i):
            return self.tokens[i]

    image = 3
    with pytest.raises(FeaturescopeError, match=r"^smolvlm: a run of image tokens at position 1 follows 'hello'"):
        smol.locate(torch.tensor([4, image, image, image, image]), image, tokenizer=Vocab())
    with pytest.raises(FeaturescopeError, match=r"^smolvlm: image tiles without their global image"):
        smol.locate(torch.tensor([2, image, image, image, image]), image, tokenizer=Vocab())
    (patches,) = smol.locate(torch.tensor([2, image, image, image, image, 1, image, image, image, image]), image,
                             tokenizer=Vocab())
    assert patches.grid == (2, 2) and patches.view.tolist() == [0] * 4 + [1] * 4
