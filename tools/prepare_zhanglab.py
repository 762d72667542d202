"""Write the ZhangLab pediatric chest X-rays (Kermany et al. 2018) in the project's Folder layout.

    python tools/prepare_zhanglab.py --download chest_xray --out datasets/zhanglab
    python tools/prepare_zhanglab.py --download chest_xray --out datasets/zhanglab-30 \
        --anomaly_rate 0.3 --mixed_size 630            # another mix of the same patients

--download is the dataset as a user has it: Kaggle's "Chest X-Ray Images (Pneumonia)" or
Mendeley's ChestXRay2017, a folder holding train/NORMAL, train/PNEUMONIA, test/NORMAL,
test/PNEUMONIA (and Kaggle's val/NORMAL, val/PNEUMONIA: 16 images it moved out of the official
train split), images at any resolution. Writes <out>/healthy/, <out>/mixed/,
<out>/validation/normal/, <out>/validation/anomalous/ from the shipped lists (data/zhanglab/,
the project's split of the official train split, by patient), <out>/test/normal/ and
<out>/test/anomalous/ (the official test split, every image), <out>/mixed_truth.csv (file,label:
mixed/'s true labels, for analysis only) and <out>/split.json. Images are resized to --size
(aspect ratio not kept, RGB JPEG as Pillow saves it by default, as in the project's development
copy) or copied as they are (--size 0). With --anomaly_rate, --mixed_size or --healthy_size,
healthy/ and mixed/ are drawn anew (--seed) from the patients of the shipped healthy and mixed
lists, whole patients in one folder only; validation/ and test/ never change. Train with
--dataset Folder --image_dir <out> --val_dir <out>/validation. Exit code 2 on a data problem, in
one line, never a traceback.
"""
import argparse
import csv
import json
import os
import re
import shutil
import sys
from collections import OrderedDict

import numpy as np

if not __package__:  # run as python tools/x.py: the repository root on the path
    import _path  # noqa: F401

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Not data_loader (it imports torch): preparing data needs no torch.
from healthygan.errors import DataError  # noqa: E402

LISTS = os.path.join(ROOT, 'data', 'zhanglab')
LIST_FILE = 'split.csv'
LISTED = ('healthy', 'mixed', 'validation/normal', 'validation/anomalous')
FOLDERS = LISTED + ('test/normal', 'test/anomalous')
OWNED = ('healthy', 'mixed', 'validation', 'test', 'mixed_truth.csv', 'split.json')
LABELS = ('normal', 'anomalous')
CLASS_DIR = {'normal': 'NORMAL', 'anomalous': 'PNEUMONIA'}
NEEDED = ('train/NORMAL', 'train/PNEUMONIA', 'test/NORMAL', 'test/PNEUMONIA')
OPTIONAL = ('val/NORMAL', 'val/PNEUMONIA')
IMAGE_EXT = ('.jpeg', '.jpg', '.png')
OFFICIAL_TEST = (234, 390)
LAYOUT = ('chest_xray/ with train/NORMAL, train/PNEUMONIA, test/NORMAL, test/PNEUMONIA '
          '(and val/ in the Kaggle copy)')
# The dataset's names carry the patient and the class: IM-0115-0001 and NORMAL2-IM-0395-0001-0001
# are normal (patients IM-0115, NORMAL2-IM-0395: the two series number patients apart),
# person1_virus_6 is pneumonia (patient person1).
NORMAL_NAME = re.compile(r'^((?:NORMAL2-)?IM-\d+)-\d+(?:-\d+)*\.\w+$')
PNEUMONIA_NAME = re.compile(r'^(person\d+)_(?:bacteria|virus)_\d+\.\w+$')


# ------------------------------------------------------------------------------------------------ #
#                                       Pure functions                                             #
# ------------------------------------------------------------------------------------------------ #

def parse_name(name):
    """(patient, label) a file name of the dataset carries, or None for a name it never uses."""
    for pattern, label in ((NORMAL_NAME, 'normal'), (PNEUMONIA_NAME, 'anomalous')):
        m = pattern.match(name)
        if m:
            return m.group(1), label
    return None


def read_lists(list_dir):
    """OrderedDict folder -> [(file, label)] from list_dir/split.csv (file,folder,label)."""
    path = os.path.join(list_dir, LIST_FILE)
    try:
        with open(path, newline='', encoding='utf-8') as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise DataError(f'cannot read the file lists {path}: {e.strerror or e}; --lists names '
                        f'the folder holding {LIST_FILE}') from None
    if not rows or set(rows[0]) != {'file', 'folder', 'label'}:
        raise DataError(f'{path}: expected the columns file,folder,label')
    lists = OrderedDict((folder, []) for folder in LISTED)
    where, patients = {}, {}
    for line, r in enumerate(rows, 2):
        name, folder, label = r['file'], r['folder'], r['label']
        if folder not in lists or label not in LABELS:
            raise DataError(f'{path}:{line}: folder must be one of {", ".join(LISTED)} and '
                            f'label one of {"/".join(LABELS)}, not {folder!r}, {label!r}')
        if name in where:
            raise DataError(f'{path}:{line}: {name} is listed twice ({where[name]} and {folder}): '
                            f'a file in two splits')
        parsed = parse_name(name)
        if parsed is None:
            raise DataError(f'{path}:{line}: unknown file name {name!r}: the dataset names images '
                            f'IM-0115-0001.jpeg, NORMAL2-IM-0395-0001.jpeg or '
                            f'person1_virus_6.jpeg')
        patient, named = parsed
        if named != label:
            raise DataError(f'{path}:{line}: {name} is named as a {CLASS_DIR[named]} image but '
                            f'listed as {label}')
        if patients.setdefault(patient, folder) != folder:
            raise DataError(f'{path}:{line}: patient {patient} is in {patients[patient]} and '
                            f'{folder}; a patient must stay in one folder')
        where[name] = folder
        lists[folder].append((name, label))
    return lists


def locate_download(path):
    """The folder holding train/ and test/: `path`, or its chest_xray/ (how Kaggle's zip
    unpacks); DataError naming the first missing folder."""
    if (not os.path.isdir(os.path.join(path, 'train'))
            and os.path.isdir(os.path.join(path, 'chest_xray', 'train'))):
        path = os.path.join(path, 'chest_xray')
    for sub in NEEDED:
        if not os.path.isdir(os.path.join(path, sub)):
            raise DataError(f'--download {path}: no folder {sub}; expected the dataset as '
                            f'downloaded, {LAYOUT}')
    return path


def index_download(root):
    """({name: [folder, ...]}, [non-image names]) over the download's class folders."""
    index, others = {}, []
    for sub in NEEDED + OPTIONAL:
        folder = os.path.join(root, sub)
        if not os.path.isdir(folder):
            continue
        for name in sorted(os.listdir(folder)):
            if name.startswith('.') or not os.path.isfile(os.path.join(folder, name)):
                continue  # .DS_Store and the like
            if name.lower().endswith(IMAGE_EXT):
                index.setdefault(name, []).append(sub)
            else:
                others.append(f'{sub}/{name}')
    twice = sorted(n for n, subs in index.items() if len(subs) > 1)
    if twice:
        raise DataError(f'{len(twice)} file(s) of {root} are in two folders, e.g. {twice[0]} in '
                        f'{" and ".join(index[twice[0]])}: a file in two splits; remove the '
                        f'wrong copy')
    return index, others


def place_listed(lists, index):
    """{folder: [(download subfolder/name, anomalous?)]} for the listed images: each must be in
    train/ (or Kaggle's val/) under its class; DataError otherwise, in one line."""
    missing, misplaced = [], []
    plan = OrderedDict()
    for folder, items in lists.items():
        plan[folder] = []
        for name, label in items:
            subs = index.get(name)
            if not subs:
                missing.append(name)
            elif subs[0] not in (f'train/{CLASS_DIR[label]}', f'val/{CLASS_DIR[label]}'):
                misplaced.append((name, folder, subs[0]))
            else:
                plan[folder].append((f'{subs[0]}/{name}', label == 'anomalous'))
    if misplaced:
        name, folder, sub = misplaced[0]
        raise DataError(f'{len(misplaced)} listed image(s) are in the wrong folder of the '
                        f'download, e.g. {name} (listed for {folder}, official train split) is in '
                        f'{sub}: a file in two splits, or a changed download')
    if missing:
        total = sum(len(v) for v in lists.values())
        raise DataError(f'{len(missing)} of the {total} listed images are not in the download, '
                        f'e.g. {", ".join(missing[:3])}; the lists need the full official train '
                        f'split (train/ and Kaggle\'s val/)')
    return plan


def test_split(index):
    """(test/normal, test/anomalous) plans: every image of test/NORMAL and test/PNEUMONIA;
    DataError for a dataset name in the other class's folder."""
    out = ([], [])
    for name, subs in sorted(index.items()):
        if not subs[0].startswith('test/'):
            continue
        anomalous = subs[0] == 'test/PNEUMONIA'
        parsed = parse_name(name)
        if parsed and (parsed[1] == 'anomalous') != anomalous:
            raise DataError(f'{subs[0]}/{name} is named as a {CLASS_DIR[parsed[1]]} image; move '
                            f'it to its class folder')
        out[anomalous].append((f'{subs[0]}/{name}', anomalous))
    return out


def _patient_order(items, rng):
    """{patient: [(name, label)]} and the patients in a seeded order (sorted, then permuted)."""
    groups = OrderedDict()
    for name, label in sorted(items):
        groups.setdefault(parse_name(name)[0], []).append((name, label))
    ids = sorted(groups)
    return groups, [ids[k] for k in rng.permutation(len(ids))]


def _take(groups, order, need, skip=()):
    """Walk patients in `order` (not in `skip`) taking images while need[label] > 0: a patient
    whose image is taken belongs to the result. Returns (images, patients); updates need."""
    taken, patients = [], set()
    for pid in order:
        if pid in skip or not any(need.values()):
            continue
        got = []
        for name, label in groups[pid]:
            if need[label] > 0:
                need[label] -= 1
                got.append((name, label))
        if got:
            taken += got
            patients.add(pid)
    return taken, patients


def draw_mix(lists, anomaly_rate, mixed_size, healthy_size, seed):
    """Lists with healthy and mixed drawn anew from the patients of the listed healthy and mixed
    images: round(mixed_size * anomaly_rate) pneumonia images in mixed, healthy_size normal
    images in healthy, no patient in both; validation is kept as it is."""
    if not 0 <= anomaly_rate <= 1:
        raise DataError(f'--anomaly_rate must lie between 0 and 1, not {anomaly_rate}')
    for flag, n in (('--mixed_size', mixed_size), ('--healthy_size', healthy_size)):
        if n < 1:
            raise DataError(f'{flag} must be at least 1, not {n}')
    pool = lists['healthy'] + lists['mixed']
    have = {label: sum(1 for _, lab in pool if lab == label) for label in LABELS}
    n_anom = int(round(mixed_size * anomaly_rate))
    n_norm = mixed_size - n_anom
    if n_anom > have['anomalous']:
        raise DataError(f'--anomaly_rate {anomaly_rate:.4g} of --mixed_size {mixed_size} needs '
                        f'{n_anom} pneumonia images; the listed training patients have '
                        f'{have["anomalous"]}: lower --mixed_size or --anomaly_rate')
    if n_norm + healthy_size > have['normal']:
        raise DataError(f'{n_norm} normal images for mixed/ and --healthy_size {healthy_size} '
                        f'need {n_norm + healthy_size}; the listed training patients have '
                        f'{have["normal"]}: lower --mixed_size or --healthy_size')
    groups, order = _patient_order(pool, np.random.default_rng(seed))
    need = {'anomalous': n_anom, 'normal': 0}
    mixed, in_mixed = _take(groups, order, need)  # pneumonia first, then normal from others
    need = {'anomalous': 0, 'normal': n_norm}
    more, more_patients = _take(groups, order, need, skip=in_mixed)
    mixed += more
    in_mixed |= more_patients
    need = {'anomalous': 0, 'normal': healthy_size}
    healthy, _ = _take(groups, order, need, skip=in_mixed)
    if need['normal']:
        raise DataError(f'--healthy_size {healthy_size}: only {healthy_size - need["normal"]} '
                        f'normal images of patients outside mixed/ remain; lower --healthy_size '
                        f'or --mixed_size')
    out = OrderedDict(lists)
    out['healthy'], out['mixed'] = sorted(healthy), sorted(mixed)
    return out


# ------------------------------------------------------------------------------------------------ #
#                                           Writing                                                #
# ------------------------------------------------------------------------------------------------ #

def write_image(src, dst, size):
    """src resized to size x size (aspect not kept) as an RGB image, or copied when size is 0."""
    if not size:
        shutil.copyfile(src, dst)
        return
    from PIL import Image
    try:
        with Image.open(src) as im:
            im = im.convert('RGB').resize((size, size), Image.BICUBIC)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f'cannot read {src}: {e}; replace the file from the download') from None
    im.save(dst)  # JPEG at Pillow's defaults (quality 75, 4:2:0), as the development copy


def check_out(out, overwrite):
    """Refuse a non-empty --out unless --overwrite, and always one this tool did not write."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise DataError(f'--out {out} exists and is not a folder')
    if not os.path.isdir(out) or not os.listdir(out):
        return
    source = None
    try:
        with open(os.path.join(out, 'split.json')) as f:
            source = json.load(f).get('source')
    except (OSError, ValueError, AttributeError):
        pass
    if source != 'zhanglab':
        what = (f'another dataset (split.json: {source})' if source
                else 'files this tool did not write')
        raise DataError(f'--out {out} holds {what}; choose another --out')
    if not overwrite:
        raise DataError(f'--out {out} already holds a ZhangLab split; pass --overwrite to replace '
                        f'it, or choose another --out')


def write_layout(plan, root, out, size, info):
    """Write every folder of `plan`, mixed_truth.csv and split.json (last) into out, built
    beside it first so that a failure leaves out as it was."""
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.abspath(out) + '.partial'
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    try:
        for folder, items in plan.items():
            os.makedirs(os.path.join(tmp, folder))
            for rel, _ in items:
                write_image(os.path.join(root, rel), os.path.join(tmp, folder,
                                                                  os.path.basename(rel)), size)
        with open(os.path.join(tmp, 'mixed_truth.csv'), 'w', newline='') as f:
            w = csv.writer(f)  # csv's own line ends, as prepare_covidx.py and the shared copy
            w.writerow(['file', 'label'])
            for rel, anomalous in sorted(plan['mixed']):
                w.writerow([os.path.basename(rel), LABELS[anomalous]])
        with open(os.path.join(tmp, 'split.json'), 'w') as f:
            json.dump(info, f, indent=2)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not os.path.isdir(out):
        os.rename(tmp, out)
        return
    for name in OWNED:
        path = os.path.join(out, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.remove(path)
    for name in os.listdir(tmp):
        os.rename(os.path.join(tmp, name), os.path.join(out, name))
    os.rmdir(tmp)


def summary(plan, drawn, unused, val_used, val_total):
    """The printed table: images per folder, by class, and where they come from."""
    source = 'drawn (--seed) from the listed patients' if drawn else 'shipped list'
    rows = [('folder', 'images', 'normal', 'pneumonia', 'from')]
    for folder, items in plan.items():
        n_anom = sum(a for _, a in items)
        where = 'official test split' if folder.startswith('test') else (
            source if folder in ('healthy', 'mixed') else 'shipped list')
        rows.append((folder + '/', len(items), len(items) - n_anom, n_anom, where))
    lines = [f'{r[0]:<22}{r[1]:>7}{r[2]:>8}{r[3]:>11}   {r[4]}' for r in rows]
    mixed = plan['mixed']
    rate = sum(a for _, a in mixed) / len(mixed) if mixed else 0.0
    lines.append(f'mixed/ is {rate:.1%} pneumonia; healthy/, mixed/ and validation/ share no '
                 f'patient')
    if val_total:
        lines.append(f"val/ (Kaggle's, {val_total} images): {val_used} in the lists"
                     + ('' if val_used else ', so not used'))
    why = 'in no list, or left out by the draw' if drawn else \
        'in no list: the lists take part of the official train split'
    lines.append(f'not used: {unused} image(s) of train/ ({why})')
    return '\n'.join(lines)


# ------------------------------------------------------------------------------------------------ #
#                                            CLI                                                   #
# ------------------------------------------------------------------------------------------------ #

def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--download', required=True,
                   help='the dataset as downloaded: chest_xray/ (train/, test/, val/), or the '
                        'folder holding it')
    p.add_argument('--out', required=True, help='output folder (Folder layout)')
    p.add_argument('--lists', default=LISTS, metavar='DIR',
                   help='folder with split.csv (file,folder,label); default: the shipped '
                        'data/zhanglab')
    p.add_argument('--size', type=int, default=224,
                   help='write images resized to SIZE x SIZE (default 224, as the development '
                        'copy); 0 copies them as they are')
    p.add_argument('--anomaly_rate', type=float, default=None,
                   help='pneumonia fraction of mixed/ (default: the shipped list, 662 of 1103); '
                        'with it healthy/ and mixed/ are drawn anew')
    p.add_argument('--mixed_size', type=int, default=None,
                   help="mixed/'s image count when drawn (default: the shipped list's)")
    p.add_argument('--healthy_size', type=int, default=None,
                   help="healthy/'s image count when drawn (default: the shipped list's)")
    p.add_argument('--seed', type=int, default=0, help='seed of the draw (default 0)')
    p.add_argument('--overwrite', action='store_true',
                   help='replace a ZhangLab split this tool wrote in --out')
    return p


def run(args):
    """Check everything, then write; returns the printed summary."""
    if args.size < 0:
        raise DataError(f'--size must be 0 (copy) or a positive size, not {args.size}')
    check_out(args.out, args.overwrite)
    lists = read_lists(args.lists)
    root = locate_download(args.download)
    index, others = index_download(root)
    drawn = any(v is not None for v in (args.anomaly_rate, args.mixed_size, args.healthy_size))
    if drawn:
        shipped = {f: len(v) for f, v in lists.items()}
        n_anom = sum(1 for _, lab in lists['mixed'] if lab == 'anomalous')
        lists = draw_mix(lists,
                         n_anom / shipped['mixed'] if args.anomaly_rate is None
                         else args.anomaly_rate,
                         shipped['mixed'] if args.mixed_size is None else args.mixed_size,
                         shipped['healthy'] if args.healthy_size is None else args.healthy_size,
                         args.seed)
    plan = place_listed(lists, index)
    plan['test/normal'], plan['test/anomalous'] = test_split(index)
    if others:
        print(f'warning: {len(others)} file(s) in the download are not images and are not '
              f'used, e.g. {others[0]}', file=sys.stderr)
    n_test = (len(plan['test/normal']), len(plan['test/anomalous']))
    if n_test != OFFICIAL_TEST:
        print(f'warning: test/ holds {n_test[0]} normal + {n_test[1]} pneumonia images; the '
              f'official test split (the published numbers) has {OFFICIAL_TEST[0]} + '
              f'{OFFICIAL_TEST[1]}', file=sys.stderr)
    listed = {os.path.basename(rel) for f in LISTED for rel, _ in plan[f]}
    unused = sum(1 for n, s in index.items() if s[0].startswith('train/') and n not in listed)
    val = [n for n, s in index.items() if s[0].startswith('val/')]
    info = OrderedDict([
        ('source', 'zhanglab'), ('download', os.path.abspath(root)),
        ('lists', os.path.abspath(args.lists)), ('size', args.size), ('drawn', drawn),
        ('anomaly_rate', args.anomaly_rate), ('mixed_size', args.mixed_size),
        ('healthy_size', args.healthy_size), ('seed', args.seed),
        ('counts', OrderedDict((f, len(v)) for f, v in plan.items())),
        ('mixed_anomalous', sum(a for _, a in plan['mixed']))])
    write_layout(plan, root, args.out, args.size, info)
    how = f'{args.size} x {args.size} RGB JPEG' if args.size else 'copied as they are'
    return (summary(plan, drawn, unused, sum(n in listed for n in val), len(val))
            + f'\nwrote {args.out} (images {how}), mixed_truth.csv, split.json')


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        print(run(args))
        return 0
    except (DataError, OSError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
