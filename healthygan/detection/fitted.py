"""Checks of fitted references read from files (added): a detector file, a healthy pixel
reference, the held-out healthy scores of aucp.jsonl. Each returns the value fit for use or
raises one ConfigError naming the file, so that a broken or foreign reference is never used."""
import math
import os
import re

import torch

from healthygan.errors import ConfigError


def finite_scores(path, scores, what='healthy_scores'):
    """A non-empty list of finite floats, or one ConfigError naming the file."""
    if not isinstance(scores, (list, tuple)) and not torch.is_tensor(scores):
        raise ConfigError(f'{path}: {what} must be a list of numbers, not '
                          f'{type(scores).__name__}; rebuild or remove the file')
    values = scores.tolist() if torch.is_tensor(scores) else list(scores)
    if not values:
        raise ConfigError(f'{path}: {what} is empty; rebuild or remove the file')
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise ConfigError(f'{path}: {what} holds entries that are no numbers; rebuild or remove '
                          f'the file')
    if not all(math.isfinite(v) for v in values):
        raise ConfigError(f'{path}: {what} holds NaN or infinite values; rebuild or remove the '
                          f'file')
    return [float(v) for v in values]


def pixel_reference(path, mu, scale, image_size):
    """(mu, scale) as float64 [S, S]: finite, scale > 0, or one ConfigError naming the file."""
    shape = (image_size, image_size)
    for name, t in (('mu', mu), ('scale', scale)):
        if not torch.is_tensor(t) or tuple(t.shape) != shape:
            got = list(t.shape) if torch.is_tensor(t) else type(t).__name__
            raise ConfigError(f'{path}: {name} must be a tensor {list(shape)}, not {got}; '
                              f'rebuild or remove the file')
        if not torch.isfinite(t).all():
            raise ConfigError(f'{path}: {name} holds NaN or infinite values; rebuild or remove '
                              f'the file')
    if not (scale > 0).all():
        raise ConfigError(f'{path}: scale holds zero or negative values; rebuild or remove the '
                          f'file')
    return mu.double(), scale.double()


def statistics_range(path, healthy_range):
    """A [2, 3] finite float64 range (low <= high), None where the file has none."""
    if healthy_range is None:
        return None
    t = healthy_range
    if not torch.is_tensor(t) or tuple(t.shape) != (2, 3) or not torch.isfinite(t).all() or \
            not (t[0] <= t[1]).all():
        raise ConfigError(f'{path}: statistics must be a finite [2, 3] range; rebuild or remove '
                          f'the file')
    return t.double()


def run_size(model_save_dir, members, image_size):
    """Refuse a run record whose --image_size differs from the size its fitted references were
    made at (run_config.json edited): scores would be compared with another size's."""
    pattern = re.compile(rf'^healthy_pixels_{"-".join(str(i) for i in members)}_(\d+)px\.pt$')
    sizes = {int(m.group(1)): m.group(0) for m in map(pattern.match, sorted(files(model_save_dir)))
             if m}
    if sizes and image_size not in sizes:
        size, name = next(iter(sizes.items()))
        raise ConfigError(f'{os.path.join(model_save_dir, name)} was made at {size} px, but '
                          f'{model_save_dir}\'s run_config.json says image_size {image_size}: '
                          f'the checkpoints were fitted at {size} px; restore run_config.json '
                          f'(or remove the reference to build one at {image_size} px)')


def files(folder):
    try:
        return os.listdir(folder)
    except OSError:
        return []
