"""Steer a VLM's text generation given an image prompt: baseline and steered continuations, same seed.

The steering hook is the one of `featurescope.steering.hook` (clamp / add / conditional on block L); only the inputs
differ: the processor turns the image and the prompt into token ids (image placeholders included) and pixels.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from featurescope.errors import FeaturescopeError
from featurescope.models.language import LanguageModel
from featurescope.models.vision import as_vision_model
from featurescope.sae import SAE
from featurescope.steering.generate import Generation, decode, generation_kwargs
from featurescope.steering.hook import attach, make_hook
from featurescope.steering.values import MaxActivations
from featurescope.vision.encode import fit_image


@torch.inference_mode()
def _generate(model: LanguageModel, inputs: dict[str, Tensor], kwargs: Mapping[str, Any], seed: int) -> Tensor:
    torch.manual_seed(seed)
    out = model.hf.generate(**inputs, **kwargs)
    return out[0, inputs["input_ids"].shape[1]:]


def generate_with_image(model: LanguageModel, sae: SAE, prompt: str, image: str | Path | Any,
                        features: Mapping[int, Any], *, mode: str = "clamp",
                        max_acts: MaxActivations | str | Any | None = None, max_new_tokens: int = 60, seed: int = 0,
                        chat: bool = False, temperature: float = 0.0, layer: int | None = None,
                        skip_special: bool = True) -> Generation:
    """Continue `image` + `prompt` without and with steering (`features`, `mode` as in `featurescope.steer`)."""
    vlm = as_vision_model(model)
    if not isinstance(prompt, str):
        raise FeaturescopeError("the prompt must be text")
    hook, layer = make_hook(vlm, sae, features, mode=mode, max_acts=max_acts, layer=layer, skip_special=skip_special)
    fitted = fit_image(image, vlm)
    text = vlm.prompt(prompt, chat=chat, generation=chat)
    inputs = vlm.prepare([fitted.image], [text], chat=chat)
    kwargs = generation_kwargs(vlm, max_new_tokens=max_new_tokens, temperature=temperature)
    baseline = _generate(vlm, inputs, kwargs, seed)
    with attach(vlm, hook, layer):
        steered = _generate(vlm, inputs, kwargs, seed)
    values = {i: float(v) for i, v in zip(hook.features, hook.values.tolist(), strict=True)}
    return Generation(decode(vlm, baseline), decode(vlm, steered), text, values)
