"""Reading and preprocessing images: PNG, JPEG, BMP, TIFF and DICOM to the original's crop,
resize and [-1, 1] scaling; every image decoded once up front so unreadable ones are found early.
"""
import os
import sys

import numpy as np
import torch
from PIL import Image
from torch.utils import data
from torchvision import transforms as T
from tqdm import tqdm

from healthygan.errors import DataError

DICOM_EXTENSIONS = ('.dcm', '.dicom')
IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff') + DICOM_EXTENSIONS
TOP_CROP_FRACTION = 0.08  # the original cuts away the top 8% of rows (labels, collimator edge)


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


def to_rgb8(img):
    """A PIL image as 8-bit RGB, the way image files are read."""
    if img.mode in ('I;16', 'I;16B', 'I;16L', 'I', 'F'):
        # 16-bit / integer grayscale: PIL's convert('RGB') would clip at 255, so stretch the
        # image's own range to 8 bits instead.
        img = Image.fromarray(stretch_to_uint8(np.asarray(img)), 'L')
    return img.convert('RGB')


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
            return to_rgb8(img)
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


def drop_unreadable(sets, bad, policy, mode='train'):
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
                        f'{"train" if mode in ("train", "holdout") else "test"} without them.')
    print(f'warning: leaving out {len(bad)} unreadable images of {n} (--bad_images skip):\n'
          f'{listing}', file=sys.stderr)
    kept = {name: [p for p in paths if os.path.abspath(p) not in bad]
            for name, paths in sets.items()}
    empty = [name for name, paths in kept.items() if not paths]
    if empty:
        raise DataError(f'no readable images left in the {" and ".join(empty)} set')
    return kept
