"""Datasets and loaders: pairs of (mixed, healthy) images for training, labelled images for testing.

Two layouts are supported:
- ``Covid``: the original's list-based layout. Pickled lists of file names (``train_neg``,
  ``train_pos``, ``train_neg_mixed``, ``test_neg``, ``test_pos``) are read from ``--list_dir``
  (default ``data/covid``, relative to the working directory, as the original); images from
  ``<image_dir>/train`` and ``<image_dir>/test``.
- ``Folder``: ``<image_dir>/healthy``, ``<image_dir>/mixed``, ``<image_dir>/test/normal`` and
  ``<image_dir>/test/anomalous`` (see datasets/README.md).
"""
import io
import os
import pickle

import numpy as np
import torch
from PIL import Image
from torch.utils import data
from torchvision import transforms as T

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff')
TOP_CROP_FRACTION = 0.08  # the original cuts away the top 8% of rows (labels, collimator edge)


class DataError(ValueError):
    """A dataset problem the user must fix: the message names the file or folder and the fix."""


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
    """Sorted image files under a folder (recursively)."""
    if not os.path.isdir(folder):
        raise DataError(f'image folder not found: {folder}')
    found = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        found += [os.path.join(root, f) for f in sorted(files)
                  if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith('.')]
    if not found:
        raise DataError(f'no images ({", ".join(IMAGE_EXTENSIONS)}) found in {folder}')
    return found


def resolve_split(config):
    """Return {'healthy', 'mixed', 'test_normal', 'test_anomalous'}: lists of image paths."""
    if config.dataset == 'Covid':
        lists = {name: safe_load_list(os.path.join(config.list_dir, name + '.pickle'))
                 for name in ('train_neg', 'train_pos', 'train_neg_mixed', 'test_neg', 'test_pos')}
        train_dir = os.path.join(config.image_dir, 'train')
        test_dir = os.path.join(config.image_dir, 'test')
        split = {
            'healthy': [os.path.join(train_dir, f) for f in lists['train_neg']],
            'mixed': [os.path.join(train_dir, f)
                      for f in lists['train_pos'] + lists['train_neg_mixed']],
            'test_normal': [os.path.join(test_dir, f) for f in lists['test_neg']],
            'test_anomalous': [os.path.join(test_dir, f) for f in lists['test_pos']],
        }
    elif config.dataset == 'Folder':
        if not os.path.isdir(config.image_dir):
            raise DataError(f'--image_dir {config.image_dir} does not exist; it should hold '
                            f'healthy/, mixed/, test/normal/ and test/anomalous/.')
        split = {
            'healthy': list_images(os.path.join(config.image_dir, 'healthy')),
            'mixed': list_images(os.path.join(config.image_dir, 'mixed')),
            'test_normal': list_images(os.path.join(config.image_dir, 'test', 'normal')),
            'test_anomalous': list_images(os.path.join(config.image_dir, 'test', 'anomalous')),
        }
    else:
        raise DataError(f'unknown --dataset {config.dataset}')
    empty = [name for name, paths in split.items() if not paths]
    if empty:
        raise DataError(f'--dataset {config.dataset} under {config.image_dir}: the '
                        f'{" and ".join(empty)} set is empty; every set needs images')
    return split


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


def build_transform(image_size):
    """The original's preprocessing: crop, resize, to [-1, 1] (flips are drawn per item)."""
    return T.Compose([
        T.Lambda(crop_radiograph),
        T.Resize(image_size, interpolation=T.InterpolationMode.BILINEAR, antialias=True),
        T.ToTensor(),
        T.Normalize(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
    ])


def load_image(path):
    """Open an image as RGB (X-rays become 3 equal channels); a clear error if it is broken."""
    try:
        with Image.open(path) as img:
            if img.mode in ('I;16', 'I;16B', 'I;16L', 'I', 'F'):
                # 16-bit / integer grayscale: PIL's convert('RGB') would clip at 255, so stretch
                # the image's own range to 8 bits instead.
                arr = np.asarray(img, dtype=np.float32)
                lo, hi = float(arr.min()), float(arr.max())
                arr = (arr - lo) * (255.0 / max(hi - lo, 1e-6))
                img = Image.fromarray(arr.round().astype(np.uint8), mode='L')
            return img.convert('RGB')
    except FileNotFoundError:
        raise DataError(f'image not found: {path}') from None
    except Exception as e:
        raise DataError(f'cannot read image {path}: {e}') from None


class PairDataset(data.Dataset):
    """Item k is (mixed[k % |A|], healthy[k % |B|]); length |A| + |B|, as in the original.

    An index i >= len (from EpochSampler: epoch * len + k) names pair k; with flip=True each
    image is flipped horizontally with probability 1/2, drawn from (seed, i) rather than from a
    global generator, so the data stream is the same with any number of workers and after a
    resume (the original drew flips from each worker's global RNG).
    """

    def __init__(self, mixed, healthy, transform, flip=False, seed=0):
        self.mixed, self.healthy, self.transform = list(mixed), list(healthy), transform
        self.flip, self.seed = flip, seed

    def __len__(self):
        return len(self.mixed) + len(self.healthy)

    def __getitem__(self, i):
        k = i % len(self)
        x_A = self.transform(load_image(self.mixed[k % len(self.mixed)]))
        x_B = self.transform(load_image(self.healthy[k % len(self.healthy)]))
        if self.flip:
            flip_A, flip_B = np.random.default_rng([self.seed, i]).random(2) < 0.5
            x_A = x_A.flip(-1) if flip_A else x_A
            x_B = x_B.flip(-1) if flip_B else x_B
        return x_A, x_B


class EpochSampler(data.Sampler):
    """A seeded permutation per epoch (the original reshuffles every epoch), resumable mid-epoch.

    Yields epoch * n + k so that the dataset can draw per-item flips from the index.
    """

    def __init__(self, n, seed, shuffle=True):
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.epoch, self.start = 0, 0

    def order(self, epoch):
        """The pair indices of one epoch, in order."""
        if not self.shuffle:
            return list(range(self.n))
        g = torch.Generator()
        g.manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n, generator=g).tolist()

    def __iter__(self):
        base = self.epoch * self.n
        return iter([base + k for k in self.order(self.epoch)[self.start:]])

    def __len__(self):
        return self.n - self.start


class LabelledDataset(data.Dataset):
    """Test images with labels (0 healthy, 1 anomalous); item is (image, label, index)."""

    def __init__(self, paths, labels, transform):
        self.paths, self.labels, self.transform = list(paths), list(labels), transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, k):
        return self.transform(load_image(self.paths[k])), self.labels[k], k


def get_loader(config, mode, split=None):
    """Build the DataLoader for a mode: 'train' / 'test' give pairs, 'testAUC' labelled images.

    For 'train' the loader's sampler is an EpochSampler (loader.sampler), whose epoch and start
    the training loop sets to resume exactly where a run stopped.
    """
    split = split or resolve_split(config)
    transform = build_transform(config.image_size)
    if mode == 'testAUC':
        paths = split['test_normal'] + split['test_anomalous']
        labels = [0] * len(split['test_normal']) + [1] * len(split['test_anomalous'])
        check_files_exist(paths, 'test')
        dataset = LabelledDataset(paths, labels, transform)
        sampler = None
    else:
        check_files_exist(split['mixed'], 'mixed')
        check_files_exist(split['healthy'], 'healthy')
        train = mode == 'train'
        dataset = PairDataset(split['mixed'], split['healthy'], transform, flip=train,
                              seed=config.seed)
        sampler = EpochSampler(len(dataset), config.seed, shuffle=train)
    # A private generator: each iter(loader) draws a worker base seed from it, which would
    # otherwise shift the global RNG (and the gradient penalty's alphas) on every reshuffle.
    generator = torch.Generator()
    generator.manual_seed(config.seed)
    return data.DataLoader(dataset, batch_size=config.batch_size, sampler=sampler,
                           num_workers=config.num_workers, generator=generator,
                           pin_memory=torch.cuda.is_available())
