"""The global image statistics: mean intensity, contrast and sharpness of each image.

tools/baselines.py scores images by each of them (the global_* methods), and tools/explain.py
regresses another detector's score on all three.
"""
import numpy as np
import torch

import data_loader

# The global image statistics, in the column order of global_statistics().
STATISTICS = ('mean_intensity', 'contrast', 'sharpness')


def global_statistics(x):
    """[N, C, H, W] images in [-1, 1] -> [N, 3] float64: mean intensity, contrast (standard
    deviation of the pixel values) and sharpness (mean magnitude of the forward-difference
    gradient), of the channel mean (an X-ray's three channels are equal)."""
    g = x.to(torch.float64).mean(dim=1)
    values = g.flatten(1)
    dx = g[:, :-1, 1:] - g[:, :-1, :-1]
    dy = g[:, 1:, :-1] - g[:, :-1, :-1]
    sharpness = (dx ** 2 + dy ** 2).sqrt().flatten(1).mean(dim=1)
    return torch.stack([values.mean(dim=1), values.std(dim=1, unbiased=False), sharpness],
                       dim=1).numpy()


def folder_statistics(paths, image_size, batch=64):
    """global_statistics of image files read as testAUC reads them, a batch at a time (a large
    training set need not fit in memory at once): [N, 3]."""
    data_loader.check_files_exist(paths, 'training folders')
    dataset = data_loader.LabelledDataset(paths, [0] * len(paths),
                                          data_loader.build_transform(image_size))
    parts = [global_statistics(torch.stack([dataset[k][0]
                                            for k in range(i, min(i + batch, len(paths)))]))
             for i in range(0, len(paths), batch)]
    return np.concatenate(parts) if parts else np.zeros((0, len(STATISTICS)))


