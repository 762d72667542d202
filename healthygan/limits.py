"""Checks made before any work: flag values no run can use, memory and disk a run cannot get,
output folders that cannot be written. Each problem is one line naming the flag and the fix."""
import glob
import math
import os
import shutil

import torch

from healthygan.data.cache import default_cache_dir
from healthygan.errors import ConfigError


def check_architecture(config):
    """Sizes the networks cannot handle, as one line, or None."""
    if config.image_size % 4 != 0:
        return (f'--image_size {config.image_size}: the generator downsamples twice, so it '
                f'must be a multiple of 4')
    if config.image_size // 2 ** config.d_repeat_num < 1:
        return (f'--image_size {config.image_size} is too small for --d_repeat_num '
                f'{config.d_repeat_num}: the critic halves the image {config.d_repeat_num} '
                f'times; use --d_repeat_num <= {int(math.log2(config.image_size))}')
    if config.g_repeat_num < 0:
        return '--g_repeat_num must be >= 0'
    return None


def check_limits(config):
    """Values no run can use, as one line naming the flag, before any work."""
    for flag in ('g_lr', 'd_lr'):
        v = getattr(config, flag)
        if not math.isfinite(v) or v < 0:
            return f'--{flag} {v}: expected a finite learning rate >= 0'
    for flag in ('beta1', 'beta2'):
        v = getattr(config, flag)
        if not 0 <= v < 1:
            return f'--{flag} {v}: expected a value in [0, 1)'
    if config.num_workers < 0:
        return (f'--num_workers {config.num_workers}: expected 0 (load in the main process) or '
                f'more')
    return None


def memory_needed(config, n_images):
    """Rough bytes a training run needs: (data cache on disk, RAM to decode, one batch's
    activations). The cache is a uint8 memory map of every image at --image_size (grayscale);
    each decoding process holds an RGB image at that size twice (PIL's and numpy's copies)."""
    pixels = config.image_size ** 2
    cache = n_images * pixels if config.data_cache == 'on' else 0
    workers = max(1, min(config.num_workers, os.cpu_count() or 1))
    decode = workers * 2 * 3 * pixels
    # G's full-resolution maps (about 4 of --g_conv_dim channels) and D's first layer dominate;
    # x4 for the two batches and what the backward keeps. Kept low on purpose: only a run that
    # surely cannot fit is refused, never one that might.
    channels = config.g_conv_dim * 4 + config.d_conv_dim
    activations = config.batch_size * pixels * 4 * channels * 4
    return cache, decode, activations


def usable_cpus():
    """The CPU cores this process may run on (as torch's DataLoader counts them)."""
    if hasattr(os, 'sched_getaffinity'):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def size_text(n):
    """Bytes in words, in the largest unit that keeps them at least 1 (a small cache or a
    nearly full disk would read '0.0 GiB')."""
    for unit, size in (('GiB', 2 ** 30), ('MiB', 2 ** 20), ('KiB', 2 ** 10)):
        if n >= size:
            return f'{n / size:.1f} {unit}'
    return f'{n} bytes'


def available_memory():
    """Bytes of memory available now (MemAvailable), or None where it cannot be read."""
    try:
        with open('/proc/meminfo') as f:
            for line in f:
                if line.startswith('MemAvailable:'):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    try:
        return os.sysconf('SC_AVPHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')
    except (ValueError, OSError, AttributeError):
        return None


def free_disk(path):
    """Free bytes on the file system of path (or of its nearest existing parent)."""
    path = os.path.abspath(path)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def check_memory(config, split, device):
    """Refuse, with the numbers, a run whose data cache, decoding or batch cannot fit, before
    anything is allocated (an allocation that large gets some process killed, maybe another's)."""
    n = len({p for k in ('healthy', 'mixed', 'holdout_healthy', 'holdout_mixed')
             for p in split.get(k, [])})
    cache, decode, activations = memory_needed(config, n)
    fix = 'lower --image_size' + (' or --batch_size' if activations > decode else '')
    if device.type == 'cuda':
        free_gpu = torch.cuda.mem_get_info(device)[0]
        if activations > free_gpu:
            raise ConfigError(
                f'--image_size {config.image_size} with --batch_size {config.batch_size}: one '
                f'batch needs about {size_text(activations)} of GPU memory but '
                f'{size_text(free_gpu)} is free; {fix}')
        activations = 0
    ram = decode + activations
    free = available_memory()
    if free is not None and ram > free:
        raise ConfigError(
            f'--image_size {config.image_size} with --batch_size {config.batch_size}: about '
            f'{size_text(ram)} of memory needed (decoding {size_text(decode)}, one batch '
            f'{size_text(activations)}) but {size_text(free)} is available; {fix}')
    cache_dir = default_cache_dir(config)
    built = glob.glob(os.path.join(cache_dir, f'images-{config.image_size}px-*.npy'))
    disk = free_disk(cache_dir)
    if cache and not built and disk is not None and cache > disk:
        raise ConfigError(
            f'--image_size {config.image_size}: the data cache of {n} images needs about '
            f'{size_text(cache)} but {size_text(disk)} is free in {cache_dir}; lower '
            f'--image_size, pass --cache_dir on a larger disk, or --data_cache off')


def check_writable(config):
    """Fail before any work if an output folder cannot be created or written."""
    flags = {'train': ('model_save_dir', 'sample_dir', 'log_dir'), 'test': ('result_dir',),
             'testAUC': ('result_dir',), 'score': ('result_dir',)}[config.mode]
    for flag in flags:
        path = getattr(config, flag)
        try:
            os.makedirs(path, exist_ok=True)
            probe = os.path.join(path, '.write_test')
            with open(probe, 'w'):
                pass
            os.remove(probe)
        except OSError as e:
            raise ConfigError(f'--{flag} {path} is not writable ({e.strerror}); choose another '
                              f'folder') from None
