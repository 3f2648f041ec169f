"""Tiny randomly initialised VLMs built offline from real transformers configs and processor classes, and sample
images from scikit-image.

- SmolVLM (Idefics3): SmolLM2's tokenizer (the built-in `smollm2`) with SmolVLM's added image tokens, the PIL
  Idefics3 image processor with SmolVLM-256M's settings (tiles of 512 px, images up to 2048 px longest edge,
  64 tokens per tile), a 1-layer SigLIP-style vision tower of 512 px / 16 px patches and pixel-shuffle 4.
- Gemma 3: Gemma 3's tokenizer (the built-in `default`) with its image tokens, the PIL Gemma 3 image processor
  with Gemma 3 4B's settings (896 × 896, 256 tokens per image), a 1-layer SigLIP of 896 px / 14 px patches.

The language models are 2 blocks of width 64; every weight is random (seeded).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

SAMPLES = ("astronaut", "camera", "chelsea", "coffee", "rocket", "coins", "moon", "clock")
CAPTIONS = {"astronaut": "An astronaut in a space suit.", "camera": "A man with a camera.",
            "chelsea": "A cat.", "coffee": "A cup of coffee.", "rocket": "A rocket on the launch pad.",
            "coins": "Old coins.", "moon": "The surface of the moon.", "clock": "A clock."}


def sample_image(name: str) -> np.ndarray:
    """A scikit-image sample as uint8 RGB [H, W, 3]."""
    import skimage.data

    arr = np.asarray(getattr(skimage.data, name)())
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    return np.ascontiguousarray(arr[..., :3].astype(np.uint8))


def write_images(folder: Path, names: tuple[str, ...] = SAMPLES, *, captions: bool = True) -> Path:
    """The sample images as PNG files (with NAME.txt captions) in `folder`."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.fromarray(sample_image(name)).save(folder / f"{name}.png")
        if captions:
            (folder / f"{name}.txt").write_text(CAPTIONS.get(name, name), encoding="utf-8")
    return folder


def smolvlm() -> tuple[torch.nn.Module, object]:
    """(model, processor) of a tiny Idefics3ForConditionalGeneration with SmolVLM's processor settings."""
    from transformers import AutoTokenizer, Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    from featurescope.models.cache import resolve_builtin

    tok = AutoTokenizer.from_pretrained(str(resolve_builtin("smollm2")))
    extra = ["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"]
    extra += [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]
    tok.add_special_tokens({"additional_special_tokens": extra})
    image_processor = Idefics3ImageProcessorPil(
        do_image_splitting=True, max_image_size={"longest_edge": 512}, size={"longest_edge": 2048},
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5], resample=1)
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tok, image_seq_len=64)
    config = Idefics3Config(
        text_config={"model_type": "llama", "vocab_size": len(tok), "hidden_size": 64, "intermediate_size": 128,
                     "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                     "max_position_embeddings": 8192, "tie_word_embeddings": True,
                     "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
                     "pad_token_id": tok.pad_token_id},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 512, "patch_size": 16},
        scale_factor=4, image_token_id=tok.convert_tokens_to_ids("<image>"), tie_word_embeddings=True)
    torch.manual_seed(0)
    from transformers import Idefics3ForConditionalGeneration as Model

    assert Model is Idefics3ForConditionalGeneration
    return Model(config).eval(), processor


def gemma3() -> tuple[torch.nn.Module, object]:
    """(model, processor) of a tiny Gemma3ForConditionalGeneration with Gemma 3 4B's processor settings."""
    from transformers import AutoTokenizer, Gemma3Config, Gemma3ForConditionalGeneration, Gemma3Processor
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    from featurescope.models.cache import resolve_builtin

    tok = AutoTokenizer.from_pretrained(
        str(resolve_builtin("default")),
        extra_special_tokens={"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                              "image_token": "<image_soft_token>"})
    image_processor = Gemma3ImageProcessorPil(
        size={"height": 896, "width": 896}, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5], resample=2,
        do_pan_and_scan=False)
    processor = Gemma3Processor(image_processor=image_processor, tokenizer=tok, image_seq_length=256)
    config = Gemma3Config(
        text_config={"vocab_size": 262208, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32, "sliding_window": 512,
                     "max_position_embeddings": 4096},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 896, "patch_size": 14},
        mm_tokens_per_image=256, image_token_index=tok.image_token_id, boi_token_index=tok.boi_token_id,
        eoi_token_index=tok.eoi_token_id)
    torch.manual_seed(0)
    model = Gemma3ForConditionalGeneration(config).eval()
    with torch.no_grad():  # transformers initialises the projector to zeros: every image would look the same
        weight = model.model.multi_modal_projector.mm_input_projection_weight
        weight.normal_(0.0, weight.shape[0] ** -0.5)
    return model, processor


def vision_model(kind: str, name: str = "tiny"):
    """The tiny model of `kind` (smolvlm or gemma3) as a featurescope VisionLanguageModel, fp32 on CPU."""
    from featurescope.models.vision import VisionLanguageModel

    hf, processor = {"smolvlm": smolvlm, "gemma3": gemma3}[kind]()
    return VisionLanguageModel(hf, processor, name=name, source=f"test:{kind}")
