"""Training and harvesting on several processes with torch.distributed (torchrun); see docs/distributed.md.

- `world`: the process group (torchrun's variables), tensor collectives, JSON metadata in uint8 tensors.
- `ddp`: data parallelism (each rank trains on its slice of every global batch).
- `feature_shard`: feature sharding (each rank holds a slice of the features) for very wide SAEs.
- `topk`: global top-k selections over candidates spread across ranks.
- `shard_io`: one ordinary safetensors file written by rank 0 from every rank's rows.
- `launch`: `--distributed N` starts N local ranks (torchrun --standalone).

A single-process run imports only `world` (to see whether it was launched as a rank).
"""
