"""Loaders for training and testing: get_loader (pairs of mixed and healthy images for training,
labelled images for testing) and folder_loader (any list of images), as in the original's layout.

The work is done in healthygan/data/, one job per module:
- loaders.py: get_loader and folder_loader, the loaders a mode reads;
- splits.py: which images a mode reads (Covid lists, Folder layout, held-out images, lesion masks);
- decode.py: reading and preprocessing images (PNG, JPEG, TIFF, DICOM), unreadable ones found early;
- cache.py: the uint8 cache of preprocessed images and the store batches are drawn from;
- datasets.py: the datasets, the resumable epoch sampler and the cached loader;
- overlap.py: training images that are also test, validation or other-set images (warned about).
The package imports them from there (it never imports this file); the names are re-exported
here so that the original's ``data_loader.get_loader`` and users' ``data_loader.X`` keep working.
"""
from healthygan.data.cache import (PixelStore, default_cache_dir, mean_image, open_cache,
                                   same_content)
from healthygan.data.datasets import (CachedLabelledDataset, CachedLoader, CachedPairDataset,
                                      EpochSampler, FolderImages, LabelledDataset, PairDataset,
                                      item_flips, pair_count)
from healthygan.data.decode import (build_transform, crop_radiograph, decode_all, dicom_window,
                                    drop_unreadable, load_image)
from healthygan.data.loaders import folder_loader, get_loader
from healthygan.data.splits import (check_files_exist, find_mask, hold_out, list_images,
                                    load_mask, read_truth_labels, resolve_split, safe_load_list)
from healthygan.errors import DataError

__all__ = ['get_loader', 'folder_loader', 'DataError',
           'check_files_exist', 'find_mask', 'hold_out', 'list_images', 'load_mask',
           'read_truth_labels', 'resolve_split', 'safe_load_list',
           'build_transform', 'crop_radiograph', 'dicom_window', 'load_image',
           'PixelStore', 'default_cache_dir', 'mean_image', 'open_cache', 'same_content',
           'CachedLoader', 'EpochSampler', 'LabelledDataset', 'PairDataset', 'item_flips']
