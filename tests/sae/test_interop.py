"""SAE formats: our save/load, export to SAELens and sparsify, and reading their folders.

Every architecture, with nonzero biases and input_scale ≠ 1 on inputs of norm ~5,000 (Gemma's residual
stream): encode/decode in raw units must agree before save, after save+load, after export+load_any, and
with the peer library's own code (run by the peers' Python in one subprocess, tests/interop_peer.py).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from featurescope import SAE, FeaturescopeError, SAEConfig
from featurescope.sae.io import detect_format, export, load_any

REPO = Path(__file__).resolve().parents[2]
PEERS_PYTHON = Path(os.environ.get("FEATURESCOPE_PEERS_PYTHON", REPO / ".venv-peers" / "bin" / "python"))
PEER_SCRIPT = REPO / "tests" / "interop_peer.py"

D_IN, D_SAE, K, N_ROWS = 32, 128, 6, 64
NORM = 5000.0
SCALE = math.sqrt(D_IN) / NORM
"""input_scale of our test SAEs: E‖x‖ = √d_in after scaling."""
ARCHS = ("relu", "topk", "batchtopk", "jumprelu")
OURS = [(a, b) for a in ARCHS for b in (True, False)]
EXPORTS = [(a, b, "saelens") for a, b in OURS] + [("topk", b, "sparsify") for b in (True, False)]
SAELENS_MADE = {  # kind -> the architecture it must load as
    "standard": "relu", "standard_no_b_dec": "relu", "topk_rescaled": "topk", "jumprelu": "jumprelu",
    "batchtopk_inference": "batchtopk", "batchtopk_checkpoint": "batchtopk",
    "topk_scaled_checkpoint": "topk", "whitened_checkpoint": "relu", "pre6_topk": "topk",
}
SPARSIFY_MADE = ("num_latents", "expansion_factor")


def raw_inputs() -> Tensor:
    """Fixed activations of norm ~5,000 with a large common offset, like a residual stream."""
    g = torch.Generator().manual_seed(1234)
    offset = torch.randn(D_IN, generator=g) * 0.5
    return ((torch.randn(N_ROWS, D_IN, generator=g) + offset) * NORM / math.sqrt(D_IN)).float()


@torch.no_grad()
def make_ours(arch: str, apply_b_dec: bool) -> SAE:
    """A freshly created SAE made non-trivial: untied, uneven decoder norms, nonzero biases, scaled input."""
    cfg = SAEConfig(d_in=D_IN, d_sae=D_SAE, architecture=arch, k=K if "topk" in arch else None,
                    apply_b_dec_to_input=apply_b_dec, model="test-model", layer=4)
    sae = SAE.create(cfg, seed=3)
    g = torch.Generator().manual_seed(ARCHS.index(arch) * 2 + apply_b_dec)
    sae.W_enc_rows.add_(0.3 * torch.randn(D_SAE, D_IN, generator=g))
    sae.W_dec.mul_(0.5 + torch.rand(D_SAE, 1, generator=g))
    sae.b_enc.copy_(0.2 * torch.randn(D_SAE, generator=g))
    sae.b_dec.copy_(0.3 * torch.randn(D_IN, generator=g))
    sae.input_scale.fill_(SCALE)
    if arch == "jumprelu":
        sae.log_threshold.copy_((0.05 + 0.35 * torch.rand(D_SAE, generator=g)).log())
    if arch == "batchtopk":
        sae.threshold.fill_(0.25)
    return sae.eval()


@torch.no_grad()
def outputs(sae: SAE, x: Tensor) -> tuple[Tensor, Tensor]:
    f = sae.encode(x)
    return f, sae.decode(f)


def assert_close(got: Tensor | np.ndarray, want: Tensor | np.ndarray, what: str, rel: float = 2e-6) -> None:
    """Equal up to float32 rounding of folded weights: |got − want| ≤ rel · max(1, max|want|)."""
    got_t, want_t = torch.as_tensor(got).double(), torch.as_tensor(want).double()
    assert got_t.shape == want_t.shape, f"{what}: shape {tuple(got_t.shape)} != {tuple(want_t.shape)}"
    tol = rel * max(1.0, float(want_t.abs().max()))
    err = float((got_t - want_t).abs().max())
    assert err <= tol, f"{what}: max |diff| {err:.3g} > {tol:.3g}"


def check_same(sae: SAE, ref: tuple[Tensor | np.ndarray, Tensor | np.ndarray], x: Tensor, what: str) -> None:
    f, x_hat = outputs(sae, x)
    assert_close(f, ref[0], f"{what}: feature activations")
    assert_close(x_hat, ref[1], f"{what}: reconstructions")
    assert int((f != 0).sum()) > N_ROWS, f"{what}: too few active features to mean anything"


# -- ours, no peer needed -------------------------------------------------------------------------------
@pytest.mark.parametrize(("arch", "apply_b_dec"), OURS)
def test_save_load_is_exact(arch: str, apply_b_dec: bool, tmp_path: Path) -> None:
    sae, x = make_ours(arch, apply_b_dec), raw_inputs()
    f, x_hat = outputs(sae, x)
    assert float((x_hat - x).norm(dim=1).mean()) < 10 * NORM, "decode is not in raw units"
    loaded = SAE.load(sae.save(tmp_path / "sae"))
    assert type(loaded) is type(sae) and loaded.cfg == sae.cfg
    f2, x_hat2 = outputs(loaded, x)
    assert torch.equal(f, f2) and torch.equal(x_hat, x_hat2)


@pytest.mark.parametrize(("arch", "apply_b_dec", "fmt"), EXPORTS)
def test_export_then_load_any(arch: str, apply_b_dec: bool, fmt: str, tmp_path: Path) -> None:
    sae, x = make_ours(arch, apply_b_dec), raw_inputs()
    out = export(sae, tmp_path / fmt, fmt)
    assert detect_format(out) == fmt
    back = load_any(out)
    assert back.cfg.architecture == arch, "the architecture is part of the format"
    assert back.cfg.k == sae.cfg.k
    check_same(back, outputs(sae, x), x, f"{arch} via {fmt}")
    if fmt == "saelens":
        assert (back.cfg.layer, back.cfg.model) == (4, "test-model")


@pytest.mark.parametrize("arch", ["relu", "batchtopk", "jumprelu"])
def test_export_to_sparsify_refuses_other_architectures(arch: str, tmp_path: Path) -> None:
    with pytest.raises(FeaturescopeError, match=r"saelens.*only topk"):
        export(make_ours(arch, False), tmp_path / "out", "sparsify")
    assert not (tmp_path / "out").exists()


def test_export_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(FeaturescopeError, match="unknown export format"):
        export(make_ours("topk", True), tmp_path / "out", "onnx")  # type: ignore[arg-type]


def test_export_does_not_clobber(tmp_path: Path) -> None:
    sae, out = make_ours("topk", True), tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FeaturescopeError, match="not empty"):
        export(sae, out, "saelens")
    assert (out / "keep.txt").read_text() == "mine"
    with pytest.raises(FeaturescopeError, match="not an exported SAE"):  # --overwrite replaces only an SAE
        export(sae, out, "sparsify", overwrite=True)
    assert (out / "keep.txt").read_text() == "mine"
    (out / "keep.txt").unlink()
    export(sae, out, "saelens")
    export(sae, out, "sparsify", overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["cfg.json", "sae.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"], "temporary folders left behind"
    empty = tmp_path / "empty"
    empty.mkdir()
    export(sae, empty, "saelens")
    assert detect_format(empty) == "saelens"


def test_formats_told_apart_by_content(tmp_path: Path) -> None:
    """Ours and sparsify's use the same two file names; each must load as what it is."""
    ours, x = make_ours("topk", False), raw_inputs()
    ours.save(tmp_path / "ours")
    export(ours, tmp_path / "theirs", "sparsify")
    names = {p.name for p in (tmp_path / "ours").iterdir()}
    assert names == {p.name for p in (tmp_path / "theirs").iterdir()} == {"cfg.json", "sae.safetensors"}
    assert detect_format(tmp_path / "ours") == "featurescope"
    assert detect_format(tmp_path / "theirs") == "sparsify"
    a, b = SAE.load(tmp_path / "ours"), SAE.load(tmp_path / "theirs")
    assert a.cfg.apply_b_dec_to_input is False and float(a.input_scale) == pytest.approx(SCALE)
    assert b.cfg.apply_b_dec_to_input is True and float(b.input_scale) == 1.0
    assert b.cfg.extra["source"] == "sparsify"
    check_same(b, outputs(a, x), x, "sparsify beside ours")


def test_sparsify_run_folder(tmp_path: Path) -> None:
    """A sparsify trainer run: config.json plus one folder per hookpoint; one loads, several must be named."""
    run = tmp_path / "run"
    export(make_ours("topk", True), run / "layers.9", "sparsify")
    (run / "config.json").write_text(json.dumps({"model": "HuggingFaceTB/SmolLM2-135M", "hookpoints": []}))
    (run / "best").mkdir()  # holds no cfg.json: not an SAE folder
    sae = load_any(run)
    assert (sae.cfg.hook, sae.cfg.layer, sae.cfg.model) == ("layers.9", 9, "HuggingFaceTB/SmolLM2-135M")
    export(make_ours("topk", False), run / "layers.10", "sparsify")
    with pytest.raises(FeaturescopeError, match=r"2 SAE folders \(layers\.10, layers\.9\)"):
        load_any(run)
    assert load_any(run / "layers.10").cfg.layer == 10


# -- bad input ------------------------------------------------------------------------------------------
def _saved(tmp_path: Path, fmt: str) -> Path:
    sae = make_ours("topk", True)
    return sae.save(tmp_path / "sae") if fmt == "featurescope" else export(sae, tmp_path / "sae", fmt)


def _weights(folder: Path) -> Path:
    return next(folder.glob("*.safetensors"))


def test_empty_or_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(FeaturescopeError, match="not an SAE folder"):
        load_any(tmp_path)
    with pytest.raises(FeaturescopeError, match="no such folder"):
        load_any(tmp_path / "nope")


@pytest.mark.parametrize("fmt", ["featurescope", "saelens", "sparsify"])
def test_cfg_not_json(fmt: str, tmp_path: Path) -> None:
    folder = _saved(tmp_path, fmt)
    (folder / "cfg.json").write_text('{"d_in": 32,')
    with pytest.raises(FeaturescopeError, match="not valid JSON"):
        load_any(folder)
    (folder / "cfg.json").write_text("[1, 2]")
    with pytest.raises(FeaturescopeError, match="expected a JSON object"):
        load_any(folder)


@pytest.mark.parametrize("fmt", ["featurescope", "saelens", "sparsify"])
def test_truncated_weights(fmt: str, tmp_path: Path) -> None:
    folder = _saved(tmp_path, fmt)
    weights = _weights(folder)
    data = weights.read_bytes()
    for cut in (6, len(data) // 2, len(data) - 4):
        weights.write_bytes(data[:cut])
        with pytest.raises(FeaturescopeError, match="not a readable safetensors file"):
            load_any(folder)


@pytest.mark.parametrize("fmt", ["featurescope", "saelens", "sparsify"])
def test_missing_weights(fmt: str, tmp_path: Path) -> None:
    folder = _saved(tmp_path, fmt)
    _weights(folder).unlink()
    with pytest.raises(FeaturescopeError, match=r"\.safetensors: no such file"):
        load_any(folder)


@pytest.mark.parametrize(("fmt", "name"), [("featurescope", "W_dec"), ("saelens", "W_enc"),
                                           ("sparsify", "encoder.weight"), ("saelens", "b_dec")])
def test_shape_mismatch(fmt: str, name: str, tmp_path: Path) -> None:
    folder = _saved(tmp_path, fmt)
    weights = _weights(folder)
    tensors = load_file(weights)
    tensors[name] = tensors[name][..., :-1].contiguous()
    save_file(tensors, weights)
    with pytest.raises(FeaturescopeError, match=f"{name}.*shape"):
        load_any(folder)


def _edit_cfg(folder: Path, **changes: object) -> None:
    cfg = json.loads((folder / "cfg.json").read_text())
    cfg.update(changes)
    (folder / "cfg.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize(("fmt", "changes", "match"), [
    ("featurescope", {"format": "someone.else"}, "unknown SAE format"),
    ("featurescope", {"version": 99}, "newer"),
    ("featurescope", {"d_sae": 64}, "shape"),
    ("saelens", {"architecture": "gated"}, "'gated' is not supported"),
    ("saelens", {"normalize_activations": "layer_norm"}, "cannot represent"),
    ("saelens", {"normalize_activations": "expected_average_only_in"}, "input scale .* unknown"),
    ("saelens", {"d_sae": 64}, "shape"),
    ("sparsify", {"transcode": True}, "transcoder"),
    ("sparsify", {"skip_connection": True}, "skip connection"),
    ("sparsify", {"activation": "groupmax"}, "groupmax"),
    ("sparsify", {"num_latents": 0, "expansion_factor": 2}, "shape"),
    ("sparsify", {"k": 0}, "k must be a positive integer"),
])
def test_bad_configs(fmt: str, changes: dict, match: str, tmp_path: Path) -> None:
    folder = _saved(tmp_path, fmt)
    _edit_cfg(folder, **changes)
    with pytest.raises(FeaturescopeError, match=match):
        load_any(folder)


def test_unrecognised_cfg(tmp_path: Path) -> None:
    (tmp_path / "cfg.json").write_text(json.dumps({"hidden_size": 32}))
    (tmp_path / "sae.safetensors").write_bytes(b"")
    with pytest.raises(FeaturescopeError, match="not an SAE folder"):
        load_any(tmp_path)


# -- the peers' own code --------------------------------------------------------------------------------
@dataclass
class PeerRun:
    x: Tensor
    root: Path

    def result(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        return np.load(self.root / f"{name}.f.npy"), np.load(self.root / f"{name}.xhat.npy")


@pytest.fixture(scope="module")
def peers(tmp_path_factory: pytest.TempPathFactory) -> PeerRun:
    """Export our SAEs, run the peers on them, and let the peers make their own; one subprocess."""
    if not PEERS_PYTHON.exists():
        pytest.skip(f"peer libraries not installed ({PEERS_PYTHON} missing): `make peers` creates that venv "
                    "(or set FEATURESCOPE_PEERS_PYTHON)")
    root = tmp_path_factory.mktemp("peers")
    x = raw_inputs()
    np.save(root / "x.npy", x.numpy())
    jobs = []
    for arch, apply_b_dec, fmt in EXPORTS:
        name = f"ours_{arch}_{apply_b_dec}_{fmt}"
        export(make_ours(arch, apply_b_dec), root / name, fmt)
        jobs.append({"op": f"run_{fmt}", "folder": str(root / name), "out": str(root / name)})
    for kind in SAELENS_MADE:
        jobs.append({"op": "make_saelens", "kind": kind, "folder": str(root / f"saelens_{kind}"),
                     "out": str(root / f"saelens_{kind}")})
    for kind in SPARSIFY_MADE:
        folder = root / f"sparsify_{kind}" / "layers.3"
        jobs.append({"op": "make_sparsify", "kind": kind, "folder": str(folder),
                     "out": str(root / f"sparsify_{kind}")})
    spec = {"x": str(root / "x.npy"), "d_sae": D_SAE, "k": K, "scale": 1.0 / NORM, "jobs": jobs}
    (root / "jobs.json").write_text(json.dumps(spec))
    proc = subprocess.run([str(PEERS_PYTHON), str(PEER_SCRIPT), str(root / "jobs.json")], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONHASHSEED": "0"})
    assert proc.returncode == 0, f"peer script failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return PeerRun(x, root)


@pytest.mark.parametrize(("arch", "apply_b_dec", "fmt"), EXPORTS)
def test_peer_reads_our_export(peers: PeerRun, arch: str, apply_b_dec: bool, fmt: str) -> None:
    sae = make_ours(arch, apply_b_dec)
    f_peer, x_hat_peer = peers.result(f"ours_{arch}_{apply_b_dec}_{fmt}")
    check_same(sae, (f_peer, x_hat_peer), peers.x, f"{fmt}'s own loader on our {arch}")


@pytest.mark.parametrize("kind", list(SAELENS_MADE))
def test_saelens_made_loads(peers: PeerRun, kind: str) -> None:
    folder = peers.root / f"saelens_{kind}"
    assert detect_format(folder) == "saelens"
    sae = SAE.load(folder)
    assert sae.cfg.architecture == SAELENS_MADE[kind]
    check_same(sae, peers.result(f"saelens_{kind}"), peers.x, f"SAELens {kind}")
    if kind == "pre6_topk":
        want = ("blocks.3.hook_resid_pre", 2, "gpt2", K)
        assert (sae.cfg.hook, sae.cfg.layer, sae.cfg.model, sae.cfg.k) == want
    if kind == "standard_no_b_dec":
        assert sae.cfg.apply_b_dec_to_input is False


@pytest.mark.parametrize("kind", SPARSIFY_MADE)
def test_sparsify_made_loads(peers: PeerRun, kind: str) -> None:
    run = peers.root / f"sparsify_{kind}"
    assert detect_format(run / "layers.3") == "sparsify"
    sae = SAE.load(run)  # the run folder: its one hookpoint subfolder loads
    assert (sae.cfg.architecture, sae.cfg.k, sae.cfg.d_sae, sae.cfg.layer) == ("topk", K, D_SAE, 3)
    check_same(sae, peers.result(f"sparsify_{kind}"), peers.x, f"sparsify {kind}")
