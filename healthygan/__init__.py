"""HealthyGAN's parts, one job per module. The top-level files (main.py, solver.py, model.py,
data_loader.py, logger.py, metrics.py, report.py) re-export them under the original's names;
nothing here imports them, so the package runs with only itself on the path.

- api.py: the Python API, load(RUN_DIR) -> Detector with score() and translate()
- cli.py, flags.py: the command line (build_parser, main) and its argument types
- console.py, __main__.py, version.py: the `healthygan MODE` command; the version
- pretrained.py: the check of a released generator file before it is used
- solver.py: the Solver, which composes the parts below
- networks.py, build.py: the paper's G and D; the networks, optimizers and fast paths of a run
- errors.py: the errors a user must fix (one line each, no traceback)
- losses.py: the paper's losses and their weighted sums, the translation, the learning rate
- steps.py, training.py: the critic and generator steps; the training loop
- checkpoints.py: checkpoint files, training state, run metadata
- runfiles.py: run folders, checkpoint sets, resume consistency, append-only logs
- limits.py: flag, memory and disk checks made before any work
- selection.py, aucp.py: choosing checkpoints (latest, best AUCp, the snapshot ensemble); AUCp
- scoring.py, lung.py: translate and score a batch, the one scoring pass; the 'lung' region
- reference.py: the held-out healthy images' scores as a label-free reference
- evaluation.py, reporting.py: thresholds and the testAUC / score outputs; report.html
- metrics.py, report.py: anomaly scores and metrics; plots, panels and maps
- images.py, logs.py: translation grids; TensorBoard and stats.jsonl
- device.py, distributed.py: the device; several processes under torchrun
- fast.py, fast_critic.py: the opt-in fast paths of the training step and their flags
- data/: splits, decoding, the uint8 cache, datasets, samplers and loaders
- synthetic_phantom.py: one synthetic radiograph, for synthetic.py's demo and test datasets
"""
from healthygan.api import Detector, Result, load  # noqa: E402  (the package's public API)
from healthygan.version import __version__  # noqa: E402

__all__ = ['load', 'Detector', 'Result', '__version__']
