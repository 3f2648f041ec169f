"""The process group that harvest and training share on several processes (torchrun); see docs/distributed.md.

- `world`: the process group (torchrun's variables), tensor collectives, JSON metadata in uint8 tensors.
- `launch`: `--distributed N` starts N local ranks (torchrun --standalone).

The stages' own parallel code lives with them: `featurescope.harvest.sharded` and, for training,
`featurescope.train.data_parallel`, `feature_shard`, `global_topk` and `gathered_file`.
A single-process run imports only `world` (to see whether it was launched as a rank).
"""
