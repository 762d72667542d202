"""Decode once: a uint8 cache of the preprocessed images, and the store batches are drawn from.

The original decoded, cropped and resized every image from disk at every step. The cache holds
the same uint8 pixels (see decode.preprocess_uint8) once per image; batches are gathered from it,
on the training device when it fits, and converted to [-1, 1] and flipped there. The floats equal
the per-step path's exactly, so training is unchanged (tests/test_cache.py).
"""
import contextlib
import hashlib
import json
import os
import sys
import time
import zlib

import numpy as np
import PIL
import torch

from healthygan.data.decode import (TOP_CROP_FRACTION, build_transform, decode_all, load_image,
                                    warn_small)
from healthygan.errors import DataError

CACHE_VERSION = 1  # raise when preprocessing changes: every older cache is then rebuilt
CACHE_GPU_FRACTION = 0.5  # hold the cache on a GPU only if it takes at most this much free memory


def cache_key(paths, image_size):
    """(key, set_id): key changes with any image file (path, size, mtime) or preprocessing
    parameter; set_id only with the set of paths and the parameters (to find stale versions)."""
    params = json.dumps({'version': CACHE_VERSION, 'image_size': image_size,
                         'top_crop': TOP_CROP_FRACTION, 'resize': 'bilinear, antialiased',
                         'pillow': PIL.__version__}, sort_keys=True)
    key, set_id = hashlib.sha256(params.encode()), hashlib.sha256(params.encode())
    for p in paths:
        st = os.stat(p)
        key.update(f'\n{p}\t{st.st_size}\t{st.st_mtime_ns}'.encode())
        set_id.update(f'\n{p}'.encode())
    return key.hexdigest(), set_id.hexdigest()


@contextlib.contextmanager
def _exclusive_lock(path):
    """An exclusive lock on path (POSIX flock); elsewhere no lock: the atomic rename still keeps
    the cache whole, at worst built twice."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(path, 'a') as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class ImageCache:
    """Preprocessed uint8 pixels of a set of images: pixels (n, C, S, S), memory-mapped, with
    C = 1 when every image is grayscale, else 3; rows {abs path: row}; bad {abs path: reason}."""

    def __init__(self, npy, meta):
        self.path, self.meta = npy, meta
        self.pixels = np.load(npy, mmap_mode='c')  # copy-on-write: writable views, file untouched
        self.rows = {p: k for k, p in enumerate(meta['paths'])}
        self.bad = meta['bad']
        if self.pixels.shape[0] != len(meta['paths']):
            raise ValueError(f'{npy} holds {self.pixels.shape[0]} images, expected '
                             f'{len(meta["paths"])}')

    @staticmethod
    def read(npy, meta_path, key, quiet=False):
        """The cache at npy if it is complete, has this key and its pixels match the checksum
        written with them, else None (then rebuilt)."""
        try:
            with open(meta_path) as f:
                meta = json.load(f)
            if meta.get('key') != key:
                return None
            if meta.get('crc32') != file_crc32(npy):  # pixels changed after it was built
                if 'crc32' in meta and not quiet:
                    print(f'warning: the data cache {npy} does not match its checksum (changed '
                          f'since it was built); rebuilding it', file=sys.stderr)
                return None
            return ImageCache(npy, meta)
        except (OSError, ValueError, KeyError):  # absent, half-written by a crash, foreign
            return None


def file_crc32(path, chunk=1 << 24):
    """CRC-32 of a file's bytes, read in chunks."""
    crc = 0
    with open(path, 'rb') as f:
        while True:
            block = f.read(chunk)
            if not block:
                return crc
            crc = zlib.crc32(block, crc)


def same_content(paths_a, paths_b):
    """Pairs (a, b) of files with identical bytes (sizes compared first, then SHA-256)."""
    def digest(p):
        with open(p, 'rb') as f:
            return hashlib.sha256(f.read()).hexdigest()

    sizes = {}
    for p in paths_b:
        sizes.setdefault(os.path.getsize(p), []).append(p)
    by_digest, pairs = {}, []
    for a in paths_a:
        candidates = sizes.get(os.path.getsize(a), [])
        if not candidates:
            continue
        for b in candidates:
            if b not in by_digest:
                by_digest[b] = digest(b)
        da = digest(a)
        pairs += [(a, b) for b in candidates if by_digest[b] == da]
    return pairs


def _build_cache(paths, image_size, num_workers, key, set_id, npy, meta_path):
    """Decode every image once into npy (written under a temporary name, then renamed)."""
    n, s = len(paths), image_size
    tmp, meta_tmp = f'{npy}.{os.getpid()}.tmp', f'{meta_path}.{os.getpid()}.tmp'
    gray = np.lib.format.open_memmap(tmp, mode='w+', dtype=np.uint8, shape=(n, 1, s, s))
    colour = {}  # radiographs are grayscale; the rare colour image waits here

    def store(k, arr, gray=gray):
        if arr.ndim == 2:
            gray[k, 0] = arr
        else:
            colour[k] = arr

    try:
        small = {}
        bad = decode_all(paths, s, num_workers, store, desc='caching images', small=small)
        if colour:  # some image has colour: store three channels for all
            rgb = np.lib.format.open_memmap(tmp + '3', mode='w+', dtype=np.uint8,
                                            shape=(n, 3, s, s))
            for a in range(0, n, 256):
                rgb[a:a + 256] = gray[a:a + 256]
            for k, arr in colour.items():
                rgb[k] = arr.transpose(2, 0, 1)
            rgb.flush()
            del rgb
        gray.flush()
        del store, gray  # close the memory maps before the files are renamed
        if colour:
            os.replace(tmp + '3', tmp)
        meta = {'key': key, 'set_id': set_id, 'version': CACHE_VERSION, 'image_size': s,
                'paths': paths, 'bad': bad, 'small': small, 'crc32': file_crc32(tmp),
                'created': time.strftime('%Y-%m-%d %H:%M:%S')}
        with open(meta_tmp, 'w') as f:
            json.dump(meta, f)
        os.replace(meta_tmp, meta_path)
        os.replace(tmp, npy)  # the .npy appears last and whole: it marks a finished cache
    except BaseException:
        for leftover in (tmp, tmp + '3', meta_tmp):
            if os.path.exists(leftover):
                os.remove(leftover)
        raise


def _remove_stale(cache_dir, set_id, key):
    """Delete older versions of the same image set (the images changed since they were built).

    A run still reading one keeps its open memory map (POSIX); elsewhere removal may fail."""
    for name in os.listdir(cache_dir):
        if not name.endswith('.json'):
            continue
        meta_path = os.path.join(cache_dir, name)
        try:
            with open(meta_path) as f:
                meta = json.load(f)
            if meta.get('set_id') == set_id and meta.get('key') != key:
                os.remove(meta_path[:-5] + '.npy')
                os.remove(meta_path)
        except (OSError, ValueError):
            pass


def open_cache(paths, image_size, cache_dir, num_workers=0):
    """The ImageCache of these images at this size in cache_dir, built if absent or stale.

    Safe when several runs start at once: one builds under a lock while the others wait, then
    read what it wrote.
    """
    paths = sorted({os.path.abspath(p) for p in paths})
    key, set_id = cache_key(paths, image_size)
    stem = os.path.join(cache_dir, f'images-{image_size}px-{key[:16]}')
    npy, meta_path = stem + '.npy', stem + '.json'
    cache = ImageCache.read(npy, meta_path, key)
    if cache is not None:
        cache.built = False
        warn_small(cache.meta.get('small', {}), image_size)
        return cache
    try:
        os.makedirs(cache_dir, exist_ok=True)
        with _exclusive_lock(stem + '.lock'):
            # another run may have just built it
            cache = ImageCache.read(npy, meta_path, key, quiet=True)
            if cache is None:
                start = time.time()
                print(f'Decoding {len(paths)} images once into the data cache {npy} ...')
                _build_cache(paths, image_size, num_workers, key, set_id, npy, meta_path)
                cache = ImageCache.read(npy, meta_path, key)
                cache.built = time.time() - start
                warn_small(cache.meta.get('small', {}), image_size)
                _remove_stale(cache_dir, set_id, key)
            else:
                cache.built = False
    except OSError as e:
        raise DataError(f'cannot write the data cache in {cache_dir} ({e}); pass --cache_dir '
                        f'with a writable folder, or --data_cache off') from None
    return cache


def default_cache_dir(config):
    """--cache_dir, else $XDG_CACHE_HOME/healthygan (default ~/.cache/healthygan).

    Not beside the images: a dataset folder may be shared or read-only, and a cache written into
    it would surprise its owner. The cache files are named by a key of the image set.
    """
    if config.cache_dir:
        return config.cache_dir
    home = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
    return os.path.join(home, 'healthygan')


def mean_image(paths, config, among=None):
    """The mean of these images as the test path reads them: float [C, S, S] in [-1, 1].

    From the uint8 cache with --data_cache on, else decoded one by one; unreadable images are
    left out (training refuses or skips them on its own). among: the image set whose cache to
    read them from (e.g. the training set, whose cache training has already built), else the
    cache of these images alone."""
    paths = sorted({os.path.abspath(p) for p in paths})
    total, count = None, 0
    if config.data_cache == 'on':
        cache = open_cache(list(among or []) + paths, config.image_size,
                           default_cache_dir(config), config.num_workers)
        rows = [cache.rows[p] for p in paths if p not in cache.bad]
        for a in range(0, len(rows), 1024):  # in slices: a large set never loads at once
            chunk = np.take(cache.pixels, rows[a:a + 1024], axis=0).astype(np.float64)
            total = chunk.sum(0) if total is None else total + chunk.sum(0)
            count += len(chunk)
        mean = torch.from_numpy(total / max(count, 1) / 255 * 2 - 1).float()
        return mean.expand(3, -1, -1).contiguous() if mean.shape[0] == 1 else mean
    transform = build_transform(config.image_size)
    for p in paths:
        try:
            x = transform(load_image(p)).double()
        except DataError:
            continue
        total = x if total is None else total + x
        count += 1
    if total is None:
        raise DataError('no readable image to average')
    return (total / count).float()


class PixelStore:
    """A cache's pixels, on the training device when they fit; images(rows) -> [-1, 1] floats."""

    def __init__(self, cache, device=None):
        self.device = torch.device(device or 'cpu')
        self.pixels = cache.pixels  # numpy memory map: the OS pages it in and shares it
        if self.device.type == 'cuda':
            free, _ = torch.cuda.mem_get_info(self.device)
            if self.pixels.nbytes <= CACHE_GPU_FRACTION * free:
                on_gpu = torch.empty(self.pixels.shape, dtype=torch.uint8, device=self.device)
                for a in range(0, len(on_gpu), 1024):  # in slices: no second copy in RAM
                    on_gpu[a:a + 1024].copy_(torch.from_numpy(self.pixels[a:a + 1024]))
                self.pixels = on_gpu
        self.where = 'cuda tensor' if isinstance(self.pixels, torch.Tensor) else 'memory map'

    def images(self, rows, flips=None):
        """The images at rows as float (len(rows), 3, S, S) in [-1, 1] on the device, those
        whose flag in flips is set flipped horizontally."""
        if isinstance(self.pixels, torch.Tensor):
            u8 = self.pixels[torch.as_tensor(rows, device=self.device)]
        else:
            u8 = torch.from_numpy(np.take(self.pixels, rows, axis=0)).to(self.device)
        if flips is not None and any(flips):  # flipped as bytes: 4 times less to move
            flipped = torch.tensor(np.flatnonzero(flips), device=self.device)
            u8[flipped] = u8[flipped].flip(-1)
        # ToTensor then Normalize(0.5, 0.5), as the per-step path: the same floats. Computed on
        # one channel when the images are grayscale, then copied to three.
        x = u8.float().div_(255).sub_(0.5).div_(0.5)
        return x.expand(-1, 3, -1, -1).contiguous()
