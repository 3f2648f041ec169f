"""Train: fit a sparse autoencoder to an activation source, with atomic checkpoints and exact resume (docs/training.md).

- `config`: `TrainConfig` (the run's settings) and `Plan` (the same with every default resolved against the data).
- `loop`: `train(TrainConfig(...))`, the training loop; hands over to several ranks under torchrun.
- `setup`: defaults, validation, input scaling and the evaluation sample the loop uses.
- `layout`: where rows and features live (one process); `data_parallel` and `feature_shard` split them.
- `checkpoint`: the checkpoint folder (written atomically) that a rerun resumes from.
- `family`: `train_family(cfg, members(cfg, {"k": [16, 32]}))`, several SAEs on one pass over the data.
- `global_topk`, `gathered_file`: top-k across ranks, one safetensors file from every rank's feature rows.
"""

from featurescope.train.config import TrainConfig
from featurescope.train.family import FamilyResult, members, train_family
from featurescope.train.loop import TrainResult, train

__all__ = ["FamilyResult", "TrainConfig", "TrainResult", "members", "train", "train_family"]
