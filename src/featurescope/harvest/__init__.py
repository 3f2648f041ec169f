"""Harvest: run a model over text or images and write its residual stream at layer L to an activation store
(format: docs/formats/activation-store.md; `featurescope.activations` reads it).

- `text`: `harvest(HarvestConfig(...))`, the one-process text harvest (hands over to `sharded` on several ranks).
- `sharded`: the same harvest on N ranks, each running the model over its own shards of the corpus.
- `writer`: what both write: the settings, the manifest and the shards (each written atomically, then recorded).
- `heldout`: the held-out documents of a corpus and the one deterministic context stream that interleaves them.
- `images`: `harvest_images(ImageHarvestConfig(...))`, a VLM over images with per-position patch bookkeeping.
"""

from featurescope.harvest.images import ImageHarvestConfig, ImageHarvestResult, harvest_images
from featurescope.harvest.text import HarvestConfig, HarvestResult, harvest

__all__ = ["HarvestConfig", "HarvestResult", "ImageHarvestConfig", "ImageHarvestResult", "harvest", "harvest_images"]
