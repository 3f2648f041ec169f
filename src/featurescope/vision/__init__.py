"""Vision-language models: loading, image inputs, image harvest with patch bookkeeping.

`models` loads image-text-to-text models; `layout` maps image tokens to patches; `inputs` reads and fits
images; `harvest` writes image stores; `store` reads their image part; `encode` runs one
image through model + SAE; `steer` generates given an image (docs/multimodal.md).
"""
