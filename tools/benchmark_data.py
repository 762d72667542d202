"""Images per second of the training data path: per-step decoding (the original) vs the cache.

    OMP_NUM_THREADS=1 python tools/benchmark_data.py            # 32 PNGs of 1024 x 1024, 256 px

Writes --n_images radiograph-like PNGs of --source_size pixels (8 or 16 bits) into a temporary
Folder layout, then draws training batches (pairs of a mixed and a healthy image, shuffled,
flipped, in [-1, 1], on --device) through data_loader.get_loader twice:
- per step: --data_cache off, a DataLoader that decodes, crops and resizes every image at every
  step, as the original did;
- cached: --data_cache on, batches gathered from the uint8 cache (the one-off build, which decodes
  each image once, is timed and reported separately).
Prints images per second for both and their ratio.
"""
import argparse
import os
import shutil
import tempfile
import time
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image

if not __package__:  # run as python tools/x.py: the repository root on the path
    import _path  # noqa: F401

import data_loader  # noqa: E402
import synthetic  # noqa: E402


def write_images(folder, n_images, size, bits, seed=0):
    """n_images PNGs (half mixed/, half healthy/): 4 synthetic subjects, each image with its own
    noise, so that every file differs and compresses like a real radiograph."""
    rng = np.random.default_rng(seed)
    subjects = [synthetic.render_radiograph(rng, size, anomalous=k % 2 == 1)[0].astype(np.float32)
                for k in range(min(4, n_images))]
    for k in range(n_images):
        sub = os.path.join(folder, 'mixed' if k % 2 == 0 else 'healthy')
        os.makedirs(sub, exist_ok=True)
        img = subjects[k % len(subjects)] + rng.normal(0, 2.0, (size, size))
        if bits == 16:
            arr = (img * 257).clip(0, 65535).astype(np.uint16)
        else:
            arr = img.clip(0, 255).astype(np.uint8)
        Image.fromarray(arr).save(os.path.join(sub, f'{k:04d}.png'))


def images_per_second(loader, device, min_batches, min_seconds):
    """Draw batches as the training loop does (across epochs) until both minimums are met."""
    n_images, n_batches, epoch = 0, 0, 0
    start = time.perf_counter()
    while n_batches < min_batches or time.perf_counter() - start < min_seconds:
        loader.sampler.epoch, loader.sampler.start = epoch, 0
        for x_A, x_B in loader:
            x_A, x_B = x_A.to(device), x_B.to(device)
            n_images += x_A.size(0) + x_B.size(0)
            n_batches += 1
            if n_batches >= min_batches and time.perf_counter() - start >= min_seconds:
                break
        epoch += 1
    if device.type == 'cuda':
        torch.cuda.synchronize()
    return n_images / (time.perf_counter() - start), n_images


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--n_images', type=int, default=32, help='PNGs to generate (half mixed)')
    p.add_argument('--source_size', type=int, default=1024, help='side of the PNGs')
    p.add_argument('--bits', type=int, default=8, choices=[8, 16], help='bits per pixel')
    p.add_argument('--image_size', type=int, default=256,
                   help='training resolution (train_covid.sh: 256)')
    p.add_argument('--batch_size', type=int, default=16, help='pairs a batch (paper: 16)')
    p.add_argument('--num_workers', type=int, default=0,
                   help='DataLoader processes of the per-step path (and of the cache build)')
    p.add_argument('--batches', type=int, default=8, help='batches timed at least, each path')
    p.add_argument('--min_seconds', type=float, default=2.0, help='seconds timed at least')
    p.add_argument('--device', type=str, default='cpu', choices=['cpu', 'cuda'])
    p.add_argument('--keep', type=str, default='', help='write the PNGs here and keep them')
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    device = torch.device(args.device)
    folder = args.keep or tempfile.mkdtemp(prefix='healthygan-bench-')
    try:
        start = time.perf_counter()
        write_images(folder, args.n_images, args.source_size, args.bits)
        print(f'{args.n_images} PNGs of {args.source_size} x {args.source_size}, {args.bits} bits, '
              f'in {folder} ({time.perf_counter() - start:.1f} s to write)')
        config = SimpleNamespace(dataset='Folder', image_dir=folder, image_size=args.image_size,
                                 batch_size=args.batch_size, num_workers=args.num_workers,
                                 seed=0, bad_images='refuse', data_cache='off',
                                 cache_dir=os.path.join(folder, '.cache'))
        split = {'mixed': data_loader.list_images(os.path.join(folder, 'mixed')),
                 'healthy': data_loader.list_images(os.path.join(folder, 'healthy'))}

        per_step = data_loader.get_loader(config, 'train', split, device)
        old, n_old = images_per_second(per_step, device, args.batches, args.min_seconds)

        config.data_cache = 'on'
        start = time.perf_counter()
        cached = data_loader.get_loader(config, 'train', split, device)
        build = time.perf_counter() - start
        new, n_new = images_per_second(cached, device, args.batches, args.min_seconds)
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)

    print(f'image_size {args.image_size}, batch {args.batch_size} pairs, device {device}, '
          f'torch threads {torch.get_num_threads()}, per-step workers {args.num_workers}')
    print(f'per-step decode (original): {old:10.1f} images/s ({n_old} images)')
    print(f'cache:                      {new:10.1f} images/s ({n_new} images; one-off build '
          f'{build:.1f} s)')
    print(f'speed-up: {new / old:.1f}x')
    return {'per_step': old, 'cached': new, 'speedup': new / old, 'build_s': build}


if __name__ == '__main__':
    main()
