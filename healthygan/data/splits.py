"""Which images a run reads: the split lists and folders, held-out images, lesion masks.

Two layouts are supported:
- ``Covid``: the original's list-based layout. Pickled lists of file names (``train_neg``,
  ``train_pos``, ``train_neg_mixed``, ``test_neg``, ``test_pos``) are read from ``--list_dir``
  (default ``data/covid``, relative to the working directory, as the original); images from
  ``<image_dir>/train`` and ``<image_dir>/test``.
- ``Folder``: ``<image_dir>/healthy``, ``<image_dir>/mixed``, ``<image_dir>/test/normal`` and
  ``<image_dir>/test/anomalous`` (see datasets/README.md).
"""
import hashlib
import io
import os
import pickle
import stat

import numpy as np
from PIL import Image

from healthygan.data.decode import IMAGE_EXTENSIONS, crop_radiograph, load_image, resize_step
from healthygan.errors import DataError


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


def what_is(path):
    """What a path that is not the expected folder or image file is, in words (for messages)."""
    if os.path.islink(path) and not os.path.exists(path):
        return f'a link to {os.readlink(path)}, which does not exist'
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return 'missing'
    kinds = ((stat.S_ISREG, 'a regular file'), (stat.S_ISDIR, 'a folder'),
             (stat.S_ISFIFO, 'a FIFO (named pipe)'), (stat.S_ISCHR, 'a character device'),
             (stat.S_ISBLK, 'a block device'), (stat.S_ISSOCK, 'a socket'))
    kind = next((name for test, name in kinds if test(mode)), 'not a regular file')
    if os.path.islink(path):
        return f'a link to {os.path.realpath(path)}, {kind}'
    return kind


def list_images(folder):
    """Sorted image files under a folder (recursively, following linked sub-folders; a link
    back to a folder already searched is not entered again)."""
    if not os.path.isdir(folder):
        if os.path.lexists(folder):
            raise DataError(f'image folder {folder} is {what_is(folder)}, not a folder')
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
        if os.path.lexists(config.image_dir) and not os.path.isdir(config.image_dir):
            raise DataError(f'--image_dir {config.image_dir} is {what_is(config.image_dir)}, not '
                            f'a folder; it should hold train/ and test/ (the Covid layout)')
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
            what = what_is(config.image_dir) if os.path.lexists(config.image_dir) else None
            raise DataError(f'--image_dir {config.image_dir} '
                            f'{f"is {what}, not a folder" if what else "does not exist"}; it '
                            f'should be a folder holding healthy/, mixed/, test/normal/ and '
                            f'test/anomalous/.')
        for name in wanted:
            split[name] = list_images(os.path.join(config.image_dir, FOLDER_SETS[name]))
    else:
        raise DataError(f'unknown --dataset {config.dataset}')
    empty = [name for name in wanted if not split[name]]
    if empty:
        raise DataError(f'--dataset {config.dataset} under {config.image_dir}: the '
                        f'{" and ".join(empty)} set is empty; every set needs images')
    fraction = config.holdout_fraction
    for name in ('healthy', 'mixed'):
        strata = None
        if name == 'mixed' and split[name] and fraction > 0 and config.holdout_stratify:
            if not config.holdout_labels:
                raise DataError('--holdout_stratify true needs --holdout_labels (the mixed '
                                "images' true labels, e.g. mixed_truth.csv)")
            strata = read_truth_labels(config.holdout_labels, split[name],
                                       os.path.join(config.image_dir, 'mixed'))
        split[name], split[f'holdout_{name}'] = hold_out(split[name], fraction, strata)
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


def hold_out(paths, fraction, strata=None):
    """Split paths into (kept, held_out) with round(fraction * n) held out.

    Added for label-free checkpoint selection (AUCp): held-out healthy and mixed images are never
    trained on and are scored at every checkpoint. The choice depends only on the file names, so
    every run (any seed, resumed or not) holds out the same images; at least one image is kept.
    With strata (a label per path), round(fraction * n) of each stratum is held out, so that a
    validation set holds its share of the rare class and training keeps the folder's mixture.
    """
    if not 0 <= fraction < 1:
        raise DataError(f'--holdout_fraction {fraction}: expected a fraction in [0, 1)')
    if strata is None:
        groups = [list(paths)]
    else:
        groups = [[p for p, s in zip(paths, strata) if s == value] for value in sorted(set(strata))]
    chosen = set()
    for group in groups:  # each keeps at least one image
        n_out = min(int(round(fraction * len(group))), len(group) - 1)
        chosen.update(sorted(group, key=_stable_key)[:max(n_out, 0)])
    return [p for p in paths if p not in chosen], [p for p in paths if p in chosen]


def check_files_exist(paths, what):
    """Fail before any work if listed images are missing or are not regular files (a FIFO or
    a device would block or never end when read): count and examples."""
    bad = [p for p in paths if not os.path.isfile(p)]
    missing = [p for p in bad if not os.path.lexists(p)]
    if missing:
        examples = ', '.join(missing[:3])
        raise DataError(f'{len(missing)} of {len(paths)} {what} images are missing, e.g. {examples}')
    if bad:
        raise DataError(f'{len(bad)} of {len(paths)} {what} images are not regular files, e.g. '
                        f'{bad[0]} is {what_is(bad[0])}; remove them or replace them by the '
                        f'image files')


# ------------------------------------------------------------------------------------------------ #
#                         Evaluation (added): ground-truth lesion masks                            #
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


TRUTH_LABELS = {'0': 0, 'normal': 0, 'healthy': 0, '1': 1, 'anomalous': 1, 'diseased': 1}


def truth_table(csv_path):
    """{normalised file: label} of a labels CSV (file, label). A spreadsheet's UTF-8 byte-order
    mark and CRLF line ends are read as such; a file given two different labels is refused."""
    import csv
    try:
        with open(csv_path, newline='', encoding='utf-8-sig') as f:
            reader = csv.DictReader(f)
            reader.fieldnames = [(n or '').strip() for n in reader.fieldnames or []]
            rows = list(reader)
    except (OSError, UnicodeDecodeError) as e:
        why = getattr(e, 'strerror', None) or 'not UTF-8 text'
        raise DataError(f'--holdout_labels {csv_path}: cannot read it ({why})') from None
    if not rows or not {'file', 'label'} <= set(rows[0]):
        raise DataError(f'--holdout_labels {csv_path}: expected a CSV with columns file and label '
                        f'(as mixed_truth.csv)')
    table, line_of = {}, {}
    for line, row in enumerate(rows, 2):  # line 1 is the header
        label = TRUTH_LABELS.get(str(row['label']).strip().lower())
        if label is None:
            raise DataError(f'--holdout_labels {csv_path}: label {row["label"]!r} of '
                            f'{row["file"]} is not one of {", ".join(TRUTH_LABELS)}')
        key = os.path.normpath(str(row['file']).strip())
        if key in table and table[key] != label:
            raise DataError(f'--holdout_labels {csv_path}: {row["file"]} has two labels, '
                            f'{table[key]} (line {line_of[key]}) and {label} (line {line}); '
                            f'keep the one that is right')
        table[key], line_of[key] = label, line
    return table


def read_truth_labels(csv_path, paths, root):
    """The true label (0 normal, 1 anomalous) of each of `paths` from a CSV with columns file
    and label, as a dataset's mixed_truth.csv: file is the path below `root` (or the name).

    Added for validation carved from the training folders: only held-out images are looked up,
    and no label ever reaches training.
    """
    table = truth_table(csv_path)
    labels = []
    for path in paths:
        rel = os.path.normpath(os.path.relpath(path, root))
        found = table.get(rel, table.get(os.path.basename(path)))
        if found is None:
            raise DataError(f'--holdout_labels {csv_path} has no label for the image {path}; '
                            f'it should list every image of {root}')
        labels.append(found)
    return labels
