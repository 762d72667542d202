"""Training images that are also test, validation or other-set images (added): found by path
(links resolved) and by the bytes of the files, and reported before training starts.

The original trains on whatever the folders or lists hold; so does this program (a warning, not
a refusal), but never silently: a run that trains on its test images would report a test AUROC
that is not independent of training, and a file in both healthy and mixed is two labels at once.
A file listed twice in one set (a Covid list's duplicate entry) is trained on twice, as in the
original, and is not reported here.
"""
import os

from healthygan.data.cache import same_content
from healthygan.data.splits import list_images, resolve_split
from healthygan.errors import DataError


def shared_files(paths_a, paths_b):
    """[(a, b)]: files of paths_a that are files of paths_b by resolved path or by content.
    Only regular files are compared (a FIFO or a device is never read)."""
    a_files = sorted({p for p in paths_a if os.path.isfile(p)})
    b_files = sorted({p for p in paths_b if os.path.isfile(p)})
    real_b = {}
    for b in b_files:
        real_b.setdefault(os.path.realpath(b), b)
    pairs = [(a, real_b[os.path.realpath(a)]) for a in a_files if os.path.realpath(a) in real_b]
    by_path = {a for a, _ in pairs}
    rest_a = [a for a in a_files if a not in by_path]
    matched = {os.path.realpath(a) for a in by_path}
    rest_b = [b for b in b_files if os.path.realpath(b) not in matched]
    seen = set(by_path)
    for a, b in same_content(rest_a, rest_b):
        if a not in seen and os.path.realpath(a) != os.path.realpath(b):
            pairs.append((a, b))
            seen.add(a)
    return sorted(pairs)


def evaluation_sets(config):
    """{'test': paths, 'validation': paths} that testing this run would read, where they exist
    now (a training run needs neither, so an absent or empty one is simply left out)."""
    sets = {}
    try:
        split = resolve_split(config, 'testAUC')
        sets['test'] = split['test_normal'] + split['test_anomalous']
    except DataError:
        pass
    where = config.val_dir
    if not where and config.dataset == 'Folder':
        where = os.path.join(config.image_dir, 'val')
    val = []
    for sub in ('normal', 'anomalous'):
        try:
            val += list_images(os.path.join(where, sub)) if where else []
        except DataError:
            pass
    if val:
        sets['validation'] = val
    return sets


def describe(pairs, what_a, what_b):
    """One warning line about the pairs found (count, the first pair, what to do)."""
    a, b = pairs[0]
    how = 'the same file' if os.path.realpath(a) == os.path.realpath(b) else 'the same bytes'
    return (f'{len(pairs)} {what_a} image(s) are also {what_b} images, e.g. {a} is {b} ({how})')


def check_training_overlap(config, split):
    """Warning lines (none when clean) about training images that are also test or validation
    images, or in both healthy and mixed; {name: count} for the run record."""
    training = (split['healthy'] + split['mixed'] + split.get('holdout_healthy', [])
                + split.get('holdout_mixed', []))
    lines, counts = [], {}
    for name, paths in evaluation_sets(config).items():
        pairs = shared_files(training, paths)
        if pairs:
            counts[f'train_{name}'] = len(pairs)
            lines.append(describe(pairs, 'training', name) + f': the {name} set would score '
                         f'images this run trains on, so its result is not independent of '
                         f'training; remove them from the training folders or lists')
    healthy = split['healthy'] + split.get('holdout_healthy', [])
    mixed = split['mixed'] + split.get('holdout_mixed', [])
    pairs = shared_files(healthy, mixed)
    if pairs:
        counts['healthy_mixed'] = len(pairs)
        lines.append(describe(pairs, 'healthy', 'mixed') + ': each is trained on both as a '
                     'healthy image and as a mixed one; keep each image in one set')
    return lines, counts
