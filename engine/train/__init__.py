"""Training: build a run from a config (model, adapter, data, optimiser), the Fabric loop, the recipe
(timesteps, CFG dropout, loss), checkpoints and the run folder's lifecycle."""
