"""The feature database: one SQLite file with everything `analyze` found about every feature, and the tables later
stages add beside it (schemas in docs/formats/features-db*.md).

- `core`: the tables `analyze` writes (`create_db`), the read-only reader `FeatureStore`, `update_db` for
  writers that add tables to a finished database.
- `check`: the cheap whole-file check run before anything reads a database.
- `probes`: the multilingual and safety probes' tables.
- `images`: the image tables (top images with per-patch activations, the modality score, the image probe).
"""

from featurescope.featuredb.core import FeatureStore, create_db, update_db

__all__ = ["FeatureStore", "create_db", "update_db"]
