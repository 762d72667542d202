"""HealthyGAN's parts, one job per module. The top-level files (main.py, solver.py, model.py,
data_loader.py, logger.py, metrics.py, report.py) re-export them under the original's names;
nothing here imports them, so the package runs with only itself on the path.

- model/: the paper's networks (networks.py) and losses (losses.py)
- training/: the loop and its two steps (loop.py); the networks, optimizers and fast paths
  of a run (build.py, fast.py, fast_critic.py); checkpoint files (checkpoints.py) and run files, one
  job each (checkpoint_sets.py, run_lock.py, run_folder.py, resume_checks.py, run_record.py,
  jsonl_logs.py); several processes (distributed.py); TensorBoard logs (logs.py); translation
  grids (images.py)
- detection/: the Detector, one module of the tested checkpoints and their fitted references
  (detector.py, inputs.py); the scores and maps (anomaly.py); the references (lung.py,
  pixel_reference.py, reference.py); the choice of checkpoints (selection.py) and the AUCp logged
  at every checkpoint (aucp.py), the Python API (api.py: load(RUN_DIR) -> Detector), its export
  (export.py) and the check of a released generator (pretrained.py)
- reports/: the testAUC and score outputs (evaluation.py), report.html (reporting.py, report.py),
  metrics (statistics.py), maps measured against a reader's lesion boxes (boxes.py,
  localisation.py: localise(detector, paths, boxes_csv))
- data/: splits, decoding, the uint8 cache, datasets, loaders; the synthetic radiograph
- cli.py, flags.py, console.py, __main__.py: the command line and the `healthygan MODE` command
- solver.py: the Solver, which composes the parts for the mode asked
- device.py, limits.py, errors.py, version.py: the device; checks before work; the errors a user
  must fix; the version
"""
from healthygan.detection.api import load  # noqa: E402  (the public API)
from healthygan.detection.detector import Detector, Result  # noqa: E402
from healthygan.reports.localisation import localise  # noqa: E402
from healthygan.version import __version__  # noqa: E402

__all__ = ['load', 'Detector', 'Result', 'localise', '__version__']
