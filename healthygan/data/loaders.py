"""The loaders a mode reads: get_loader (pairs of mixed and healthy images for training,
labelled images for testing, held-out images for AUCp) and folder_loader (any list of images)."""
import os

import torch
from torch.utils import data

from healthygan.data.cache import PixelStore, default_cache_dir, open_cache
from healthygan.data.datasets import (CachedLabelledDataset, CachedLoader, CachedPairDataset,
                                      EpochSampler, FolderImages, LabelledDataset, PairDataset,
                                      pair_count)
from healthygan.data.decode import build_transform, decode_all, drop_unreadable
from healthygan.data.splits import check_files_exist, resolve_split
from healthygan.errors import DataError


def get_loader(config, mode, split=None, device=None):
    """Build the loader for a mode: 'train' / 'test' give pairs, 'testAUC' labelled images.

    For 'train' the loader's sampler is an EpochSampler (loader.sampler), whose epoch and start
    the training loop sets to resume exactly where a run stopped. Every image is decoded before
    the loader is returned, so unreadable ones are refused or left out (--bad_images) up front.
    With --data_cache on (default) the batches come from the uint8 cache, as tensors on device;
    with off, from a DataLoader that decodes every image at every step, as the original.
    """
    sets = _mode_sets(split or resolve_split(config), mode)
    paths = [p for ps in sets.values() for p in ps]
    cache = None
    if config.data_cache == 'on':
        cache = open_cache(paths, config.image_size, default_cache_dir(config),
                           config.num_workers)
        bad = cache.bad
    else:
        unique = sorted({os.path.abspath(p) for p in paths})
        bad = decode_all(unique, config.image_size, config.num_workers)
    sets = drop_unreadable(sets, bad, config.bad_images, mode)

    if mode in ('testAUC', 'holdout'):
        items = {'paths': sets['test_normal'] + sets['test_anomalous'],
                 'labels': [0] * len(sets['test_normal']) + [1] * len(sets['test_anomalous'])}
        sampler = None
    else:
        train = mode == 'train'
        n_pairs = pair_count(mode, sets['mixed'], sets['healthy'])
        ranks = _ranks(config, n_pairs) if train else {}
        sampler = EpochSampler(n_pairs, config.seed, shuffle=train, **ranks)
        items = {'mixed': sets['mixed'], 'healthy': sets['healthy'], 'flip': train,
                 'seed': config.seed, 'length': n_pairs}
    if cache is not None:
        return _cached_loader(config, cache, items, sampler, device)
    return _decoding_loader(config, items, sampler)


def _mode_sets(split, mode):
    """The image sets a mode reads, {name: paths}; missing files are refused here."""
    if mode == 'holdout':  # held-out healthy (0) and mixed (1) images, scored for AUCp
        sets = {'test_normal': split['holdout_healthy'], 'test_anomalous': split['holdout_mixed']}
        check_files_exist(sets['test_normal'] + sets['test_anomalous'], 'held-out')
    elif mode == 'testAUC':
        sets = {'test_normal': split['test_normal'], 'test_anomalous': split['test_anomalous']}
        check_files_exist(sets['test_normal'] + sets['test_anomalous'], 'test')
    elif mode == 'test':
        # The original's test mode pairs the test sets: A (its "mixed" side) the anomalous
        # images, B the normal ones.
        sets = {'mixed': split['test_anomalous'], 'healthy': split['test_normal']}
        check_files_exist(sets['mixed'] + sets['healthy'], 'test')
    else:
        sets = {'mixed': split['mixed'], 'healthy': split['healthy']}
        check_files_exist(sets['mixed'], 'mixed')
        check_files_exist(sets['healthy'], 'healthy')
    return sets


def _ranks(config, n_pairs):
    """EpochSampler's rank arguments under torchrun (added); none in a single process."""
    if not torch.distributed.is_initialized():
        return {}
    ranks = {'rank': torch.distributed.get_rank(), 'batch_size': config.batch_size,
             'world_size': torch.distributed.get_world_size()}
    if ranks['world_size'] > 1 and n_pairs < config.batch_size * ranks['world_size']:
        raise DataError(f'{n_pairs} training pairs are fewer than one global batch '
                        f'({ranks["world_size"]} processes x --batch_size '
                        f'{config.batch_size}); lower --batch_size or --nproc_per_node')
    return ranks


def _cached_loader(config, cache, items, sampler, device):
    """Batches drawn from the uint8 cache, as tensors on device (--data_cache on)."""
    store = PixelStore(cache, device)
    if 'labels' in items:
        dataset = CachedLabelledDataset(items['paths'], items['labels'], store, cache.rows)
    else:
        dataset = CachedPairDataset(store=store, rows=cache.rows, **items)
    how = f'built in {cache.built:.1f} s' if cache.built else 'reused'
    print(f'Data cache: {cache.path} ({how}; {store.pixels.shape[0]} images, '
          f'{store.pixels.nbytes / 2 ** 20:.1f} MiB, held as a {store.where} on '
          f'{store.device})')
    return CachedLoader(dataset, config.batch_size, sampler)


def _decoding_loader(config, items, sampler):
    """A DataLoader that decodes every image at every step, as the original (--data_cache off)."""
    transform = build_transform(config.image_size)
    if 'labels' in items:
        dataset = LabelledDataset(items['paths'], items['labels'], transform)
    else:
        dataset = PairDataset(transform=transform, **items)
    # A private generator: each iter(loader) draws a worker base seed from it, which would
    # otherwise shift the global RNG (and the gradient penalty's alphas) on every reshuffle.
    generator = torch.Generator()
    generator.manual_seed(config.seed)
    return data.DataLoader(dataset, batch_size=config.batch_size, sampler=sampler,
                           num_workers=config.num_workers, generator=generator,
                           pin_memory=torch.cuda.is_available())


def folder_loader(config, paths, labels=None):
    """Batches (images, labels, indices, errors) of a list of images, in order (no cache)."""
    labels = [-1] * len(paths) if labels is None else labels
    return data.DataLoader(FolderImages(paths, labels, config.image_size),
                           batch_size=config.batch_size, shuffle=False,
                           num_workers=config.num_workers)
