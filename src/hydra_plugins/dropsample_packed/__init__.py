"""hydra/launcher=packed: a sweep's configurations of one model shape train as one batched computation."""
