"""The floor every stage stands on: the dataset reader (data), atomic outputs (io), the one
training loop and its checkpoints (training), per-pixel losses and IoU (dense), instances,
shards and errors."""
