"""Images for vision-language models: reading and fitting image inputs, the image part of activation stores,
encoding one image through model + SAE, generating given an image (docs/multimodal.md).

`inputs` reads and fits images; `store` reads the image part of a store (`featurescope.harvest.images` writes
them); `encode` runs one image through model + SAE; `steer` generates given an image. The models themselves
are `featurescope.models.vision` and `featurescope.models.image_layout`.
"""
