"""Images for vision-language models: reading and fitting image inputs, the image part of activation stores, and
one image through model + SAE (docs/multimodal.md).

`inputs` reads and fits images; `store` reads the image part of a store (`featurescope harvest-images` writes
them); `encode` runs one image through model + SAE. The models themselves are `featurescope.models.vision` and
`featurescope.models.image_layout`; steering's `images` generates given an image.
"""
