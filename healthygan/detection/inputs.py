"""Images given to the detector (added): paths, PIL images, numpy arrays or preprocessed tensors,
each read and preprocessed as --mode score reads files, so that a score equals that image's row
in scores.csv."""
import os

import numpy as np
import torch
from PIL import Image

from healthygan.data.decode import load_image, stretch_to_uint8, to_rgb8
from healthygan.errors import DataError


def prepare(x, transform, image_size, device):
    """(batch on the device, a name per image, whether one image was given)."""
    if torch.is_tensor(x):
        return tensor_batch(x, image_size).to(device), \
            ['<tensor>'] * (1 if x.dim() == 3 else len(x)), x.dim() == 3
    single = not isinstance(x, (list, tuple))
    items = [x] if single else list(x)
    if not items:
        raise DataError('no images given')
    tensors = [transform(as_rgb(item)) for item in items]
    sources = [str(item) if isinstance(item, (str, os.PathLike)) else type(item).__name__
               for item in items]
    return torch.stack(tensors).to(device), sources, single


def as_rgb(item):
    """An image file, PIL image or numpy array as 8-bit RGB, read as files are read."""
    if isinstance(item, (str, os.PathLike)):
        return load_image(os.fspath(item))
    if isinstance(item, Image.Image):
        return to_rgb8(item)
    if isinstance(item, np.ndarray) and item.ndim in (2, 3):
        if item.ndim == 3 and item.shape[2] not in (1, 3, 4):
            raise DataError(f'an array image must be (H, W), (H, W, 1), (H, W, 3) or '
                            f'(H, W, 4), not {item.shape}')
        arr = item[..., 0] if item.ndim == 3 and item.shape[2] == 1 else item
        if arr.dtype != np.uint8:  # 16-bit, float: stretched to 8 bits as 16-bit files are
            arr = stretch_to_uint8(arr)
        return to_rgb8(Image.fromarray(arr))
    raise DataError(f'cannot score a {type(item).__name__}: give a path, a PIL image, a numpy '
                    f'array or a tensor batch')


def tensor_batch(x, image_size):
    """A preprocessed tensor ([C, S, S] or [N, C, S, S], C 1 or 3, values in [-1, 1])."""
    batch = x[None] if x.dim() == 3 else x
    if batch.dim() != 4 or batch.shape[1] not in (1, 3) or \
            tuple(batch.shape[2:]) != (image_size, image_size):
        raise DataError(f'a tensor must be [N, 1 or 3, {image_size}, {image_size}] '
                        f'(preprocessed to this run\'s size, values in [-1, 1]), not '
                        f'{list(x.shape)}; give paths, PIL images or arrays to have them '
                        f'preprocessed')
    if batch.shape[1] == 1:
        batch = batch.expand(-1, 3, -1, -1)
    return batch.float()
