"""Vision-language models: loading, image inputs, the image part of activation stores.

`models` loads image-text-to-text models; `layout` maps image tokens to patches; `inputs` reads and fits
images; `store` reads the image part of a store (`featurescope.harvest.images` writes them); `encode` runs one
image through model + SAE; `steer` generates given an image (docs/multimodal.md).
"""
