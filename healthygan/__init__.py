"""HealthyGAN's parts, one job per module, behind the entry points main.py (the command line),
solver.py (the Solver: build, train, test), model.py (the two networks) and data_loader.py.

- errors.py: the errors a user must fix (one line each, no traceback)
- losses.py: the paper's losses, the translation and the learning-rate schedule
- training.py: the training loop and its two steps
- checkpoints.py: checkpoint files, training state, run metadata
- runfiles.py: run folders, checkpoint sets, resume consistency, append-only logs
- limits.py: flag, memory and disk checks made before any work
- selection.py: choosing checkpoints: AUCp, the snapshot ensemble
- evaluation.py: scoring, thresholds and the testAUC / score outputs
- distributed.py: several processes under torchrun
- fast.py, fast_critic.py: the opt-in fast paths of the training step
- data/: splits, decoding, the uint8 cache, datasets and samplers
- synthetic_phantom.py: one synthetic radiograph, for synthetic.py's demo and test datasets
"""
