"""Write a HealthyGAN split of NIH ChestX-ray14 in the project's Folder layout.

    python tools/prepare_nih.py --data_entry Data_Entry_2017_v2020.csv --images NIH/images \
        --test_list test_list.txt --train_val_list train_val_list.txt --out datasets/nih \
        --findings Pneumonia --anomalous_fraction 0.3 --n_healthy 10000 --n_mixed 5000

"No Finding" images are healthy; an image is anomalous if it has a finding (any finding, or one of
--findings); images with only other findings are not used. healthy/, mixed/ (unannotated, with
--anomalous_fraction anomalous) and the labelled test/ set are patient-disjoint; the test set
comes from test_list.txt when given, else from held-out patients. Deterministic from --seed.
Writes the same files as prepare_covidx.py (symlinks or --copy, mixed_truth.csv, split.json).
"""
import argparse
import glob
import os
import sys
from collections import OrderedDict

import numpy as np
import pandas as pd

if not __package__:  # run as python tools/x.py: the repository root on the path
    import _path  # noqa: F401

from data_loader import DataError  # noqa: E402
from tools.prepare_covidx import SETS, add_common_arguments, counts_of, finish  # noqa: E402

NO_FINDING = 'No Finding'
COLUMNS = ('Image Index', 'Finding Labels', 'Patient ID')


def read_data_entry(path):
    """DataFrame (image, findings: frozenset, patient) from Data_Entry_2017*.csv (file or folder)."""
    if os.path.isdir(path):
        found = sorted(glob.glob(os.path.join(path, 'Data_Entry_2017*.csv')))
        if not found:
            raise DataError(f'no Data_Entry_2017*.csv in {path}')
        path = found[-1]
    try:
        df = pd.read_csv(path, dtype=str)
    except (OSError, ValueError) as e:
        raise DataError(f'cannot read {path}: {e}') from None
    absent = [c for c in COLUMNS if c not in df.columns]
    if absent:
        raise DataError(f'{path} lacks the column(s) {absent}; is it Data_Entry_2017*.csv?')
    df = df[list(COLUMNS)]
    bad = df.isna().any(axis=1)
    if bad.any():
        row = int(np.flatnonzero(bad.values)[0]) + 2  # header is line 1
        raise DataError(f'{path}:{row}: a row with an empty {"/".join(COLUMNS)} field')
    out = pd.DataFrame({
        'image': df['Image Index'].str.strip(),
        'findings': df['Finding Labels'].map(
            lambda s: frozenset(x.strip() for x in s.split('|') if x.strip())),
        'patient': df['Patient ID'].str.strip(),
    })
    dup = out['image'].duplicated()
    if dup.any():
        raise DataError(f'{path}: image {out["image"][dup].iloc[0]} is listed twice')
    return out


def read_name_list(path):
    """Image names, one a line (train_val_list.txt / test_list.txt)."""
    try:
        with open(path, encoding='utf-8') as f:
            return [line.strip() for line in f if line.strip()]
    except OSError as e:
        raise DataError(f'cannot read {path}: {e.strerror or e}') from None


def classify(df, findings=None):
    """Column 'cls': 0 healthy (No Finding), 1 anomalous, -1 unused (only other findings)."""
    wanted = None if not findings else {f.strip().lower() for f in findings}

    def cls(fs):
        if fs == frozenset([NO_FINDING]):
            return 0
        names = {f.lower() for f in fs} - {NO_FINDING.lower()}
        if wanted is None:
            return 1 if names else -1
        return 1 if names & wanted else -1
    df = df.copy()
    df['cls'] = df['findings'].map(cls)
    return df


def _patients(df, rng):
    """Patient ids in sorted order, then permuted by rng."""
    ids = sorted(df['patient'].unique())
    return [ids[k] for k in rng.permutation(len(ids))]


def _test_from_list(df, rng, test_images, train_images, n_test_per_class):
    """({test_normal, test_anomalous}, test patients, training candidates) when the test images
    are listed; the training candidates are `train_images` when given, else the rest."""
    picked = {}
    pool = df[df['image'].isin(set(test_images))]
    for name, c in (('test_normal', 0), ('test_anomalous', 1)):
        cand = pool[pool['cls'] == c]
        if len(cand) > n_test_per_class:
            cand = cand.iloc[sorted(rng.choice(len(cand), n_test_per_class, replace=False))]
        picked[name] = cand
    rest = df[~df['image'].isin(set(test_images))]
    if train_images is not None:
        rest = rest[rest['image'].isin(set(train_images))]
    return picked, set(pool['patient']), rest


def _test_from_patients(df, rng, n_test_per_class):
    """({test_normal, test_anomalous}, test patients, training candidates) from whole patients
    drawn in a seeded order, until each class has n_test_per_class images."""
    need = {0: n_test_per_class, 1: n_test_per_class}
    taken = {0: [], 1: []}
    test_patients = set()
    groups = dict(tuple(df.groupby('patient', sort=True)))
    for pid in _patients(df, rng):
        if not need[0] and not need[1]:
            break
        g = groups[pid]
        used = False
        for c in (0, 1):
            rows = g[g['cls'] == c].iloc[:need[c]]
            if len(rows):
                taken[c].append(rows)
                need[c] -= len(rows)
                used = True
        if used:
            test_patients.add(pid)
    picked = {name: pd.concat(taken[c]) if taken[c] else df.iloc[:0]
              for name, c in (('test_normal', 0), ('test_anomalous', 1))}
    return picked, test_patients, df


def _mixed_counts(rest, anomalous_fraction, n_mixed):
    """(anomalous, normal) image counts of the mixed set."""
    n_anom_avail = int((rest['cls'] == 1).sum())
    if n_mixed is None:  # every anomalous image, as far as half the No Finding images allow
        n_norm_avail = int((rest['cls'] == 0).sum())
        want_anom = min(n_anom_avail,
                        int(n_norm_avail / 2 * anomalous_fraction / (1 - anomalous_fraction)))
        want_norm = int(round(want_anom * (1 - anomalous_fraction) / anomalous_fraction))
    else:
        want_anom = int(round(n_mixed * anomalous_fraction))
        want_norm = n_mixed - want_anom
    if want_anom > n_anom_avail:
        raise DataError(f'--n_mixed {n_mixed} at --anomalous_fraction {anomalous_fraction} needs '
                        f'{want_anom} anomalous images; only {n_anom_avail} are available')
    return want_anom, want_norm


def _pick_mixed(groups, order, want_anom, want_norm):
    """(mixed images, their patients): anomalous images first (whole patients, with their normal
    images), then normal images from other patients."""
    parts, patients = [], set()
    need = {1: want_anom, 0: want_norm}
    for pid in order:  # patients with an anomalous image
        if not need[1]:
            break
        g = groups[pid]
        if not (g['cls'] == 1).any():
            continue
        for c in (1, 0):
            rows = g[g['cls'] == c].iloc[:need[c]]
            parts.append(rows)
            need[c] -= len(rows)
        patients.add(pid)
    for pid in order:  # then normal images from other patients
        if not need[0]:
            break
        if pid in patients:
            continue
        rows = groups[pid][groups[pid]['cls'] == 0].iloc[:need[0]]
        if len(rows):
            parts.append(rows)
            need[0] -= len(rows)
            patients.add(pid)
    if need[0]:
        raise DataError(f'not enough No Finding images for the mixed set ({need[0]} short)')
    return parts, patients


def _pick_healthy(groups, order, mixed_patients, n_healthy):
    """No Finding images of the patients not in mixed: n_healthy of them (None: all)."""
    parts = []
    left = n_healthy
    for pid in order:
        if left is not None and left <= 0:
            break
        if pid in mixed_patients:
            continue
        rows = groups[pid][groups[pid]['cls'] == 0]
        if left is not None:
            rows = rows.iloc[:left]
            left -= len(rows)
        parts.append(rows)
    if left:
        raise DataError(f'--n_healthy {n_healthy}: only {n_healthy - left} No Finding images '
                        f'remain for the healthy set')
    return parts


def split_nih(df, anomalous_fraction=0.3, n_healthy=None, n_mixed=None, n_test_per_class=100,
              seed=0, test_images=None, train_images=None):
    """{set: DataFrame} for healthy, mixed, test_normal, test_anomalous; patient-disjoint.

    df has columns image, findings, patient, cls (see classify). Test images come from
    `test_images` when given (training then from `train_images`, or the rest, less any patient
    in test), else from whole held-out patients. Mixed gets round(n_mixed * f) anomalous images
    (n_mixed None: every available anomalous image, as far as half the No Finding images can
    give the fraction f; the rest stay for healthy); healthy
    gets n_healthy No Finding images (None: all that remain), from patients not in mixed or test.
    """
    if not 0 < anomalous_fraction < 1:
        raise DataError(f'--anomalous_fraction must lie strictly between 0 and 1, '
                        f'not {anomalous_fraction}')
    rng = np.random.default_rng(seed)
    df = df[df['cls'] >= 0].sort_values('image').reset_index(drop=True)
    if test_images is not None:
        picked, test_patients, rest = _test_from_list(df, rng, test_images, train_images,
                                                      n_test_per_class)
    else:
        picked, test_patients, rest = _test_from_patients(df, rng, n_test_per_class)
    for name in ('test_normal', 'test_anomalous'):
        if len(picked[name]) < n_test_per_class:
            print(f'warning: only {len(picked[name])} {name[5:]} test images '
                  f'(asked for {n_test_per_class})', file=sys.stderr)
    rest = rest[~rest['patient'].isin(test_patients)]

    want_anom, want_norm = _mixed_counts(rest, anomalous_fraction, n_mixed)
    # Both sets walk the patients in one seeded order, mixed first.
    groups = dict(tuple(rest.groupby('patient', sort=True)))
    order = _patients(rest, rng)
    mixed_parts, mixed_patients = _pick_mixed(groups, order, want_anom, want_norm)
    picked['mixed'] = pd.concat(mixed_parts) if mixed_parts else rest.iloc[:0]
    healthy_parts = _pick_healthy(groups, order, mixed_patients, n_healthy)
    picked['healthy'] = pd.concat(healthy_parts) if healthy_parts else rest.iloc[:0]
    return OrderedDict((name, picked[name].sort_values('image').reset_index(drop=True))
                       for name in SETS)


def index_images(folder):
    """{file name: path} for every file under `folder` (NIH ships images in several folders)."""
    if not os.path.isdir(folder):
        raise DataError(f'--images {folder} is not a folder')
    index = {}
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs.sort()
        for f in sorted(files):
            index.setdefault(f, os.path.join(root, f))
    return index


def plan_from_split(split, images_dir, index=None):
    """{set: [(source path, anomalous?)]}; names not found under images_dir keep a plain path."""
    index = index_images(images_dir) if index is None else index
    return OrderedDict((name, [(index.get(img, os.path.join(images_dir, img)), bool(c))
                               for img, c in zip(sub['image'], sub['cls'])])
                       for name, sub in split.items())


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--data_entry', required=True,
                   help='Data_Entry_2017*.csv, or the folder that holds it')
    p.add_argument('--images', required=True, help='folder with the PNGs (searched recursively)')
    p.add_argument('--out', required=True, help='output folder (Folder layout)')
    p.add_argument('--test_list', help='official test_list.txt (test images come from it)')
    p.add_argument('--train_val_list', help='official train_val_list.txt (training images)')
    p.add_argument('--findings', nargs='+', metavar='FINDING',
                   help='findings that make an image anomalous (default: any finding), '
                        'e.g. Pneumonia')
    p.add_argument('--anomalous_fraction', type=float, default=0.3,
                   help='anomalous fraction of the mixed set (default 0.3)')
    p.add_argument('--n_healthy', type=int, default=None, help='default: all that remain')
    p.add_argument('--n_mixed', type=int, default=None,
                   help='default: every anomalous image, as far as half the No Finding images '
                        'allow the fraction')
    add_common_arguments(p)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        df = classify(read_data_entry(args.data_entry), args.findings)
        test_images = read_name_list(args.test_list) if args.test_list else None
        train_images = read_name_list(args.train_val_list) if args.train_val_list else None
        split = split_nih(df, args.anomalous_fraction, args.n_healthy, args.n_mixed,
                          args.n_test_per_class, args.seed, test_images, train_images)
        plan = plan_from_split(split, args.images)
        info = OrderedDict([('source', 'nih'), ('data_entry', os.path.abspath(args.data_entry)),
                            ('test_list', args.test_list and os.path.abspath(args.test_list)),
                            ('train_val_list',
                             args.train_val_list and os.path.abspath(args.train_val_list)),
                            ('findings', args.findings or 'any'),
                            ('anomalous_fraction', args.anomalous_fraction),
                            ('n_test_per_class', args.n_test_per_class), ('seed', args.seed),
                            ('images', os.path.abspath(args.images))])
        c = counts_of(plan)
        print(f'split: healthy {c["healthy"]}, mixed {c["mixed"]} ({c["mixed_anomalous"]} '
              f'anomalous), test {c["test_normal"]} normal + {c["test_anomalous"]} anomalous')
        return finish(plan, args.out, args.copy, args.skip_missing, info)
    except (DataError, OSError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
