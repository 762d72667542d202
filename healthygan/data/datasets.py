"""Datasets, sampler and loader: training pairs and labelled test images, decoded at every step
(the original's path) or drawn from the uint8 cache a batch at a time, with the same items.
"""
import math
import os

import numpy as np
import torch
from torch.utils import data

from healthygan.data.decode import build_transform, load_image
from healthygan.errors import DataError

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


def item_flips(seed, i):
    """(flip x_A, flip x_B) of item i: each with probability 1/2, drawn from (seed, i)."""
    flip_A, flip_B = np.random.default_rng([seed, i]).random(2) < 0.5
    return bool(flip_A), bool(flip_B)



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
