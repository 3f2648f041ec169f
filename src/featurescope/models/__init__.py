"""Models: load a causal LM or a vision-language model and read or replace its residual stream after block L.

- `load`: `load_model(name)`, by built-in name, local folder, .gguf file or hub id (a VLM folder loads as one).
- `language`: `LanguageModel`, the wrapper every stage uses (`residual`, `splice`, `capture`).
- `vision`: `VisionLanguageModel`, the same interface plus images; `image_layout`: each VLM family's layout
  (where its patches sit, its processor's inputs).
- `cache`: the built-in models and the GGUF → safetensors cache.
"""

from featurescope.models.language import LanguageModel, ModelInfo, default_device
from featurescope.models.load import load_model

__all__ = ["LanguageModel", "ModelInfo", "default_device", "load_model"]
