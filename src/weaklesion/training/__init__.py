"""Training from weak labels: configuration, data, objectives, loop, checkpoints."""
