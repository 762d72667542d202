"""Images given to the detector (added): paths, folders, PIL images, numpy arrays or preprocessed
tensors, each read and preprocessed as --mode score reads files, so that a score equals that
image's row in scores.csv. Whatever cannot be a radiograph (empty, non-finite, too small, of a
shape no image has) is refused in one DataError naming what was given."""
import os

import numpy as np
import torch
from PIL import Image

from healthygan.data.decode import load_image, stretch_to_uint8, to_rgb8
from healthygan.data.splits import list_images
from healthygan.errors import DataError

MIN_SIDE = 8  # px: smaller is no radiograph (training warns far above this)
ARRAY_SHAPES = '(H, W), (H, W, 1), (H, W, 3) or (H, W, 4)'
TENSOR_RANGE = 1.0 + 1e-3  # a preprocessed tensor lies in [-1, 1]; rounding may step past


def prepare(x, transform, image_size, device):
    """(batch on the device, a name per image, whether one image was given)."""
    if torch.is_tensor(x):
        return tensor_batch(x, image_size).to(device), \
            ['<tensor>'] * (1 if x.dim() == 3 else len(x)), x.dim() == 3
    single = not isinstance(x, (list, tuple))
    items = [x] if single else list(x)
    if single and is_folder(x):  # a folder: its images, sorted as score mode lists them
        items, single = folder_images(os.fspath(x)), False
    if not items:
        raise DataError('no images given')
    tensors = [transform(checked_size(as_rgb(item), item)) for item in items]
    sources = [str(item) if isinstance(item, (str, os.PathLike)) else type(item).__name__
               for item in items]
    return torch.stack(tensors).to(device), sources, single


def is_folder(item):
    return isinstance(item, (str, os.PathLike)) and os.path.isdir(item)


def folder_images(folder):
    """The regular image files below a folder, sorted (a FIFO or device would block a read)."""
    return [p for p in list_images(folder) if os.path.isfile(p)]


def describe(item):
    """What was given, in words, for an error message."""
    if isinstance(item, (str, os.PathLike)):
        return os.fspath(item)
    if isinstance(item, np.ndarray):
        return f'a {item.dtype} array of shape {item.shape}'
    return f'a {type(item).__name__}'


def checked_size(img, item):
    """The image, or a DataError where a side is under MIN_SIDE pixels."""
    if min(img.size) < MIN_SIDE:
        raise DataError(f'{describe(item)} is {img.size[0]} x {img.size[1]} px: no radiograph '
                        f'(at least {MIN_SIDE} px a side)')
    return img


def as_rgb(item):
    """An image file, PIL image or numpy array as 8-bit RGB, read as files are read."""
    if isinstance(item, (str, os.PathLike)):
        return load_image(os.fspath(item))
    if isinstance(item, Image.Image):
        try:
            item.load()  # a closed image has no pixels to read
            return to_rgb8(item)
        except (ValueError, AttributeError, OSError) as e:
            raise DataError(f'the PIL image cannot be read ({e or type(e).__name__}): give it '
                            f'open, or its file') from None
    if isinstance(item, np.ndarray):
        return to_rgb8(Image.fromarray(array_to_uint8(checked_array(item))))
    raise DataError(f'cannot score {describe(item)}: give a path, a folder, a PIL image, a '
                    f'numpy array {ARRAY_SHAPES} or a tensor batch [N, 1 or 3, S, S]')


def checked_array(item):
    """A numpy image as (H, W) or (H, W, 3|4), or a DataError naming what is wrong with it."""
    if item.ndim not in (2, 3) or (item.ndim == 3 and item.shape[2] not in (1, 3, 4)):
        raise DataError(f'an array image must be {ARRAY_SHAPES}, not {item.shape}; give '
                        f'several images as a list of arrays')
    if item.dtype.kind not in 'uif':
        raise DataError(f'{describe(item)} holds no pixel values: give an integer or float '
                        f'array')
    if item.size == 0:
        raise DataError(f'{describe(item)} is empty')
    if item.dtype.kind == 'f' and not np.isfinite(item).all():
        raise DataError(f'{describe(item)} holds NaN or infinite values: no radiograph')
    return item[..., 0] if item.ndim == 3 and item.shape[2] == 1 else item


def array_to_uint8(arr):
    """8-bit pixels of an array: uint8 as it is; floats within [0, 1] as intensities (x * 255, so
    that a picture scores as its uint8 self); other floats and 16-bit or signed integers
    stretched from their own range to 8 bits, as 16-bit files are."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype.kind == 'f' and arr.min() >= 0 and arr.max() <= 1:
        return (arr.astype(np.float64) * 255.0).round().astype(np.uint8)
    return stretch_to_uint8(arr)


def tensor_batch(x, image_size):
    """A preprocessed tensor ([C, S, S] or [N, C, S, S], C 1 or 3, values in [-1, 1])."""
    if x.is_meta:
        raise DataError('a meta tensor holds no values: give a tensor with data')
    x = x.detach()  # scoring needs no gradient
    batch = x[None] if x.dim() == 3 else x
    if batch.dim() != 4 or batch.shape[1] not in (1, 3) or \
            tuple(batch.shape[2:]) != (image_size, image_size):
        raise DataError(f'a tensor must be [N, 1 or 3, {image_size}, {image_size}] or '
                        f'[1 or 3, {image_size}, {image_size}] (preprocessed to this run\'s '
                        f'size, values in [-1, 1]), not {list(x.shape)}; give paths, PIL images '
                        f'or arrays to have them preprocessed')
    if not len(batch):
        raise DataError(f'the tensor batch {list(x.shape)} holds no image')
    if not (batch.is_floating_point() or batch.dtype in (torch.uint8, torch.int16,
                                                          torch.int32, torch.int64)):
        raise DataError(f'a {batch.dtype} tensor holds no pixel values: give a float tensor in '
                        f'[-1, 1]')
    batch = batch.float()
    if not torch.isfinite(batch).all():
        raise DataError(f'the tensor {list(x.shape)} holds NaN or infinite values: no '
                        f'radiograph')
    low, high = float(batch.min()), float(batch.max())
    if low < -TENSOR_RANGE or high > TENSOR_RANGE:
        raise DataError(f'the tensor {list(x.shape)} holds values in [{low:g}, {high:g}], not '
                        f'in [-1, 1] as preprocessed images are (from 0..255: x / 127.5 - 1); '
                        f'or give the image as an array to have it preprocessed')
    if batch.shape[1] == 1:
        batch = batch.expand(-1, 3, -1, -1)
    return batch
