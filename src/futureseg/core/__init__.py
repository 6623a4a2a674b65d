"""The floor every stage stands on: the dataset reader (data), its 48 classes (classes), the
pipeline's files (io: atomic outputs, arrays with ids, frame caches, mean/std), the one
training loop and its checkpoints (training), per-pixel losses and IoU (dense), instances,
shards and errors. Nothing here imports a verb."""
