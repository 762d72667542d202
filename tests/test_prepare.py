"""Dataset-preparation tools: tools/prepare_covidx.py and tools/prepare_nih.py."""
import csv
import json
import os
import pickle
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from conftest import shared_path, write_image
import data_loader
from tools import prepare_covidx as pc
from tools import prepare_nih as pn

LABELS = ('reference', 'covidnet_labels')


def _touch(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, 'wb').close()


def _real_records():
    train = pc.parse_label_file(shared_path(*LABELS, 'train_COVIDx7B.txt'))
    test = pc.parse_label_file(shared_path(*LABELS, 'test_COVIDx7B.txt'))
    return train, test


def test_parse_real_label_files():
    train, test = _real_records()
    assert len(train) == 15464 and len(test) == 200
    assert Counter(r.label for r in train) == {'negative': 13794, 'positive': 1670}
    assert Counter(r.label for r in test) == {'negative': 100, 'positive': 100}
    spaced = [r for r in train if ' ' in r.patient]
    assert spaced, 'the 7B training file has patient ids with spaces'
    r = next(r for r in train if r.filename == 'COVID(1).png')
    assert (r.patient, r.label, r.source) == ('COVID 1', 'positive', 'sirm')
    a_test = pc.parse_label_file(shared_path(*LABELS, 'test_COVIDx7A.txt'))
    assert len(a_test) == 300  # some lines there have no source field
    assert {r.label for r in a_test} == {'normal', 'pneumonia', 'COVID-19'}
    assert all(r.filename.lower().endswith(('.png', '.jpg', '.jpeg')) for r in a_test)


def test_malformed_label_line_is_reported(tmp_path, capsys):
    bad = tmp_path / 'train.txt'
    bad.write_text('p1 a.png negative rsna\np2 b.png maybe rsna\n')
    rc = pc.main(['--train_labels', str(bad), '--test_labels', str(bad), '--train_dir', 'x',
                  '--test_dir', 'y', '--out', str(tmp_path / 'out')])
    err = capsys.readouterr().err
    assert rc == 2 and ':2:' in err and 'Traceback' not in err


def test_split_covidx_real_labels():
    train, _ = _real_records()
    s = pc.split_covidx(train, 0.3, seed=0)
    n_pos = sum(pc.is_positive(r.label) for r in s['mixed'])
    assert n_pos == 1670 and not any(pc.is_positive(r.label) for r in s['healthy'])
    assert abs(n_pos / len(s['mixed']) - 0.3) < 1 / len(s['mixed'])
    assert not {r.patient for r in s['healthy']} & {r.patient for r in s['mixed']}
    assert len(s['healthy']) + len(s['mixed']) == len(train)
    again = pc.split_covidx(train, 0.3, seed=0)
    other = pc.split_covidx(train, 0.3, seed=1)
    names = lambda s: [r.filename for r in s['mixed']]  # noqa: E731
    assert names(again) == names(s) and names(other) != names(s)


def test_prepare_covidx_from_labels_with_fake_tree(tmp_path, capsys):
    train, test = _real_records()
    tr_labels = shared_path(*LABELS, 'train_COVIDx7B.txt')
    te_labels = shared_path(*LABELS, 'test_COVIDx7B.txt')
    # images for every test file and every 25th training file only
    for r in test:
        _touch(str(tmp_path / 'test' / r.filename))
    present = [r for k, r in enumerate(sorted(train, key=lambda r: r.filename)) if k % 25 == 0]
    for r in present:
        _touch(str(tmp_path / 'train' / r.filename))
    argv = ['--train_labels', tr_labels, '--test_labels', te_labels,
            '--train_dir', str(tmp_path / 'train'), '--test_dir', str(tmp_path / 'test'),
            '--out', str(tmp_path / 'out')]
    assert pc.main(argv) == 2
    err = capsys.readouterr().err
    assert f'{len(train) - len(present)} images are missing' in err and 'Traceback' not in err
    assert 'healthy: ' in err and 'mixed: ' in err and 'e.g.' in err
    assert not (tmp_path / 'out').exists()

    assert pc.main(argv + ['--skip_missing']) == 0
    out = tmp_path / 'out'
    meta = json.loads((out / 'split.json').read_text())
    c = meta['counts']
    assert c['test_normal'] == 100 and c['test_anomalous'] == 100
    assert c['healthy'] + c['mixed'] == len(present)
    assert sum(meta['missing_skipped'].values()) == len(train) - len(present)
    assert meta['seed'] == 0 and meta['source'] == 'labels'
    with open(out / 'mixed_truth.csv', newline='') as f:
        rows = list(csv.DictReader(f))
    assert sorted(r['file'] for r in rows) == sorted(os.listdir(out / 'mixed'))
    pos = {r.filename for r in train if pc.is_positive(r.label)}
    assert all((r['label'] == 'anomalous') == (r['file'] in pos) for r in rows)
    link = out / 'mixed' / rows[0]['file']
    assert link.is_symlink() and os.path.isfile(link)
    patient = {r.filename: r.patient for r in train}
    assert not ({patient[f] for f in os.listdir(out / 'healthy')}
                & {patient[f] for f in os.listdir(out / 'mixed')})
    # rerun into the same folder: replaced, same result
    assert pc.main(argv + ['--skip_missing']) == 0
    assert json.loads((out / 'split.json').read_text())['counts'] == c


def test_lists_real_pickles(tmp_path, capsys):
    list_dir = shared_path('reference', 'original_lists')
    lists = pc.load_lists(list_dir)
    plan = pc.plan_from_lists(lists, 'tr', 'te')
    c = pc.counts_of(plan)
    assert (c['healthy'], c['mixed'], c['test_normal'], c['test_anomalous']) == (10031, 5233, 100, 100)
    assert c['mixed_anomalous'] == 1570
    # tiny fake tree: a few images of each set exist
    names = {k: lists[k][:2] for k in pc.LIST_NAMES}
    for k, files in names.items():
        for f in files:
            _touch(str(tmp_path / ('test' if k.startswith('test') else 'train') / f))
    argv = ['--lists', list_dir, '--train_dir', str(tmp_path / 'train'),
            '--test_dir', str(tmp_path / 'test'), '--out', str(tmp_path / 'out')]
    assert pc.main(argv) == 2
    assert f'{10031 + 5233 + 200 - 10} images are missing' in capsys.readouterr().err
    assert pc.main(argv + ['--skip_missing']) == 0
    c = json.loads((tmp_path / 'out' / 'split.json').read_text())['counts']
    assert (c['healthy'], c['mixed'], c['test_normal'], c['test_anomalous']) == (2, 4, 2, 2)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}',))


def test_crafted_pickle_is_refused(tmp_path, capsys):
    marker = tmp_path / 'pwned'
    lists = tmp_path / 'lists'
    lists.mkdir()
    for name in pc.LIST_NAMES:
        with open(lists / f'{name}.pickle', 'wb') as f:
            pickle.dump(['a.png'] if name != 'train_pos' else _Evil(marker), f)
    rc = pc.main(['--lists', str(lists), '--train_dir', str(tmp_path), '--test_dir',
                  str(tmp_path), '--out', str(tmp_path / 'out')])
    err = capsys.readouterr().err
    assert rc == 2 and 'refusing' in err and 'Traceback' not in err
    assert not marker.exists() and not (tmp_path / 'out').exists()


def test_written_layout_is_readable_by_project(tmp_path):
    rng = np.random.default_rng(0)
    lists = {'train_neg': ['h0.png', 'h1.png'], 'train_pos': ['p0.png'],
             'train_neg_mixed': ['n0.png', 'n1.png'], 'test_neg': ['tn.png'],
             'test_pos': ['tp.png']}
    (tmp_path / 'lists').mkdir()
    for name, files in lists.items():
        with open(tmp_path / 'lists' / f'{name}.pickle', 'wb') as f:
            pickle.dump(files, f)
        for fname in files:
            write_image(str(tmp_path / ('test' if name.startswith('test') else 'train') / fname), rng)
    out = tmp_path / 'out'
    assert pc.main(['--lists', str(tmp_path / 'lists'), '--train_dir', str(tmp_path / 'train'),
                    '--test_dir', str(tmp_path / 'test'), '--out', str(out), '--copy']) == 0
    split = data_loader.resolve_split(SimpleNamespace(dataset='Folder', image_dir=str(out),
                                                      holdout_fraction=0.0))
    assert [os.path.basename(p) for p in split['mixed']] == ['n0.png', 'n1.png', 'p0.png']
    assert len(split['healthy']) == 2 and len(split['test_normal']) == 1
    assert [os.path.basename(p) for p in split['test_anomalous']] == ['tp.png']
    data_loader.load_image(split['mixed'][0])


def test_refuses_foreign_nonempty_out(tmp_path, capsys):
    (tmp_path / 'lists').mkdir()
    for name in pc.LIST_NAMES:
        with open(tmp_path / 'lists' / f'{name}.pickle', 'wb') as f:
            pickle.dump([], f)
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'precious.txt').write_text('x')
    assert pc.main(['--lists', str(tmp_path / 'lists'), '--train_dir', 'a', '--test_dir', 'b',
                    '--out', str(out)]) == 2
    assert 'not written by this tool' in capsys.readouterr().err
    assert (out / 'precious.txt').exists()


# ------------------------------------------------------------------------------------------------ #
#                                            NIH                                                   #
# ------------------------------------------------------------------------------------------------ #

def _nih_csv(tmp_path):
    """40 patients, 1-4 images each; findings cycle through No Finding / Pneumonia / others."""
    rng = np.random.default_rng(3)
    cycle = ['No Finding', 'No Finding', 'Pneumonia', 'Effusion|Pneumonia', 'Effusion',
             'No Finding', 'Atelectasis', 'No Finding']
    rows, k = [], 0
    for p in range(40):
        for j in range(int(rng.integers(1, 5))):
            rows.append({'Image Index': f'{p:08d}_{j:03d}.png', 'Finding Labels': cycle[k % 8],
                         'Follow-up #': j, 'Patient ID': p, 'Patient Age': 50})
            k += 1
    path = tmp_path / 'Data_Entry_2017_v2020.csv'
    pd.DataFrame(rows).to_csv(path, index=False)
    return path, pd.DataFrame(rows)


def test_prepare_nih(tmp_path, capsys):
    csv_path, rows = _nih_csv(tmp_path)
    for name in rows['Image Index']:
        _touch(str(tmp_path / 'images' / 'images_001' / name))
    out = tmp_path / 'out'
    argv = ['--data_entry', str(csv_path), '--images', str(tmp_path / 'images'),
            '--out', str(out), '--n_test_per_class', '5', '--n_mixed', '20', '--seed', '0']
    assert pn.main(argv + ['--findings', 'Pneumonia']) == 0
    meta = json.loads((out / 'split.json').read_text())['counts']
    assert meta['mixed'] == 20 and meta['mixed_anomalous'] == 6
    assert meta['test_normal'] == 5 and meta['test_anomalous'] == 5
    labels = dict(zip(rows['Image Index'], rows['Finding Labels']))
    patient = dict(zip(rows['Image Index'], rows['Patient ID']))
    sets = {s: os.listdir(out / d) for s, d in pc.SETS.items()}
    assert all(labels[f] == 'No Finding' for f in sets['healthy'] + sets['test_normal'])
    assert all('Pneumonia' in labels[f] for f in sets['test_anomalous'])
    assert all(labels[f] == 'No Finding' or 'Pneumonia' in labels[f] for f in sets['mixed'])
    pats = {s: {patient[f] for f in fs} for s, fs in sets.items()}
    train_p = (pats['healthy'], pats['mixed'], pats['test_normal'] | pats['test_anomalous'])
    assert not (train_p[0] & train_p[1] or train_p[0] & train_p[2] or train_p[1] & train_p[2])
    with open(out / 'mixed_truth.csv', newline='') as f:
        truth = {r['file']: r['label'] for r in csv.DictReader(f)}
    assert all((v == 'anomalous') == ('Pneumonia' in labels[k]) for k, v in truth.items())
    # any finding counts when --findings is not given; deterministic per seed
    df = pn.classify(pn.read_data_entry(str(csv_path)))
    a = pn.split_nih(df, 0.3, n_mixed=20, n_test_per_class=5, seed=0)
    b = pn.split_nih(df, 0.3, n_mixed=20, n_test_per_class=5, seed=0)
    c = pn.split_nih(df, 0.3, n_mixed=20, n_test_per_class=5, seed=1)
    assert list(a['mixed']['image']) == list(b['mixed']['image'])
    assert list(a['mixed']['image']) != list(c['mixed']['image'])
    assert (a['mixed']['cls'] == 1).sum() == 6
    assert any('Atelectasis' in fs or fs == {'Effusion'} for fs in a['test_anomalous']['findings'])


def test_prepare_nih_test_list_and_missing(tmp_path, capsys):
    csv_path, rows = _nih_csv(tmp_path)
    names = list(rows['Image Index'])
    test_names = [n for n in names if int(n[:8]) < 12]
    (tmp_path / 'test_list.txt').write_text('\n'.join(test_names) + '\n')
    df = pn.classify(pn.read_data_entry(str(csv_path)))
    gone = pn.split_nih(df, 0.3, n_test_per_class=3, test_images=test_names)['healthy']['image'][0]
    for name in names:  # one healthy image is missing
        if name != gone:
            _touch(str(tmp_path / 'images' / name))
    argv = ['--data_entry', str(tmp_path), '--images', str(tmp_path / 'images'),
            '--test_list', str(tmp_path / 'test_list.txt'), '--out', str(tmp_path / 'out'),
            '--n_test_per_class', '3']
    assert pn.main(argv) == 2
    err = capsys.readouterr().err
    assert '1 images are missing' in err and gone in err and 'Traceback' not in err
    assert pn.main(argv + ['--skip_missing']) == 0
    out = tmp_path / 'out'
    test_files = os.listdir(out / 'test' / 'normal') + os.listdir(out / 'test' / 'anomalous')
    assert set(test_files) <= set(test_names)
    train_files = os.listdir(out / 'healthy') + os.listdir(out / 'mixed')
    assert all(int(f[:8]) >= 12 for f in train_files)
    c = json.loads((out / 'split.json').read_text())['counts']
    assert abs(c['mixed_anomalous'] / c['mixed'] - 0.3) < 1.5 / c['mixed']


# ------------------------------------------------------------------------------------------------ #
#                          --lists_out: the Covid layout's five lists                              #
# ------------------------------------------------------------------------------------------------ #

SHIPPED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'data',
                       'covidnet_labels')


def _covid_lists_sh(name):
    """A variable's value as tools/covid_lists.sh (the scripts' check) states it."""
    with open(os.path.join(os.path.dirname(SHIPPED), '..', 'tools', 'covid_lists.sh')) as f:
        line = next(line for line in f if line.startswith(name + '='))
    return line.split('=')[1].split()[0]


def test_lists_out_from_the_shipped_label_files(tmp_path, capsys):
    out = tmp_path / 'covid'
    argv = ['--train_labels', os.path.join(SHIPPED, 'train_COVIDx7B.txt'),
            '--test_labels', os.path.join(SHIPPED, 'test_COVIDx7B.txt'), '--lists_out', str(out)]
    # the scripts' check is the original's counts (datasets/README.md), as issue 31 asks
    assert _covid_lists_sh('COVIDX_COUNTS_SHIPPED') == '10031,5233,100,100'
    scripts = ['--train_leave_out', _covid_lists_sh('COVIDX_LEAVE_OUT')]
    expect = ['--expect_counts', _covid_lists_sh('COVIDX_COUNTS_SHIPPED')]
    assert pc.main(argv + scripts + expect) == 0
    printed = capsys.readouterr().out.strip()
    assert printed.count('\n') == 0 and 'healthy 10031, mixed 5233 (1570 COVID-positive)' in printed
    assert '100 + 100 training images left out' in printed
    lists = {n: data_loader.safe_load_list(str(out / f'{n}.pickle')) for n in pc.LIST_NAMES}
    assert pc.list_counts(lists) == (10031, 5233, 100, 100)
    left_out = json.loads((out / 'split.json').read_text())['left_out']
    assert len(left_out) == 200 and not set(left_out) & {f for v in lists.values() for f in v}
    train, test = pc.parse_label_file(argv[1]), pc.parse_label_file(argv[3])
    label = {r.filename: pc.is_positive(r.label) for r in train + test}
    assert all(label[f] for f in lists['train_pos'] + lists['test_pos'])
    assert not any(label[f] for n in ('train_neg', 'train_neg_mixed', 'test_neg') for f in lists[n])
    patient = {r.filename: r.patient for r in train}
    healthy = {patient[f] for f in lists['train_neg']}
    assert not healthy & {patient[f] for f in lists['train_pos'] + lists['train_neg_mixed']}
    assert not {patient[f] for f in left_out} & {patient[f] for n in pc.LIST_NAMES[:3]
                                                  for f in lists[n]}
    assert sum(label[f] for f in left_out) == 100
    assert json.loads((out / 'split.json').read_text())['train_labels'] == 'train_COVIDx7B.txt'
    # lists already there are never replaced (they may be the original's)
    before = (out / 'train_neg.pickle').read_bytes()
    assert pc.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count('\n') == 0 and 'already holds train_neg.pickle' in err
    assert (out / 'train_neg.pickle').read_bytes() == before
    # without --train_leave_out the tool keeps every training image (its own split's counts),
    # which the scripts' count check refuses in one line, writing nothing
    fresh = tmp_path / 'fresh'
    argv[-1] = str(fresh)
    assert pc.main(argv + expect) == 2
    err = capsys.readouterr().err.strip()
    assert err.count('\n') == 0 and 'healthy 9897, mixed 5567, test 100 + 100' in err
    assert not fresh.exists()


def test_lists_out_test_sets_are_the_originals(tmp_path):
    original = pc.load_lists(shared_path('reference', 'original_lists'))
    lists = pc.lists_from_records(pc.parse_label_file(os.path.join(SHIPPED, 'train_COVIDx7B.txt')),
                                  pc.parse_label_file(os.path.join(SHIPPED, 'test_COVIDx7B.txt')))
    assert set(lists['test_neg']) == set(original['test_neg'])
    assert set(lists['test_pos']) == set(original['test_pos'])
    # with the scripts' leave-out, every list has the original's length (not its images)
    lists = pc.lists_from_records(pc.parse_label_file(os.path.join(SHIPPED, 'train_COVIDx7B.txt')),
                                  pc.parse_label_file(os.path.join(SHIPPED, 'test_COVIDx7B.txt')),
                                  leave_out=100)
    assert {n: len(lists[n]) for n in pc.LIST_NAMES} == {n: len(original[n]) for n in pc.LIST_NAMES}


def test_lists_out_count_mismatch_stops_in_one_line(tmp_path, capsys):
    labels = tmp_path / 'train.txt'
    labels.write_text('p1 a.png positive s\np2 b.png negative s\np3 c.png negative s\n'
                      'p4 d.png negative s\np5 e.png negative s\n')
    argv = ['--train_labels', str(labels), '--test_labels', str(labels),
            '--lists_out', str(tmp_path / 'lists'), '--n_test_per_class', '1']
    assert pc.main(argv + ['--expect_counts', '9897,5567,100,100']) == 2
    err = capsys.readouterr().err.strip()
    assert err.count('\n') == 0 and 'healthy 2, mixed 3, test 1 + 1' in err, err
    assert not (tmp_path / 'lists').exists()
    assert pc.main(argv + ['--expect_counts', '2,3']) == 2
    assert 'give four numbers' in capsys.readouterr().err
    assert pc.main(argv + ['--expect_counts', '2,3,1,1']) == 0
    sizes = [len(data_loader.safe_load_list(str(tmp_path / 'lists' / f'{n}.pickle')))
             for n in pc.LIST_NAMES]
    assert sizes == [2, 1, 2, 1, 1]
