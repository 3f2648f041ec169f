"""Load an image-text-to-text model (Gemma 3, SmolVLM / Idefics3, LLaVA, Qwen2-VL) with its own processor, and read
or replace its language model's residual stream after block L — the same `LanguageModel` interface, plus images.

`load_vision_model(name)` takes a local Hugging Face folder or a hub id and loads it through transformers'
`AutoProcessor` and `AutoModelForImageTextToText`. Text-only inputs go through `residual`, `splice` and
`capture` exactly as for a text model; inputs with images are built by `prepare` and read by `residual_inputs`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from featurescope.errors import FeaturescopeError
from featurescope.models.cache import BUILTIN_MODELS
from featurescope.models.image_layout import ImagePatches, Limit, family_layout, runs
from featurescope.models.language import LanguageModel, default_device, resolve_dtype

if TYPE_CHECKING:
    from transformers import PreTrainedModel

EXAMPLE_MODEL = "google/gemma-3-4b-it"
_STRUCTURE_ATTRS = ("fake_image_token_id", "global_image_token_id", "boi_token_id", "eoi_token_id",
                    "boi_token_index", "eoi_token_index", "vision_start_token_id", "vision_end_token_id")


def _text_only(name: str, model_type: str) -> FeaturescopeError:
    return FeaturescopeError(f"{name} is a text-only model ({model_type}): it cannot read images; use an "
                             f"image-text-to-text model such as {EXAMPLE_MODEL}")


def is_vision_language(folder: str | Path) -> bool:
    """True if the model at `folder` (local folder or hub id) has a vision tower (a `vision_config`)."""
    path = Path(folder)
    if path.is_dir():
        try:
            return "vision_config" in json.loads((path / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
    try:
        from transformers import AutoConfig

        return getattr(AutoConfig.from_pretrained(str(folder)), "vision_config", None) is not None
    except (OSError, ValueError):
        return False


class VisionLanguageModel(LanguageModel):
    """A VLM: its language model's blocks as a `LanguageModel`, plus the processor that turns images into tokens.

    Image-placeholder positions carry the vision tower's patch embeddings; they are not special positions
    (`special_ids` leaves the image token out), so harvesting, analysis and steering treat them like text.
    Tokens that only frame an image (tile and global-image markers, begin/end-of-image) are special.
    """

    def __init__(self, hf_model: PreTrainedModel, processor: Any, name: str, source: str) -> None:
        super().__init__(hf_model, processor.tokenizer, name=name, source=source)
        self.processor = processor
        cfg = hf_model.config
        self.vision_family = str(cfg.model_type)
        self.layout = family_layout(self.vision_family, model=name)
        token = next((v for a in ("image_token_id", "image_token_index") if isinstance(v := getattr(cfg, a, None),
                                                                                       int)), None)
        if token is None:
            token = getattr(processor, "image_token_id", None)
        if not isinstance(token, int):
            raise FeaturescopeError(f"{name}: cannot tell which token id stands for an image patch")
        self.image_token_id = token

    # -- tokens --------------------------------------------------------------------------------
    @property
    def structure_ids(self) -> set[int]:
        """Token ids that frame images (markers, begin/end of image, tile tags): never analysed."""
        ids: set[int] = set()
        for obj in (self.processor, self.tokenizer, self.hf.config):
            for attr in _STRUCTURE_ATTRS:
                value = getattr(obj, attr, None)
                if isinstance(value, int):
                    ids.add(value)
        ids.update(i for i in getattr(self.processor, "row_col_ids", []) or [] if isinstance(i, int))
        unk = getattr(self.tokenizer, "unk_token_id", None)
        return {i for i in ids if i != unk and i != self.image_token_id}

    @property
    def special_ids(self) -> set[int]:
        return (super().special_ids | self.structure_ids) - {self.image_token_id}

    @property
    def limit(self) -> Limit:
        """The largest image the processor uses as it is (larger ones are downscaled first, and reported)."""
        return self.layout.limit(self.processor.image_processor)

    def placeholder(self) -> str:
        """The text that stands for one image in a raw prompt."""
        return self.layout.placeholder(self.processor.image_token)

    def prompt(self, text: str, *, chat: bool, generation: bool = False) -> str:
        """A prompt of one image then `text`: raw, or one user turn in the processor's chat template."""
        if not chat:
            return self.placeholder() + text
        if not getattr(self.processor, "chat_template", None):
            raise FeaturescopeError(f"{self.name} has no chat template: use the raw prompt format")
        content: list[dict[str, str]] = [{"type": "image"}]
        if text:
            content.append({"type": "text", "text": text})
        try:
            return self.processor.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                                      add_generation_prompt=generation)
        except Exception as e:  # a template error (jinja raises many kinds): one line, the raw format suggested
            raise FeaturescopeError(f"{self.name}: its chat template cannot hold an image ({type(e).__name__}: "
                                    f"{str(e).splitlines()[0] if str(e) else ''}); use the raw prompt format") from None

    def chat_ready(self) -> bool:
        """True if the processor has a chat template that takes an image."""
        if not getattr(self.processor, "chat_template", None):
            return False
        try:
            self.prompt("x", chat=True)
        except FeaturescopeError:
            return False
        return True

    # -- inputs --------------------------------------------------------------------------------
    def prepare(self, images: list[Any], prompts: list[str], *, chat: bool) -> dict[str, Tensor]:
        """Processor outputs (padded on the right) for one image per prompt, on the model's device."""
        nested = self.layout.nest(images)
        kwargs: dict[str, Any] = {"padding": True, "padding_side": "right", "return_tensors": "pt",
                                  **self.layout.processor_kwargs}
        if chat:
            kwargs["add_special_tokens"] = False
        try:
            batch = self.processor(images=nested, text=prompts, **kwargs)
        except (ValueError, TypeError) as e:
            raise FeaturescopeError(f"{self.name}: the processor refused the inputs: {str(e).splitlines()[0]}"
                                    ) from None
        out = {}
        for key, value in batch.items():
            if isinstance(value, Tensor):
                value = value.to(self.device)
                out[key] = value.to(self.dtype) if value.is_floating_point() else value
        return out

    def patches(self, inputs: dict[str, Tensor], index: int) -> list[ImagePatches]:
        """The image patches of sequence `index` of `inputs` (from `prepare`)."""
        ids = inputs["input_ids"][index].cpu()
        grid = inputs.get("image_grid_thw")
        if grid is not None:
            before = sum(len(runs(inputs["input_ids"][j].cpu(), self.image_token_id)) for j in range(index))
            grid = grid.cpu()[before:before + len(runs(ids, self.image_token_id))]
        merge = int(getattr(self.processor.image_processor, "merge_size", 2) or 2)
        return self.layout.locate(ids, self.image_token_id, tokenizer=self.tokenizer, image_grid_thw=grid,
                                  merge_size=merge)

    def canvas(self, size: tuple[int, int]) -> tuple[float, float, float, float]:
        """The box of an image of `size` (w, h) that its patch grid (view 0) covers."""
        return self.layout.canvas(self.processor.image_processor, size)

    # -- forward passes ------------------------------------------------------------------------
    @torch.inference_mode()
    def residual_inputs(self, inputs: dict[str, Tensor], layer: int) -> Tensor:
        """Residual stream after block `layer` for processor inputs, [batch, seq, d_model]; later blocks never run."""
        return self.residual_of(inputs, layer)


def load_vision_model(name: str, *, device: str = "auto", dtype: str | torch.dtype | None = None
                      ) -> VisionLanguageModel:
    """Load a VLM from a local Hugging Face folder or a hub id with its processor (AutoProcessor)."""
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    if not name:
        raise FeaturescopeError("no model given")
    if name in BUILTIN_MODELS:
        raise _text_only(name, "built-in causal LM")
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        raise _text_only(name, "GGUF causal LM")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FeaturescopeError(f"{path}: not a Hugging Face model folder (no config.json)")
        folder, source = str(path), f"local:{path.resolve()}"
    elif path.exists():
        raise FeaturescopeError(f"{path}: expected a model folder")
    elif "/" in name and not name.startswith((".", "/")):
        folder, source = name, f"hub:{name}"
    else:
        raise FeaturescopeError(f"unknown model {name!r}: use a local model folder or a Hugging Face hub id (org/name)")
    device = default_device() if device == "auto" else device
    try:
        config = AutoConfig.from_pretrained(folder)
        if getattr(config, "vision_config", None) is None:
            raise _text_only(name, str(getattr(config, "model_type", "unknown")))
        processor = AutoProcessor.from_pretrained(folder)
        hf_model = AutoModelForImageTextToText.from_pretrained(folder, dtype=resolve_dtype(dtype, device))
    except OSError as e:
        where = "from the Hugging Face hub" if source.startswith("hub:") else f"from {folder}"
        raise FeaturescopeError(f"cannot load {name!r} {where}: {str(e).splitlines()[0]}") from None
    except ValueError as e:
        raise FeaturescopeError(f"cannot load model {name!r}: {str(e).splitlines()[0]}") from None
    if not hasattr(processor, "image_processor") or not hasattr(processor, "tokenizer"):
        raise _text_only(name, str(config.model_type))
    hf_model.to(device)  # type: ignore[arg-type]  # transformers' @wraps(nn.Module.to) types it unbound
    return VisionLanguageModel(hf_model, processor, name=name, source=source)


def as_vision_model(model: LanguageModel) -> VisionLanguageModel:
    """`model` if it reads images, else a one-line error."""
    if isinstance(model, VisionLanguageModel):
        return model
    raise _text_only(model.name, model.family)
