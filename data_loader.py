"""Datasets and loaders: pairs of (mixed, healthy) images for training, labelled images for testing.

Two layouts are supported:
- ``Covid``: the original's list-based layout. Pickled lists of file names (``train_neg``,
  ``train_pos``, ``train_neg_mixed``, ``test_neg``, ``test_pos``) are read from ``--list_dir``
  (default ``data/covid``, relative to the working directory, as the original); images from
  ``<image_dir>/train`` and ``<image_dir>/test``.
- ``Folder``: ``<image_dir>/healthy``, ``<image_dir>/mixed``, ``<image_dir>/test/normal`` and
  ``<image_dir>/test/anomalous`` (see datasets/README.md).
"""
import contextlib
import hashlib
import io
import json
import math
import os
import pickle
import sys
import time
import zlib

import numpy as np
import PIL
import torch
from PIL import Image
from torch.utils import data
from torchvision import transforms as T
from tqdm import tqdm

from healthygan.errors import DataError  # noqa: F401  (data_loader.DataError)

DICOM_EXTENSIONS = ('.dcm', '.dicom')
IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff') + DICOM_EXTENSIONS
TOP_CROP_FRACTION = 0.08  # the original cuts away the top 8% of rows (labels, collimator edge)


# ------------------------------------------------------------------------------------------------ #
#                                         Split lists                                              #
# ------------------------------------------------------------------------------------------------ #

class _NoGlobalsUnpickler(pickle.Unpickler):
    """Unpickler that refuses every global, so a crafted pickle cannot run code."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f'refusing to load global {module}.{name}')


def safe_load_list(path):
    """Read a pickled list of file-name strings without running any code; refuse anything else."""
    try:
        with open(path, 'rb') as f:
            raw = f.read()
    except FileNotFoundError:
        raise DataError(f'split list not found: {path}. Put the original\'s pickled lists there '
                        f'or point --list_dir at the folder that holds them.') from None
    try:
        obj = _NoGlobalsUnpickler(io.BytesIO(raw)).load()
    except Exception as e:  # UnpicklingError, EOFError, ...: all mean "not a plain list"
        raise DataError(f'{path} is not a plain pickled list of file names ({e}); '
                        f'refusing to load it.') from None
    if not isinstance(obj, list) or not all(isinstance(s, str) for s in obj):
        raise DataError(f'{path} holds a {type(obj).__name__}, not a list of file-name strings; '
                        f'refusing to use it.')
    return obj


def list_images(folder):
    """Sorted image files under a folder (recursively, following linked sub-folders; a link
    back to a folder already searched is not entered again)."""
    if not os.path.isdir(folder):
        raise DataError(f'image folder not found: {folder}')
    found, seen = [], set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:  # a link loop, or a second link to the same folder
            dirs[:] = []
            continue
        seen.add(real)
        dirs.sort()
        found += [os.path.join(root, f) for f in sorted(files)
                  if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith('.')]
    if not found:
        raise DataError(f'no images ({", ".join(IMAGE_EXTENSIONS)}) found in {folder}')
    return found


# The sets each mode reads. Like the original, testing reads no training image: a user with
# only the test images and a generator checkpoint can run test and testAUC.
MODE_SETS = {'train': ('healthy', 'mixed'), 'test': ('test_normal', 'test_anomalous'),
             'testAUC': ('test_normal', 'test_anomalous'),
             'all': ('healthy', 'mixed', 'test_normal', 'test_anomalous')}
COVID_LISTS = {'healthy': ('train', ['train_neg']), 'mixed': ('train', ['train_pos',
                                                                         'train_neg_mixed']),
               'test_normal': ('test', ['test_neg']), 'test_anomalous': ('test', ['test_pos'])}
FOLDER_SETS = {'healthy': 'healthy', 'mixed': 'mixed', 'test_normal': os.path.join('test', 'normal'),
               'test_anomalous': os.path.join('test', 'anomalous')}


def resolve_split(config, mode='all'):
    """{'healthy', 'mixed', 'test_normal', 'test_anomalous', 'holdout_*'}: lists of image paths.

    Only the sets the mode reads (MODE_SETS) are looked for; the others are empty lists.
    """
    wanted = MODE_SETS[mode]
    split = {name: [] for name in FOLDER_SETS}
    if config.dataset == 'Covid':
        for name in wanted:
            sub, lists = COVID_LISTS[name]
            folder = os.path.join(config.image_dir, sub)
            for lst in lists:
                path = os.path.join(config.list_dir, lst + '.pickle')
                entries = safe_load_list(path)
                check_list_entries(entries, path, folder)
                split[name] += [os.path.join(folder, f) for f in entries]
    elif config.dataset == 'Folder':
        if not os.path.isdir(config.image_dir):
            raise DataError(f'--image_dir {config.image_dir} does not exist; it should hold '
                            f'healthy/, mixed/, test/normal/ and test/anomalous/.')
        for name in wanted:
            split[name] = list_images(os.path.join(config.image_dir, FOLDER_SETS[name]))
    else:
        raise DataError(f'unknown --dataset {config.dataset}')
    empty = [name for name in wanted if not split[name]]
    if empty:
        raise DataError(f'--dataset {config.dataset} under {config.image_dir}: the '
                        f'{" and ".join(empty)} set is empty; every set needs images')
    fraction = getattr(config, 'holdout_fraction', 0.0)
    for name in ('healthy', 'mixed'):
        split[name], split[f'holdout_{name}'] = hold_out(split[name], fraction)
    return split


def check_list_entries(entries, list_path, folder):
    """Refuse list entries that point outside the image folder (absolute paths, '..')."""
    for entry in entries:
        parts = os.path.normpath(entry).replace('\\', '/').split('/')
        if os.path.isabs(entry) or '..' in parts:
            raise DataError(f'{list_path}: entry {entry!r} points outside {folder}; the lists '
                            f'must name files inside the image folder (relative, no "..")')


def _stable_key(path):
    """A number from the file name alone: the same on every machine, seed and run."""
    return hashlib.sha1(os.path.basename(path).encode('utf-8')).hexdigest()


def hold_out(paths, fraction):
    """Split paths into (kept, held_out) with round(fraction * n) held out.

    Added for label-free checkpoint selection (AUCp): held-out healthy and mixed images are never
    trained on and are scored at every checkpoint. The choice depends only on the file names, so
    every run (any seed, resumed or not) holds out the same images; at least one image is kept.
    """
    if not 0 <= fraction < 1:
        raise DataError(f'--holdout_fraction {fraction}: expected a fraction in [0, 1)')
    n_out = min(int(round(fraction * len(paths))), len(paths) - 1)
    if n_out <= 0:
        return list(paths), []
    chosen = set(sorted(paths, key=_stable_key)[:n_out])
    return [p for p in paths if p not in chosen], [p for p in paths if p in chosen]


def check_files_exist(paths, what):
    """Fail before any work if listed images are missing: count and examples."""
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        examples = ', '.join(missing[:3])
        raise DataError(f'{len(missing)} of {len(paths)} {what} images are missing, e.g. {examples}')


# ------------------------------------------------------------------------------------------------ #
#                                        Preprocessing                                             #
# ------------------------------------------------------------------------------------------------ #

def crop_radiograph(img):
    """Cut away the top 8% of rows, then keep the largest centred square."""
    w, h = img.size
    top = int(h * TOP_CROP_FRACTION)
    img = img.crop((0, top, w, h))
    w, h = img.size
    side = min(w, h)
    left, upper = (w - side) // 2, (h - side) // 2
    return img.crop((left, upper, left + side, upper + side))


def resize_step(image_size):
    """The original's resize: shorter side to image_size, bilinear, antialiased (8 bits out)."""
    return T.Resize(image_size, interpolation=T.InterpolationMode.BILINEAR, antialias=True)


def build_transform(image_size):
    """The original's preprocessing: crop, resize, to [-1, 1] (flips are drawn per item)."""
    return T.Compose([
        T.Lambda(crop_radiograph),
        resize_step(image_size),
        T.ToTensor(),
        T.Normalize(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
    ])


def stretch_to_uint8(arr):
    """Map an array's own range [min, max] linearly onto 0..255 (a constant image becomes 0)."""
    arr = np.asarray(arr, dtype=np.float32)  # float32, as this project's 16-bit PNGs always were
    lo, hi = float(arr.min()), float(arr.max())
    return ((arr - lo) * (255.0 / max(hi - lo, 1e-6))).round().astype(np.uint8)


def load_image(path):
    """Open an image as 8-bit RGB (X-rays become 3 equal channels); a clear error if it is broken.

    PNG, JPEG, BMP and TIFF in any PIL mode (8- or 16-bit grayscale, RGB, RGBA, palette, ...),
    and DICOM (.dcm, .dicom; needs pydicom). RGBA loses its alpha channel, as in the original.
    """
    if path.lower().endswith(DICOM_EXTENSIONS):
        arr = load_dicom(path)
        return Image.fromarray(arr, mode='L' if arr.ndim == 2 else 'RGB').convert('RGB')
    try:
        with Image.open(path) as img:
            if img.mode in ('I;16', 'I;16B', 'I;16L', 'I', 'F'):
                # 16-bit / integer grayscale: PIL's convert('RGB') would clip at 255, so stretch
                # the image's own range to 8 bits instead.
                img = Image.fromarray(stretch_to_uint8(np.asarray(img)), 'L')
            return img.convert('RGB')
    except FileNotFoundError:
        raise DataError(f'image not found: {path}') from None
    except Exception as e:  # truncated, not an image, unsupported mode, decompression bomb, ...
        raise DataError(f'cannot read image {path}: {e}') from None


def _first_value(value):
    """The first of a multi-valued DICOM attribute (e.g. several windows), as a float."""
    if isinstance(value, (list, tuple)) or type(value).__name__ == 'MultiValue':
        value = value[0]
    return float(value)


def dicom_window(values, center, width, function='LINEAR'):
    """DICOM VOI windowing (PS3.3 C.11.2.1.2) of modality values onto 0..255."""
    x = np.asarray(values, dtype=np.float64)
    function = (function or 'LINEAR').upper()
    if function == 'SIGMOID':
        y = 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    elif function == 'LINEAR_EXACT':
        y = np.clip((x - center) / width + 0.5, 0, 1)
    elif width > 1:  # LINEAR
        y = np.clip((x - (center - 0.5)) / (width - 1) + 0.5, 0, 1)
    else:  # LINEAR with width 1: a threshold
        y = (x > center - 0.5).astype(np.float64)
    return (y * 255).round().astype(np.uint8)


def load_dicom(path):
    """A DICOM image as uint8 (H, W) or (H, W, 3): rescaled, windowed, MONOCHROME1 inverted.

    Grayscale pixel data goes through the modality LUT (Rescale Slope / Intercept), then the first
    stored window (Window Center / Width) or VOI LUT; with neither, the image's own range is
    stretched to 8 bits, as for 16-bit PNGs. MONOCHROME1 (low values bright) is inverted so that
    every radiograph reaches the model with bright bones, as MONOCHROME2 and PNG radiographs do.
    """
    try:
        import pydicom
    except ImportError:
        raise DataError(f'{path} is a DICOM file: reading DICOM needs the optional package '
                        f'pydicom (pip install pydicom), or convert the images to PNG') from None
    try:
        try:  # pydicom >= 3
            from pydicom.pixels import apply_modality_lut, apply_voi_lut
        except ImportError:  # pydicom 2
            from pydicom.pixel_data_handlers.util import apply_modality_lut, apply_voi_lut
        ds = pydicom.dcmread(path)
        arr = ds.pixel_array
    except FileNotFoundError:
        raise DataError(f'image not found: {path}') from None
    except Exception as e:  # not DICOM, truncated, no pixel data, a codec plugin missing, ...
        raise DataError(f'cannot read DICOM {path}: {e}') from None
    frames = int(ds.get('NumberOfFrames', 1) or 1)
    if frames > 1:
        raise DataError(f'cannot read DICOM {path}: it holds {frames} frames; only single-frame '
                        f'images are supported')
    if int(ds.get('SamplesPerPixel', 1)) == 3:  # colour (pydicom returns RGB)
        return arr if arr.dtype == np.uint8 else stretch_to_uint8(arr)
    try:
        if 'ModalityLUTSequence' in ds:
            values = apply_modality_lut(arr, ds)
        else:  # Rescale Slope / Intercept, either one alone with the other's default
            values = arr * float(ds.get('RescaleSlope', 1)) + float(ds.get('RescaleIntercept', 0))
        if 'WindowCenter' in ds and 'WindowWidth' in ds and _first_value(ds.WindowWidth) > 0:
            out = dicom_window(values, _first_value(ds.WindowCenter),
                               _first_value(ds.WindowWidth), ds.get('VOILUTFunction'))
        elif 'VOILUTSequence' in ds:
            out = stretch_to_uint8(apply_voi_lut(values, ds))
        else:
            out = stretch_to_uint8(values)
    except Exception as e:  # malformed rescale or window attributes
        raise DataError(f'cannot read DICOM {path}: bad rescale or window attributes ({e})') \
            from None
    if str(ds.get('PhotometricInterpretation', '')).upper() == 'MONOCHROME1':
        out = 255 - out
    return out


class PairDataset(data.Dataset):
    """Item k is (mixed[k % |A|], healthy[k % |B|]); length |A| + |B|, as in the original.

    An index i >= len (from EpochSampler: epoch * len + k) names pair k; with flip=True each
    image is flipped horizontally with probability 1/2, drawn from (seed, i) rather than from a
    global generator, so the data stream is the same with any number of workers and after a
    resume (the original drew flips from each worker's global RNG).
    """

    def __init__(self, mixed, healthy, transform, flip=False, seed=0, length=None):
        self.mixed, self.healthy, self.transform = list(mixed), list(healthy), transform
        self.flip, self.seed = flip, seed
        self.length = length or pair_count('train', self.mixed, self.healthy)

    def __len__(self):
        return self.length

    def __getitem__(self, i):
        k = i % len(self)
        x_A = self.transform(load_image(self.mixed[k % len(self.mixed)]))
        x_B = self.transform(load_image(self.healthy[k % len(self.healthy)]))
        if self.flip:
            flip_A, flip_B = item_flips(self.seed, i)
            x_A = x_A.flip(-1) if flip_A else x_A
            x_B = x_B.flip(-1) if flip_B else x_B
        return x_A, x_B


def pair_count(mode, mixed, healthy):
    """Pairs in an epoch: |A| + |B| for training, max(|A|, |B|) for test grids (the original's
    lengths; item k pairs A[k % |A|] with B[k % |B|] either way)."""
    return len(mixed) + len(healthy) if mode == 'train' else max(len(mixed), len(healthy))


class EpochSampler(data.Sampler):
    """A seeded permutation per epoch (the original reshuffles every epoch), resumable mid-epoch.

    Yields epoch * n + k so that the dataset can draw per-item flips from the index. ``start`` is
    the position in the epoch's permutation, counted in pairs of the global batch, so a run can
    resume with another number of ranks.

    Several ranks (added, torchrun): the permutation is cut into global batches of
    world_size * batch_size pairs and rank r takes pairs [r * batch_size, (r + 1) * batch_size)
    of each, so the ranks see disjoint parts of the batch one process with a world_size times
    larger batch would see. The incomplete last global batch of an epoch is left out (it changes
    with each epoch's shuffle), so that every rank takes the same number of equal-sized steps.
    With one rank nothing changes: the last, smaller batch is kept, as before.
    """

    def __init__(self, n, seed, shuffle=True, rank=0, world_size=1, batch_size=1):
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.rank, self.world_size, self.batch_size = rank, world_size, batch_size
        self.epoch, self.start = 0, 0

    def order(self, epoch):
        """The pair indices of one epoch, in order."""
        if not self.shuffle:
            return list(range(self.n))
        g = torch.Generator()
        g.manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n, generator=g).tolist()

    def _indices(self):
        rest = self.order(self.epoch)[self.start:]
        if self.world_size == 1:
            return rest
        b, g = self.batch_size, self.batch_size * self.world_size
        mine = []
        for i in range(0, len(rest) // g * g, g):  # whole global batches only
            mine += rest[i + self.rank * b:i + (self.rank + 1) * b]
        return mine

    def __iter__(self):
        base = self.epoch * self.n
        return iter([base + k for k in self._indices()])

    def __len__(self):
        if self.world_size == 1:
            return self.n - self.start
        return (self.n - self.start) // (self.batch_size * self.world_size) * self.batch_size


class LabelledDataset(data.Dataset):
    """Test images with labels (0 healthy, 1 anomalous); item is (image, label, index)."""

    def __init__(self, paths, labels, transform):
        self.paths, self.labels, self.transform = list(paths), list(labels), transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, k):
        return self.transform(load_image(self.paths[k])), self.labels[k], k


# ------------------------------------------------------------------------------------------------ #
#                    Unreadable images: found before training, refused or skipped                  #
# ------------------------------------------------------------------------------------------------ #

def preprocess_uint8(path, image_size):
    """Crop and resize one image: uint8 (S, S) when its channels are equal, else (S, S, 3).

    These are exactly the pixels build_transform's ToTensor receives (PIL's resize of an 8-bit
    image returns 8 bits), so storing them loses nothing.
    """
    return preprocess_uint8_sized(path, image_size)[0]


def preprocess_uint8_sized(path, image_size):
    """preprocess_uint8's array and the side of the square it was scaled from."""
    square = crop_radiograph(load_image(path))
    arr = np.asarray(resize_step(image_size)(square))
    if (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all():
        arr = np.ascontiguousarray(arr[..., 0])
    return arr, square.size[0]


SMALL_FACTOR = 4  # an image whose crop is under image_size / 4 on a side is warned about


def warn_small(small, image_size):
    """One warning line for images scaled up from far below --image_size ({path: side})."""
    if small:
        path, side = min(small.items())
        print(f'warning: {len(small)} image(s) are scaled up from less than a quarter of '
              f'--image_size {image_size} (e.g. {path}: {side} px after the crop); check that '
              f'they are radiographs, or lower --image_size', file=sys.stderr)


class _DecodeDataset(data.Dataset):
    """Item k: (k, preprocessed uint8 array or None, reason it could not be read or '')."""

    def __init__(self, paths, image_size):
        self.paths, self.image_size = paths, image_size

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, k):
        try:
            arr, side = preprocess_uint8_sized(self.paths[k], self.image_size)
            return k, arr, '', side
        except DataError as e:  # load_image turns every decoding failure into a DataError
            return k, None, str(e), 0


def _as_is(item):
    return item


def decode_all(paths, image_size, num_workers, store=None, desc='checking images', small=None):
    """Decode and preprocess every image once (num_workers processes); {path: reason} if bad.

    store(k, array) receives each readable image; without it the pixels are only checked.
    Images scaled up from far below image_size go into `small` {path: side} (warned about
    here when no dict is given).
    """
    warn_here = small is None
    small = {} if small is None else small
    workers = max(0, min(num_workers, os.cpu_count() or 1, len(paths)))
    # A private generator: iter() draws a seed from it, not from the global RNG, so a run that
    # builds the cache draws the same random numbers afterwards as a run that reuses it.
    loader = data.DataLoader(_DecodeDataset(paths, image_size), batch_size=None,
                             num_workers=workers, collate_fn=_as_is,
                             generator=torch.Generator().manual_seed(0))
    bad = {}
    for k, arr, reason, side in tqdm(loader, total=len(paths), desc=desc, file=sys.stdout,
                                     mininterval=1.0, disable=len(paths) < 500):
        if reason:
            bad[paths[k]] = reason
            continue
        if side * SMALL_FACTOR < image_size:
            small[paths[k]] = side
        if store is not None:
            store(k, arr)
    if warn_here:
        warn_small(small, image_size)
    return bad


def drop_unreadable(sets, bad, policy):
    """Refuse (DataError) or leave out, with a warning, the images listed in bad {path: reason}.

    The original crashed at the first unreadable image, wherever in the run it came; here every
    image has been decoded before training starts, and all the bad ones are listed at once.
    """
    if not bad:
        return sets
    n = sum(len(paths) for paths in sets.values())
    listing = '\n'.join(f'  {reason}' for _, reason in sorted(bad.items()))
    if policy == 'refuse':
        print(f'{len(bad)} unreadable images:\n{listing}', file=sys.stderr)
        raise DataError(f'{len(bad)} of {n} images cannot be read (listed above), e.g. '
                        f'{min(bad.items())[1]}. Fix or remove them, or pass --bad_images skip to '
                        f'train without them.')
    print(f'warning: leaving out {len(bad)} unreadable images of {n} (--bad_images skip):\n'
          f'{listing}', file=sys.stderr)
    kept = {name: [p for p in paths if os.path.abspath(p) not in bad]
            for name, paths in sets.items()}
    empty = [name for name, paths in kept.items() if not paths]
    if empty:
        raise DataError(f'no readable images left in the {" and ".join(empty)} set')
    return kept


# ------------------------------------------------------------------------------------------------ #
#                 Decode once: a uint8 cache of the preprocessed images, and its loader            #
# ------------------------------------------------------------------------------------------------ #
# The original decoded, cropped and resized every image from disk at every step. The cache holds
# the same uint8 pixels (see preprocess_uint8) once per image; batches are gathered from it, on
# the training device when it fits, and converted to [-1, 1] and flipped there. The floats equal
# the per-step path's exactly, so training is unchanged (tests/test_cache.py).

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
    if getattr(config, 'cache_dir', ''):
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
    if getattr(config, 'data_cache', 'on') == 'on':
        cache = open_cache(list(among or []) + paths, config.image_size,
                           default_cache_dir(config), getattr(config, 'num_workers', 0))
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


def item_flips(seed, i):
    """(flip x_A, flip x_B) of item i: each with probability 1/2, drawn from (seed, i)."""
    flip_A, flip_B = np.random.default_rng([seed, i]).random(2) < 0.5
    return bool(flip_A), bool(flip_B)


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


class CachedPairDataset:
    """PairDataset's pairs, indexing and flips, drawn from a PixelStore a batch at a time."""

    def __init__(self, mixed, healthy, store, rows, flip=False, seed=0, length=None):
        self.mixed, self.healthy, self.store = list(mixed), list(healthy), store
        self.rows_A = np.array([rows[os.path.abspath(p)] for p in self.mixed], dtype=np.int64)
        self.rows_B = np.array([rows[os.path.abspath(p)] for p in self.healthy], dtype=np.int64)
        self.flip, self.seed = flip, seed
        self.length = length or pair_count('train', self.mixed, self.healthy)

    def __len__(self):
        return self.length

    def __getitem__(self, i):
        x_A, x_B = self.batch([i])
        return x_A[0], x_B[0]

    def batch(self, indices):
        """The pairs at sampler indices (epoch * len + k) as two batches."""
        k = np.asarray(indices, dtype=np.int64) % len(self)
        flips = np.array([item_flips(self.seed, int(i)) if self.flip else (False, False)
                          for i in indices], dtype=bool).reshape(-1, 2)
        x_A = self.store.images(self.rows_A[k % len(self.mixed)], flips[:, 0])
        x_B = self.store.images(self.rows_B[k % len(self.healthy)], flips[:, 1])
        return x_A, x_B


class CachedLabelledDataset:
    """LabelledDataset's items (image, label, index), drawn from a PixelStore."""

    def __init__(self, paths, labels, store, rows):
        self.paths, self.labels, self.store = list(paths), list(labels), store
        self.rows = np.array([rows[os.path.abspath(p)] for p in self.paths], dtype=np.int64)

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, k):
        return self.store.images(self.rows[[k]])[0], self.labels[k], k

    def batch(self, indices):
        indices = list(indices)
        return (self.store.images(self.rows[indices]),
                torch.tensor([self.labels[k] for k in indices]), torch.tensor(indices))


class CachedLoader:
    """Batches of a cached dataset in its sampler's order, with the DataLoader interface the
    training loop uses (iter, len, .dataset, .sampler); no worker processes are needed."""

    def __init__(self, dataset, batch_size, sampler=None):
        self.dataset, self.batch_size, self.sampler = dataset, batch_size, sampler

    def __iter__(self):
        order = list(self.sampler) if self.sampler is not None else list(range(len(self.dataset)))
        return (self.dataset.batch(order[a:a + self.batch_size])
                for a in range(0, len(order), self.batch_size))

    def __len__(self):
        n = len(self.sampler) if self.sampler is not None else len(self.dataset)
        return math.ceil(n / self.batch_size)


def get_loader(config, mode, split=None, device=None):
    """Build the loader for a mode: 'train' / 'test' give pairs, 'testAUC' labelled images.

    For 'train' the loader's sampler is an EpochSampler (loader.sampler), whose epoch and start
    the training loop sets to resume exactly where a run stopped. Every image is decoded before
    the loader is returned, so unreadable ones are refused or left out (--bad_images) up front.
    With --data_cache on (default) the batches come from the uint8 cache, as tensors on device;
    with off, from a DataLoader that decodes every image at every step, as the original.
    """
    split = split or resolve_split(config)
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
    paths = [p for ps in sets.values() for p in ps]
    cached = getattr(config, 'data_cache', 'on') == 'on'
    if cached:
        cache = open_cache(paths, config.image_size, default_cache_dir(config),
                           config.num_workers)
        bad = cache.bad
    else:
        unique = sorted({os.path.abspath(p) for p in paths})
        bad = decode_all(unique, config.image_size, config.num_workers)
    sets = drop_unreadable(sets, bad, getattr(config, 'bad_images', 'refuse'))

    labelled = mode in ('testAUC', 'holdout')
    if labelled:
        paths = sets['test_normal'] + sets['test_anomalous']
        labels = [0] * len(sets['test_normal']) + [1] * len(sets['test_anomalous'])
        sampler = None
    else:
        train = mode == 'train'
        n_pairs = pair_count(mode, sets['mixed'], sets['healthy'])
        ranks = {}
        if train and torch.distributed.is_initialized():  # torchrun: this rank's slices (added)
            ranks = {'rank': torch.distributed.get_rank(), 'batch_size': config.batch_size,
                     'world_size': torch.distributed.get_world_size()}
            if ranks['world_size'] > 1 and n_pairs < config.batch_size * ranks['world_size']:
                raise DataError(f'{n_pairs} training pairs are fewer than one global batch '
                                f'({ranks["world_size"]} processes x --batch_size '
                                f'{config.batch_size}); lower --batch_size or --nproc_per_node')
        sampler = EpochSampler(n_pairs, config.seed, shuffle=train, **ranks)

    if cached:
        store = PixelStore(cache, device)
        if labelled:
            dataset = CachedLabelledDataset(paths, labels, store, cache.rows)
        else:
            dataset = CachedPairDataset(sets['mixed'], sets['healthy'], store, cache.rows,
                                        flip=train, seed=config.seed, length=n_pairs)
        how = f'built in {cache.built:.1f} s' if cache.built else 'reused'
        print(f'Data cache: {cache.path} ({how}; {store.pixels.shape[0]} images, '
              f'{store.pixels.nbytes / 2 ** 20:.1f} MiB, held as a {store.where} on '
              f'{store.device})')
        return CachedLoader(dataset, config.batch_size, sampler)

    transform = build_transform(config.image_size)
    if labelled:
        dataset = LabelledDataset(paths, labels, transform)
    else:
        dataset = PairDataset(sets['mixed'], sets['healthy'], transform, flip=train,
                              seed=config.seed, length=n_pairs)
    # A private generator: each iter(loader) draws a worker base seed from it, which would
    # otherwise shift the global RNG (and the gradient penalty's alphas) on every reshuffle.
    generator = torch.Generator()
    generator.manual_seed(config.seed)
    return data.DataLoader(dataset, batch_size=config.batch_size, sampler=sampler,
                           num_workers=config.num_workers, generator=generator,
                           pin_memory=torch.cuda.is_available())


# ------------------------------------------------------------------------------------------------ #
#          Evaluation helpers (added): ground-truth lesion masks, folders of unlabelled images      #
# ------------------------------------------------------------------------------------------------ #

def find_mask(image_path, root):
    """The ground-truth lesion mask of an image, or None: <root>/masks/<path relative to root>.

    This is synthetic.py's layout (root/test/anomalous/x.png -> root/masks/test/anomalous/x.png);
    a mask saved as .png beside a JPEG or DICOM image is found too.
    """
    rel = os.path.relpath(os.path.abspath(image_path), os.path.abspath(root))
    if rel.startswith(os.pardir):
        return None
    for candidate in (rel, os.path.splitext(rel)[0] + '.png'):
        path = os.path.join(root, 'masks', candidate)
        if os.path.isfile(path):
            return path
    return None


def load_mask(mask_path, image_path, image_size):
    """A lesion mask through the image's own crop and resize: boolean (image_size, image_size)."""
    try:
        with Image.open(mask_path) as m:
            mask = m.convert('L')
    except Exception as e:
        raise DataError(f'cannot read mask {mask_path}: {e}') from None
    image_wh = load_image(image_path).size
    if mask.size != image_wh:
        raise DataError(f'mask {mask_path} is {mask.size[0]}x{mask.size[1]} but its image '
                        f'{image_path} is {image_wh[0]}x{image_wh[1]}; masks must match their '
                        f'images pixel for pixel')
    mask = resize_step(image_size)(crop_radiograph(mask))
    return np.asarray(mask) >= 128  # masks are 0 / 255; resizing blurs the edges


class FolderImages(data.Dataset):
    """Images by path with the test preprocessing; item (image, label, index, error).

    An unreadable image gives a zero image and its error message instead of stopping the
    loader, so that a caller scoring a folder can list it and go on.
    """

    def __init__(self, paths, labels, image_size):
        self.paths, self.labels = list(paths), list(labels)
        self.transform = build_transform(image_size)
        self.image_size = image_size

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, k):
        try:
            return self.transform(load_image(self.paths[k])), self.labels[k], k, ''
        except DataError as e:
            return torch.zeros(3, self.image_size, self.image_size), self.labels[k], k, str(e)


def folder_loader(config, paths, labels=None):
    """Batches (images, labels, indices, errors) of a list of images, in order (no cache)."""
    labels = [-1] * len(paths) if labels is None else labels
    return data.DataLoader(FolderImages(paths, labels, config.image_size),
                           batch_size=config.batch_size, shuffle=False,
                           num_workers=config.num_workers)
