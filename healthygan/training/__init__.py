"""Training: the loop and its step, the networks and optimizers of a run, checkpoints and run files,
AUCp at every checkpoint, several processes under torchrun, the opt-in fast paths."""
