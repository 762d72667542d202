"""Write the COVIDx split that HealthyGAN trains and tests on, in the project's Folder layout.

    python tools/prepare_covidx.py --train_labels train_COVIDx7B.txt --test_labels test_COVIDx7B.txt \
        --train_dir COVIDx/train --test_dir COVIDx/test --out datasets/covidx
    python tools/prepare_covidx.py --lists data/covid --train_dir COVIDx/train \
        --test_dir COVIDx/test --out datasets/covidx          # the original's exact split
    python tools/prepare_covidx.py --train_labels train_COVIDx7B.txt --test_labels test_COVIDx7B.txt \
        --lists_out data/covid                     # the five lists that --dataset Covid reads

Writes <out>/healthy/, <out>/mixed/, <out>/test/normal/, <out>/test/anomalous/ (symlinks, or
copies with --copy), <out>/mixed_truth.csv (file,label: the hidden labels of mixed/, for analysis
only) and <out>/split.json (counts, seed, inputs). Train with --dataset Folder --image_dir <out>.
With --lists_out DIR it writes the same split from the label files as the five pickled lists of
file names that --dataset Covid --list_dir DIR reads, plus DIR/split.json; no image is needed.
Exit code 2 on a data problem (missing images, malformed label line, unsafe pickle), never a
traceback.
"""
import argparse
import csv
import json
import os
import pickle
import shutil
import sys
from collections import OrderedDict, namedtuple

import numpy as np

if not __package__:  # run as python tools/x.py: the repository root on the path
    import _path  # noqa: F401

# Not data_loader (it imports torch): the COVIDx scripts run this tool before training.
from healthygan.errors import DataError  # noqa: E402

Record = namedtuple('Record', 'patient filename label source line')

POSITIVE_LABELS = ('positive', 'covid-19')
LABELS = POSITIVE_LABELS + ('negative', 'normal', 'pneumonia')
SETS = OrderedDict([('healthy', 'healthy'), ('mixed', 'mixed'),
                    ('test_normal', os.path.join('test', 'normal')),
                    ('test_anomalous', os.path.join('test', 'anomalous'))])
OWNED = ('healthy', 'mixed', 'test', 'mixed_truth.csv', 'split.json')
LIST_NAMES = ('train_neg', 'train_pos', 'train_neg_mixed', 'test_neg', 'test_pos')


# ------------------------------------------------------------------------------------------------ #
#                                       Pure functions                                             #
# ------------------------------------------------------------------------------------------------ #

def is_positive(label):
    """COVID-positive? ('positive' in the B files, 'COVID-19' in the A files; pneumonia is not.)"""
    return label.lower() in POSITIVE_LABELS


def parse_label_file(path):
    """Records of a COVID-Net label file: `patient_id filename label [source]` a line.

    Patient ids may contain spaces, so the line is parsed from the right. The source is absent
    on some lines of the A test file. A malformed line raises DataError naming its line number.
    """
    try:
        with open(path, encoding='utf-8') as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise DataError(f'cannot read label file {path}: {e.strerror or e}') from None
    records = []
    for lineno, line in enumerate(lines, 1):
        tokens = line.split()
        if not tokens or tokens[0].startswith('#'):
            continue
        if len(tokens) >= 4 and tokens[-2].lower() in LABELS:
            patient, filename, label, source = ' '.join(tokens[:-3]), tokens[-3], tokens[-2], tokens[-1]
        elif len(tokens) >= 3 and tokens[-1].lower() in LABELS:
            patient, filename, label, source = ' '.join(tokens[:-2]), tokens[-2], tokens[-1], ''
        else:
            raise DataError(f'{path}:{lineno}: malformed label line {line.strip()!r}; expected '
                            f'"patient_id filename label source" with label one of '
                            f'positive/negative/normal/pneumonia/COVID-19')
        records.append(Record(patient, filename, label, source, lineno))
    if not records:
        raise DataError(f'label file {path} holds no records')
    return records


def _dedupe(records, what):
    """One record per file name; the same file with two different labels is an error."""
    seen = {}
    for r in records:
        old = seen.get(r.filename)
        if old is not None and is_positive(old.label) != is_positive(r.label):
            raise DataError(f'{what}: {r.filename} is listed as {old.label} (line {old.line}) and '
                            f'as {r.label} (line {r.line})')
        seen.setdefault(r.filename, r)
    return list(seen.values())


def _leave_out(by_patient, n, seed):
    """Whole patients taken out of `by_patient` (in place): n images of patients whose images are
    all COVID-positive and n of patients whose images are all negative, in an order drawn from
    `seed` (a patient that would overshoot is passed over). Returns the records taken out."""
    out = []
    for k, want_pos in enumerate((True, False)):
        pool = [p for p, recs in by_patient.items()
                if all(is_positive(r.label) == want_pos for r in recs)]
        need = n
        for j in np.random.default_rng([seed, 2, k]).permutation(len(pool)):
            recs = by_patient[pool[j]]
            if need == 0:
                break
            if len(recs) <= need:
                out += by_patient.pop(pool[j])
                need -= len(recs)
        if need:
            raise DataError(f'--train_leave_out {n}: not enough single-label '
                            f'{"COVID-positive" if want_pos else "COVID-negative"} patients to '
                            f'leave {n} images out ({need} short)')
    return sorted(out, key=lambda r: r.filename)


def split_covidx(records, mixed_fraction=0.3, seed=0, leave_out=0):
    """Healthy and mixed training sets from training-label records, patient-disjoint.

    With leave_out N, whole patients holding N COVID-positive and N COVID-negative images are
    first left out of both sets (the original's lists leave 100 + 100 of COVIDx 7B's training
    list out). Every other patient with a COVID-positive image goes to mixed whole; then whole
    COVID-negative patients, in an order drawn from `seed`, join mixed until it holds
    round(n_pos * (1 - f) / f) negatives (a patient that would overshoot is passed over);
    every other patient is healthy. Returns {'healthy': [Record], 'mixed': [Record],
    'left_out': [Record]}, each sorted by file name.
    """
    if not 0 < mixed_fraction < 1:
        raise DataError(f'--mixed_fraction must lie strictly between 0 and 1, not {mixed_fraction}')
    if leave_out < 0:
        raise DataError(f'--train_leave_out must be 0 or more, not {leave_out}')
    records = _dedupe(records, 'training labels')
    by_patient = OrderedDict()
    for r in sorted(records, key=lambda r: (r.patient, r.filename)):
        by_patient.setdefault(r.patient, []).append(r)
    left_out = _leave_out(by_patient, leave_out, seed) if leave_out else []
    mixed, healthy = [], []
    negative_patients = []
    for patient, recs in by_patient.items():
        if any(is_positive(r.label) for r in recs):
            mixed += recs
        else:
            negative_patients.append(patient)
    n_pos = sum(is_positive(r.label) for r in mixed)
    if n_pos == 0:
        raise DataError('the training labels hold no COVID-positive image; nothing to mix')
    need = int(round(n_pos * (1 - mixed_fraction) / mixed_fraction)) - (len(mixed) - n_pos)
    order = np.random.default_rng(seed).permutation(len(negative_patients))
    for k in order:
        recs = by_patient[negative_patients[k]]
        if 0 < len(recs) <= need:
            mixed += recs
            need -= len(recs)
        else:
            healthy += recs
    if need > 0:
        raise DataError(f'not enough COVID-negative patients to reach a positive fraction of '
                        f'{mixed_fraction} in mixed ({need} negatives short)')
    key = lambda r: r.filename  # noqa: E731
    return {'healthy': sorted(healthy, key=key), 'mixed': sorted(mixed, key=key),
            'left_out': left_out}


def select_test(records, n_per_class=100, seed=0):
    """n positive and n negative test records (a seeded choice when there are more)."""
    records = _dedupe(records, 'test labels')
    rng = np.random.default_rng([seed, 1])
    out = {}
    for name, want_pos in (('test_normal', False), ('test_anomalous', True)):
        pool = sorted((r for r in records if is_positive(r.label) == want_pos),
                      key=lambda r: r.filename)
        if len(pool) > n_per_class:
            pool = [pool[k] for k in sorted(rng.choice(len(pool), n_per_class, replace=False))]
        elif len(pool) < n_per_class:
            print(f'warning: only {len(pool)} {name[5:]} test images (asked for {n_per_class})',
                  file=sys.stderr)
        out[name] = pool
    return out


def plan_from_records(train_records, test_records, train_dir, test_dir,
                      mixed_fraction=0.3, seed=0, n_test_per_class=100, leave_out=0):
    """{set: [(source path, anomalous?)]} for the four sets, from label-file records."""
    split = split_covidx(train_records, mixed_fraction, seed, leave_out)
    split.update(select_test(test_records, n_test_per_class, seed))
    plan = OrderedDict()
    for name in SETS:
        folder = test_dir if name.startswith('test') else train_dir
        plan[name] = [(os.path.join(folder, r.filename), is_positive(r.label)) for r in split[name]]
    return plan


def plan_from_lists(lists, train_dir, test_dir):
    """{set: [(source path, anomalous?)]} from the original's five lists (names -> lists)."""
    t = lambda names, pos: [(os.path.join(train_dir, f), pos) for f in names]  # noqa: E731
    s = lambda names, pos: [(os.path.join(test_dir, f), pos) for f in names]  # noqa: E731
    return OrderedDict([
        ('healthy', t(lists['train_neg'], False)),
        ('mixed', t(lists['train_pos'], True) + t(lists['train_neg_mixed'], False)),
        ('test_normal', s(lists['test_neg'], False)),
        ('test_anomalous', s(lists['test_pos'], True)),
    ])


def load_lists(list_dir):
    """The original's five pickled lists, read with data_loader.safe_load_list only."""
    from data_loader import safe_load_list
    return {name: safe_load_list(os.path.join(list_dir, name + '.pickle')) for name in LIST_NAMES}


def lists_from_records(train_records, test_records, mixed_fraction=0.3, seed=0,
                       n_test_per_class=100, leave_out=0):
    """{list name: [file names]}: the five lists of the Covid layout, from label-file records
    (plus 'left_out': the training images in none of them, see split_covidx)."""
    split = split_covidx(train_records, mixed_fraction, seed, leave_out)
    split.update(select_test(test_records, n_test_per_class, seed))
    names = lambda recs, pos: [r.filename for r in recs if is_positive(r.label) == pos]  # noqa: E731
    return OrderedDict([('train_neg', names(split['healthy'], False)),
                        ('train_pos', names(split['mixed'], True)),
                        ('train_neg_mixed', names(split['mixed'], False)),
                        ('test_neg', names(split['test_normal'], False)),
                        ('test_pos', names(split['test_anomalous'], True)),
                        ('left_out', [r.filename for r in split['left_out']])])


def list_counts(lists):
    """(healthy, mixed, test negative, test positive) of the five lists."""
    return (len(lists['train_neg']), len(lists['train_pos']) + len(lists['train_neg_mixed']),
            len(lists['test_neg']), len(lists['test_pos']))


def parse_counts(text):
    """'H,M,TN,TP' -> a tuple of four ints, or DataError."""
    try:
        counts = tuple(int(v) for v in text.split(','))
    except ValueError:
        counts = ()
    if len(counts) != 4:
        raise DataError(f'--expect_counts {text!r}: give four numbers, healthy,mixed,'
                        f'test_negative,test_positive (e.g. 10031,5233,100,100)')
    return counts


def check_counts(counts, expected, source):
    """Stop (DataError) when the split's counts are not the expected ones."""
    if tuple(counts) != tuple(expected):
        fmt = lambda c: 'healthy {}, mixed {}, test {} + {}'.format(*c)  # noqa: E731
        raise DataError(f'the split from {source} has {fmt(counts)}, not the expected '
                        f'{fmt(expected)}: these are not the label files the counts were made '
                        f'for; nothing written')


def write_lists(lists, list_dir, info):
    """The five lists as plain pickles of file names in list_dir, plus split.json (last).

    Lists already there are never replaced: they may be the original's.
    """
    present = [n for n in LIST_NAMES if os.path.lexists(os.path.join(list_dir, n + '.pickle'))]
    if present:
        raise DataError(f'--lists_out {list_dir} already holds {present[0]}.pickle; remove the '
                        f'lists there to build them again, or choose another folder')
    os.makedirs(list_dir, exist_ok=True)
    for name in LIST_NAMES:  # each file appears whole or not at all
        path = os.path.join(list_dir, name + '.pickle')
        with open(path + '.tmp', 'wb') as f:
            pickle.dump(list(lists[name]), f, protocol=2)
        os.replace(path + '.tmp', path)
    meta = OrderedDict(info)
    meta['counts'] = OrderedDict((n, len(lists[n])) for n in LIST_NAMES)
    with open(os.path.join(list_dir, 'split.json'), 'w') as f:
        json.dump(meta, f, indent=2)


def build_lists(args):
    """--lists_out: write the Covid layout's five lists from the label files. Returns 0."""
    lists = lists_from_records(parse_label_file(args.train_labels),
                               parse_label_file(args.test_labels), args.mixed_fraction,
                               args.seed, args.n_test_per_class, args.train_leave_out)
    left_out = lists.pop('left_out')
    counts = list_counts(lists)
    source = f'{args.train_labels} + {args.test_labels}'
    if args.expect_counts:
        check_counts(counts, parse_counts(args.expect_counts), source)
    info = OrderedDict([('source', 'labels'), ('train_labels', os.path.basename(args.train_labels)),
                        ('test_labels', os.path.basename(args.test_labels)),
                        ('mixed_fraction', args.mixed_fraction), ('seed', args.seed),
                        ('n_test_per_class', args.n_test_per_class),
                        ('train_leave_out', args.train_leave_out), ('left_out', left_out)])
    write_lists(lists, args.lists_out, info)
    left = (f'; {args.train_leave_out} + {args.train_leave_out} training images left out'
            if args.train_leave_out else '')
    print(f'{args.lists_out}: no split lists there, built them from {source} with '
          f'tools/prepare_covidx.py: healthy {counts[0]}, mixed {counts[1]} '
          f'({len(lists["train_pos"])} COVID-positive), test {counts[2]} + {counts[3]}{left}')
    return 0


def find_missing(plan):
    """{set: [missing source paths]} for the sets that miss any."""
    missing = OrderedDict()
    for name, items in plan.items():
        gone = [src for src, _ in items if not os.path.isfile(src)]
        if gone:
            missing[name] = gone
    return missing


def report_missing(missing, plan, stream=None):
    """Print the missing count and a few examples per set; return the count."""
    stream = stream or sys.stderr
    total = sum(len(v) for v in missing.values())
    print(f'{total} images are missing:', file=stream)
    for name, gone in missing.items():
        print(f'  {name}: {len(gone)} of {len(plan[name])} missing, e.g. '
              f'{", ".join(gone[:3])}', file=stream)
    return total


def counts_of(plan):
    counts = OrderedDict((name, len(items)) for name, items in plan.items())
    counts['mixed_anomalous'] = sum(pos for _, pos in plan['mixed'])
    return counts


def _prepare_out(out):
    """Create `out`; replace what an earlier run wrote; refuse a non-empty foreign folder."""
    if os.path.isdir(out) and os.listdir(out):
        if not os.path.isfile(os.path.join(out, 'split.json')):
            raise DataError(f'{out} is not empty and was not written by this tool (no split.json); '
                            f'choose another --out')
        for name in OWNED:
            path = os.path.join(out, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            elif os.path.lexists(path):
                os.remove(path)
    elif os.path.exists(out) and not os.path.isdir(out):
        raise DataError(f'--out {out} exists and is not a folder')
    os.makedirs(out, exist_ok=True)


def write_folder_layout(plan, out, copy=False, info=None):
    """Write the Folder layout for `plan` ({set: [(source path, anomalous?)]}) under `out`.

    Images are symlinked (absolute targets) or copied; mixed_truth.csv holds file,label
    (normal/anomalous) for mixed/; split.json (written last) holds counts plus `info`.
    """
    for name, items in plan.items():
        names = [os.path.basename(src) for src, _ in items]
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})[:3]
            raise DataError(f'the {name} set holds two images with the same name, e.g. {dup}')
    _prepare_out(out)
    for name, items in plan.items():
        folder = os.path.join(out, SETS[name])
        os.makedirs(folder, exist_ok=True)
        for src, _ in items:
            dst = os.path.join(folder, os.path.basename(src))
            if copy:
                shutil.copy2(src, dst)
            else:
                os.symlink(os.path.abspath(src), dst)
    with open(os.path.join(out, 'mixed_truth.csv'), 'w', newline='') as f:
        w = csv.writer(f)
        w.writerow(['file', 'label'])
        for src, pos in plan['mixed']:
            w.writerow([os.path.basename(src), 'anomalous' if pos else 'normal'])
    meta = OrderedDict(info or {})
    meta['counts'] = counts_of(plan)
    meta['copy'] = bool(copy)
    with open(os.path.join(out, 'split.json'), 'w') as f:
        json.dump(meta, f, indent=2)
    return meta['counts']


def finish(plan, out, copy, skip_missing, info):
    """Check for missing images, then write the layout and print the counts. Returns exit code."""
    missing = find_missing(plan)
    if missing:
        total = report_missing(missing, plan)
        if not skip_missing:
            print(f'error: {total} images are missing; fix the image folders or pass '
                  f'--skip_missing to leave them out', file=sys.stderr)
            return 2
        print(f'skipping {total} missing images (--skip_missing)', file=sys.stderr)
        gone = {name: set(v) for name, v in missing.items()}
        plan = OrderedDict((name, [it for it in items if it[0] not in gone.get(name, ())])
                           for name, items in plan.items())
    info = OrderedDict(info)
    info['missing_skipped'] = {name: len(v) for name, v in missing.items()}
    counts = write_folder_layout(plan, out, copy=copy, info=info)
    empty = [name for name in SETS if not counts[name]]
    if empty:
        print(f'warning: the {", ".join(empty)} set is empty; training needs every set',
              file=sys.stderr)
    frac = counts['mixed_anomalous'] / counts['mixed'] if counts['mixed'] else 0.0
    print(f'wrote {out}: healthy {counts["healthy"]}, mixed {counts["mixed"]} '
          f'({counts["mixed_anomalous"]} anomalous, {frac:.1%}), test normal '
          f'{counts["test_normal"]}, test anomalous {counts["test_anomalous"]}')
    return 0


# ------------------------------------------------------------------------------------------------ #
#                                            CLI                                                   #
# ------------------------------------------------------------------------------------------------ #

def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--train_labels', help='COVID-Net training label file, e.g. train_COVIDx7B.txt')
    p.add_argument('--test_labels', help='COVID-Net test label file, e.g. test_COVIDx7B.txt')
    p.add_argument('--lists', metavar='DIR',
                   help="folder with the original's five pickled lists (train_neg, train_pos, "
                        'train_neg_mixed, test_neg, test_pos); replaces the label files')
    p.add_argument('--train_dir', help='COVIDx training images (with --out)')
    p.add_argument('--test_dir', help='COVIDx test images (with --out)')
    p.add_argument('--out', help='output folder (Folder layout)')
    p.add_argument('--lists_out', metavar='DIR',
                   help='write the five pickled lists that --dataset Covid --list_dir DIR reads '
                        '(from the label files; reads no image) instead of --out')
    p.add_argument('--expect_counts', metavar='H,M,TN,TP',
                   help='with --lists_out: stop, writing nothing, unless the split has these '
                        'healthy, mixed, test-negative and test-positive counts')
    p.add_argument('--mixed_fraction', type=float, default=0.3,
                   help='COVID-positive fraction of the mixed set (default 0.3)')
    p.add_argument('--train_leave_out', type=int, default=0, metavar='N',
                   help='leave whole patients holding N COVID-positive and N COVID-negative '
                        'training images out of both training sets (the COVIDx scripts: 100, '
                        "the original's counts from COVIDx 7B; default 0)")
    add_common_arguments(p)
    return p


def add_common_arguments(p):
    """Flags both preparation tools share: seed, test size, copying, missing images."""
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--n_test_per_class', type=int, default=100)
    p.add_argument('--copy', action='store_true', help='copy images instead of symlinking them')
    p.add_argument('--skip_missing', action='store_true',
                   help='leave missing images out instead of stopping with exit code 2')


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        if args.lists_out:
            if args.lists or not (args.train_labels and args.test_labels):
                print('error: --lists_out needs --train_labels and --test_labels (not --lists)',
                      file=sys.stderr)
                return 2
            return build_lists(args)
        if not (args.train_dir and args.test_dir and args.out):
            print('error: give --train_dir, --test_dir and --out (or --lists_out)',
                  file=sys.stderr)
            return 2
        if args.lists:
            plan = plan_from_lists(load_lists(args.lists), args.train_dir, args.test_dir)
            info = OrderedDict([('source', 'lists'), ('lists', os.path.abspath(args.lists))])
        else:
            if not (args.train_labels and args.test_labels):
                print('error: give --train_labels and --test_labels, or --lists', file=sys.stderr)
                return 2
            plan = plan_from_records(parse_label_file(args.train_labels),
                                     parse_label_file(args.test_labels),
                                     args.train_dir, args.test_dir, args.mixed_fraction,
                                     args.seed, args.n_test_per_class, args.train_leave_out)
            info = OrderedDict([('source', 'labels'),
                                ('train_labels', os.path.abspath(args.train_labels)),
                                ('test_labels', os.path.abspath(args.test_labels)),
                                ('mixed_fraction', args.mixed_fraction),
                                ('n_test_per_class', args.n_test_per_class),
                                ('train_leave_out', args.train_leave_out)])
        info['seed'] = args.seed
        info['train_dir'] = os.path.abspath(args.train_dir)
        info['test_dir'] = os.path.abspath(args.test_dir)
        c = counts_of(plan)
        print(f'split: healthy {c["healthy"]}, mixed {c["mixed"]} ({c["mixed_anomalous"]} '
              f'COVID-positive), test {c["test_normal"]} negative + {c["test_anomalous"]} positive')
        return finish(plan, args.out, args.copy, args.skip_missing, info)
    except (DataError, OSError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
