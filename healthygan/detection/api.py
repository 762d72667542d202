"""The Python API (added): a trained run folder, the weights shipped in pretrained/, or one
detector file, as a detector of new images.

    import healthygan
    det = healthygan.load('nih-cxr-mini')  # shipped in the package; or a run folder
    r = det.score('chest.png')  # r.pred_score, r.anomaly_map, r.healthy_percentile, ...
    x_hat, mask = det.translate('chest.png')

The detector (detector.Detector) scores images through the same preprocessing and the same
scoring pass as `--mode score`, so a score here equals that image's row in scores.csv.
"""
import json
import math
import os

from healthygan import weights
from healthygan.detection import anomaly, fitted
from healthygan.detection.detector import Detector
from healthygan.detection.lung import read_region
from healthygan.detection.pixel_reference import PixelReference
from healthygan.detection.reference import HealthyReference
from healthygan.detection.selection import ensemble_members, resolve_iters
from healthygan.device import resolve_device
from healthygan.errors import ConfigError
from healthygan.training import run_record

# Optional, beside the checkpoints: the checkpoint, snapshot ensemble and score a run folder
# recommends ({"test_iters": 5500, "ensemble": 4, "score_variant": "mean"}); load() follows it
# unless told otherwise. pretrained/nih-cxr-mini ships one.
DETECTOR_FILE = 'detector.json'


def load(run_dir, test_iters=None, ensemble=None, score_variant=None, healthy_percentile=95.0,
         device='auto'):
    """A Detector of a run folder (its --model_save_dir), shipped weights, a detector file
    (Detector.save), or the name of a detector shipped in the package ('nih-cxr-mini'; for
    both of the latter the other arguments but device do not apply).

    The architecture comes from the folder's run_config.json; test_iters (a number, 'latest',
    'best_aucp', 'best_val'), ensemble and score_variant default to the folder's detector.json
    where it has one, else to 'latest', 1 and 'mean' (the original's single checkpoint and
    score). The healthy reference is the held-out healthy images' scores the run logged.
    """
    run_dir = os.fspath(run_dir)
    if not os.path.exists(run_dir) and weights.path_of(run_dir):  # a name: shipped weights
        run_dir = weights.path_of(run_dir)
    device = checked_device(device)
    healthy_percentile = checked_percentile(healthy_percentile)
    if os.path.isfile(run_dir):
        return Detector.load(run_dir, device)
    if not os.path.isdir(run_dir):
        raise ConfigError(f'{run_dir} is not a folder: give a run folder (--model_save_dir) '
                          f'holding <iters>-G.ckpt and run_config.json, a detector file, or '
                          f'the name of weights shipped in the package '
                          f'({", ".join(weights.names()) or "none installed"})')
    arch = run_record.run_architecture(run_dir)
    if arch is None or not {'image_size', 'g_conv_dim', 'g_repeat_num'} <= set(arch):
        raise ConfigError(f'{run_dir} has no readable run_config.json with the architecture; '
                          f'score it with main.py --mode score and the architecture flags')
    advice = read_detector_file(run_dir)
    where = os.path.join(run_dir, DETECTOR_FILE)
    test_iters = checked_iters(test_iters, 'test_iters') if test_iters is not None else \
        checked_iters(advice.get('test_iters', 'latest'), f'{where}: test_iters')
    ensemble = checked_ensemble(ensemble, 'ensemble') if ensemble is not None else \
        checked_ensemble(advice.get('ensemble', 1), f'{where}: ensemble')
    variant = score_variant or advice.get('score_variant', 'mean')
    if variant not in anomaly.SCORE_VARIANTS:
        named = 'score_variant' if score_variant else f'{where}: score_variant'
        raise ConfigError(f'{named} {variant!r}: choose one of '
                          f'{", ".join(anomaly.SCORE_VARIANTS)}')
    iters = resolve_iters(test_iters, run_dir, 'test_iters', variant)
    members = ensemble_members(run_dir, iters, ensemble)
    det = Detector(arch['g_conv_dim'], arch['g_repeat_num'], arch['image_size'], members, variant,
                   run_record.folder_run_id(run_dir), healthy_percentile).to(device)
    det.load_members(run_dir)
    fitted.run_size(run_dir, members, arch['image_size'])
    region, note = read_region(run_dir, arch['image_size'])
    needs = anomaly.VARIANTS[variant].needs
    if needs == 'region' and region is None:
        raise ConfigError(f"score_variant {variant!r} needs the run's lung prior: {note}")
    det.fit_region(region)
    if needs == 'pixels':
        ref = PixelReference(run_dir, arch['image_size'], members)
        if not ref.read():
            raise ConfigError(f"score_variant {variant!r} needs {ref.path}: build it once with "
                              f"`python main.py --mode score --score_variant {variant} "
                              f"--model_save_dir {run_dir} --test_iters {members[-1]} "
                              f"--ensemble {len(members)} --score_dir IMAGE` where the run's "
                              f"training images are at hand")
        ref.fit(det)
    else:
        reference = HealthyReference.of_run(run_dir, members, variant, healthy_percentile)
        det.fit_reference(None if reference is None else reference.scores,
                          None if reference is None else reference.source)
    return det


def checked_device(device):
    """The torch device named ('auto', 'cpu', 'cuda', 'cuda:1', 'mps'), or one ConfigError."""
    try:
        return resolve_device(device)
    except (RuntimeError, TypeError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f'device {device!r} is no device here: use auto, cpu, cuda or '
                          f'mps') from None


def checked_percentile(value):
    """healthy_percentile as a float in [0, 100], or one ConfigError."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        value = math.nan
    if not 0 <= value <= 100:  # NaN fails too
        raise ConfigError('healthy_percentile must be a number from 0 to 100 (95: the 95th '
                          'percentile of the held-out healthy scores)')
    return value


def checked_iters(value, named):
    """A checkpoint number, 'latest', 'best_aucp' or 'best_val', or one ConfigError."""
    if value in ('latest', 'best_aucp', 'best_val'):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, str)) or \
            not str(value).isdigit():
        raise ConfigError(f'{named} {value!r}: give a checkpoint number, latest, best_aucp or '
                          f'best_val')
    return int(value)


def checked_ensemble(value, named):
    """A snapshot ensemble's size, a positive whole number, or one ConfigError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f'{named} {value!r}: give how many checkpoints to average, 1 or '
                          f'more (1: the original\'s single checkpoint)')
    return value


def read_detector_file(run_dir):
    """detector.json's advice ({} where there is none)."""
    path = os.path.join(run_dir, DETECTOR_FILE)
    if not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            advice = json.load(f)
    except (OSError, ValueError) as e:
        raise ConfigError(f'{path} is not readable JSON ({e}); fix or remove it') from None
    if not isinstance(advice, dict):
        raise ConfigError(f'{path} must hold a JSON object such as {{"ensemble": 4}}')
    return advice


def write_detector_file(run_dir, test_iters, ensemble, score_variant):
    """detector.json: what a run recommends, as testAUC --save_detector true tested it."""
    advice = {'test_iters': test_iters, 'ensemble': int(ensemble), 'score_variant': score_variant}
    path = os.path.join(run_dir, DETECTOR_FILE)
    with open(path + '.tmp', 'w') as f:
        json.dump(advice, f, indent=1)
    os.replace(path + '.tmp', path)  # whole or absent: load() and score mode read it
    return path
