"""Training engine: the faithful objective, optimizers and schedulers, adapters, the loop, checkpoints."""
