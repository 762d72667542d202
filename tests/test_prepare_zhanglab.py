"""tools/prepare_zhanglab.py: a user's ZhangLab download into the Folder layout."""
import csv
import json
import os
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, shared_path
import data_loader
from tools import prepare_zhanglab as pz

SHIPPED = os.path.join(ROOT, 'data', 'zhanglab')
PER_FOLDER = {'healthy': 8, 'validation/normal': 2, 'validation/anomalous': 3}
MIXED = {'normal': 5, 'anomalous': 6}
TEST = (3, 4)  # test/NORMAL, test/PNEUMONIA


def _rows(list_dir):
    with open(os.path.join(list_dir, 'split.csv'), newline='') as f:
        return list(csv.DictReader(f))


def _write_lists(path, rows):
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, 'split.csv'), 'w', newline='') as f:
        w = csv.DictWriter(f, ['file', 'folder', 'label'])
        w.writeheader()
        w.writerows(rows)
    return str(path)


def _jpeg(path, rng, size=(37, 29), mode='L'):
    """A tiny random radiograph-like JPEG (the download's images are grayscale, a few RGB)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    arr = rng.integers(30, 220, size=size[::-1], dtype=np.uint8)
    Image.fromarray(arr).convert(mode).save(path)


def _subset(rows):
    """A few rows of each shipped folder (mixed: both labels), in the shipped order."""
    out, taken = [], {}
    for r in rows:
        key = r['folder'] if r['folder'] != 'mixed' else 'mixed ' + r['label']
        limit = MIXED[r['label']] if r['folder'] == 'mixed' else PER_FOLDER[r['folder']]
        if taken.get(key, 0) < limit:
            taken[key] = taken.get(key, 0) + 1
            out.append(r)
    return out


@pytest.fixture
def download(tmp_path):
    """(parent of chest_xray/, lists folder, subset rows): a small download in Kaggle's layout,
    with real JPEGs named from the shipped lists, two unlisted train images and a val/ folder."""
    rng = np.random.default_rng(0)
    rows = _subset(_rows(SHIPPED))
    lists = _write_lists(tmp_path / 'lists', rows)
    base = tmp_path / 'dl' / 'chest_xray'
    for k, r in enumerate(rows):
        cls = pz.CLASS_DIR[r['label']]
        _jpeg(str(base / 'train' / cls / r['file']), rng, mode='RGB' if k == 0 else 'L')
    _jpeg(str(base / 'train' / 'NORMAL' / 'IM-9901-0001.jpeg'), rng)
    _jpeg(str(base / 'train' / 'PNEUMONIA' / 'person9901_virus_1.jpeg'), rng)
    for k in range(TEST[0]):
        _jpeg(str(base / 'test' / 'NORMAL' / f'IM-{9001 + k}-0001.jpeg'), rng)
    for k in range(TEST[1]):
        _jpeg(str(base / 'test' / 'PNEUMONIA' / f'person{9001 + k}_bacteria_{k}.jpeg'), rng)
    _jpeg(str(base / 'val' / 'NORMAL' / 'NORMAL2-IM-1427-0001.jpeg'), rng)
    _jpeg(str(base / 'val' / 'PNEUMONIA' / 'person1946_bacteria_4874.jpeg'), rng)
    (base / 'train' / 'NORMAL' / '.DS_Store').write_bytes(b'\0')
    return SimpleNamespace(dir=str(tmp_path / 'dl'), base=base, lists=lists, rows=rows,
                           out=str(tmp_path / 'out'))


def _main(d, *extra):
    return pz.main(['--download', d.dir, '--lists', d.lists, '--out', d.out] + list(extra))


def _names(out, folder):
    return sorted(os.listdir(os.path.join(out, folder)))


def _one_error(capsys, *phrases):
    """The run's stderr ends in one 'error:' line holding every phrase (warnings may come
    before it), with no traceback."""
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines and 'Traceback' not in '\n'.join(lines), lines
    err = lines[-1]
    assert err.startswith('error: ') and all(not x.startswith('error') for x in lines[:-1]), lines
    for p in phrases:
        assert p in err, err
    return err


# ------------------------------------------------------------------------------------------------ #
#                                       The shipped lists                                          #
# ------------------------------------------------------------------------------------------------ #

def test_shipped_lists_counts_and_patients():
    lists = pz.read_lists(SHIPPED)  # itself refuses a patient in two folders
    counts = {f: len(v) for f, v in lists.items()}
    assert counts == {'healthy': 800, 'mixed': 1103, 'validation/normal': 100,
                      'validation/anomalous': 300}
    assert sum(lab == 'anomalous' for _, lab in lists['mixed']) == 662
    assert all(lab == 'normal' for f in ('healthy', 'validation/normal') for _, lab in lists[f])
    assert all(lab == 'anomalous' for _, lab in lists['validation/anomalous'])
    patients = {f: {pz.parse_name(n)[0] for n, _ in v} for f, v in lists.items()}
    folders = list(patients)
    for i, a in enumerate(folders):
        for b in folders[i + 1:]:
            assert not patients[a] & patients[b], (a, b)
    # none of Kaggle's val/ images (its NORMAL2-IM-14xx and person194x-195x ones) is listed
    names = {n for v in lists.values() for n, _ in v}
    assert 'NORMAL2-IM-1427-0001.jpeg' not in names
    assert 'person1946_bacteria_4874.jpeg' not in names


def test_shipped_lists_are_the_development_copy():
    folder = shared_path('data', 'zhanglab-cxr')
    lists = pz.read_lists(SHIPPED)
    with open(os.path.join(folder, 'manifest.csv'), newline='') as f:
        manifest = list(csv.DictReader(f))
    for name in pz.LISTED:
        assert sorted(n for n, _ in lists[name]) == sorted(os.listdir(os.path.join(folder, name)))
        assert sorted(lists[name]) == sorted((r['file'], r['label']) for r in manifest
                                             if r['folder'] == name)
    assert {r['official_split'] for r in manifest} == {'train'}
    with open(os.path.join(folder, 'mixed_truth.csv'), newline='') as f:
        truth = [(r['file'], r['label']) for r in csv.DictReader(f)]
    assert truth == sorted(lists['mixed'])


# ------------------------------------------------------------------------------------------------ #
#                                      A download, written                                         #
# ------------------------------------------------------------------------------------------------ #

def test_layout_counts_truth_and_resize(download, capsys):
    d = download
    assert _main(d, '--size', '32') == 0
    printed = capsys.readouterr()
    by_folder = {}
    for r in d.rows:
        by_folder.setdefault(r['folder'], []).append(r)
    for name in pz.LISTED:
        assert _names(d.out, name) == sorted(r['file'] for r in by_folder[name])
    assert _names(d.out, 'test/normal') == [f'IM-{9001 + k}-0001.jpeg' for k in range(TEST[0])]
    assert len(_names(d.out, 'test/anomalous')) == TEST[1]
    with open(os.path.join(d.out, 'mixed_truth.csv'), newline='') as f:
        truth = [(r['file'], r['label']) for r in csv.DictReader(f)]
    assert truth == sorted((r['file'], r['label']) for r in by_folder['mixed'])
    for folder in pz.FOLDERS:
        for name in _names(d.out, folder):
            with Image.open(os.path.join(d.out, folder, name)) as im:
                assert (im.format, im.mode, im.size) == ('JPEG', 'RGB', (32, 32))
    meta = json.loads(open(os.path.join(d.out, 'split.json')).read())
    assert meta['source'] == 'zhanglab' and meta['size'] == 32 and not meta['drawn']
    assert meta['counts'] == {'healthy': 8, 'mixed': 11, 'validation/normal': 2,
                              'validation/anomalous': 3, 'test/normal': 3, 'test/anomalous': 4}
    out = printed.out
    assert 'mixed/                     11       5          6   shipped list' in out
    assert 'test/anomalous/             4       0          4   official test split' in out
    assert "val/ (Kaggle's, 2 images): 0 in the lists, so not used" in out
    assert 'not used: 2 image(s) of train/' in out
    # the project reads it
    split = data_loader.resolve_split(SimpleNamespace(dataset='Folder', image_dir=d.out,
                                                      holdout_fraction=0.0))
    assert (len(split['healthy']), len(split['mixed']), len(split['test_normal']),
            len(split['test_anomalous'])) == (8, 11, 3, 4)
    data_loader.load_image(split['mixed'][0])
    # a test split of other counts than the official one is said, once
    assert printed.err.count('warning: test/ holds 3 normal + 4 pneumonia') == 1
    assert '234 + 390' in printed.err


def test_size_zero_copies_bytes_and_overwrite(download, capsys):
    d = download
    assert _main(d, '--size', '0') == 0
    name = d.rows[0]['file']
    src = d.base / 'train' / 'NORMAL' / name
    assert open(os.path.join(d.out, 'healthy', name), 'rb').read() == src.read_bytes()
    assert 'images copied as they are' in capsys.readouterr().out
    assert _main(d) == 2
    _one_error(capsys, 'already holds a ZhangLab split', '--overwrite')
    assert _main(d, '--overwrite', '--size', '16') == 0
    with Image.open(os.path.join(d.out, 'healthy', name)) as im:
        assert im.size == (16, 16)
    assert not os.path.exists(d.out + '.partial')


def test_download_folder_itself_and_non_images(download, capsys):
    d = download
    (d.base / 'train' / 'PNEUMONIA' / 'notes.txt').write_text('x')
    assert pz.main(['--download', str(d.base), '--lists', d.lists, '--out', d.out,
                    '--size', '8']) == 0
    err = capsys.readouterr().err
    assert err.count('not images') == 1 and '1 file(s)' in err and 'notes.txt' in err


# ------------------------------------------------------------------------------------------------ #
#                                       Other mixes                                                #
# ------------------------------------------------------------------------------------------------ #

def test_draw_another_mix(download, capsys):
    d = download
    assert _main(d, '--size', '8') == 0
    fixed = {f: _names(d.out, f) for f in pz.FOLDERS if not f.startswith(('healthy', 'mixed'))}
    capsys.readouterr()
    assert _main(d, '--size', '8', '--overwrite', '--anomaly_rate', '0.5', '--mixed_size', '8',
                 '--healthy_size', '4', '--seed', '3') == 0
    out = capsys.readouterr().out
    assert 'drawn (--seed) from the listed patients' in out and 'mixed/ is 50.0% pneumonia' in out
    assert {f: _names(d.out, f) for f in fixed} == fixed
    with open(os.path.join(d.out, 'mixed_truth.csv'), newline='') as f:
        truth = {r['file']: r['label'] for r in csv.DictReader(f)}
    assert sorted(truth) == _names(d.out, 'mixed') and len(truth) == 8
    assert sum(v == 'anomalous' for v in truth.values()) == 4
    assert len(_names(d.out, 'healthy')) == 4
    assert all(pz.parse_name(n)[1] == 'normal' for n in _names(d.out, 'healthy'))
    patients = {f: {pz.parse_name(n)[0] for n in _names(d.out, f)} for f in pz.FOLDERS}
    assert not patients['healthy'] & patients['mixed']
    training = {n for f in ('healthy', 'mixed') for n in _names(d.out, f)}
    listed = {r['file'] for r in d.rows if r['folder'] in ('healthy', 'mixed')}
    assert training <= listed
    meta = json.loads(open(os.path.join(d.out, 'split.json')).read())
    assert meta['drawn'] and meta['seed'] == 3 and meta['anomaly_rate'] == 0.5


def test_draw_is_seeded_and_patient_disjoint():
    lists = pz.read_lists(SHIPPED)
    a = pz.draw_mix(lists, 0.3, 600, 500, seed=0)
    assert a == pz.draw_mix(lists, 0.3, 600, 500, seed=0)
    b = pz.draw_mix(lists, 0.3, 600, 500, seed=1)
    assert a['mixed'] != b['mixed'] and a['validation/normal'] == lists['validation/normal']
    for s in (a, b):
        assert len(s['mixed']) == 600 and len(s['healthy']) == 500
        assert sum(lab == 'anomalous' for _, lab in s['mixed']) == 180
        ph = {pz.parse_name(n)[0] for n, _ in s['healthy']}
        pm = {pz.parse_name(n)[0] for n, _ in s['mixed']}
        assert not ph & pm
    # the shipped rate and sizes, drawn: the same counts from the same images
    c = pz.draw_mix(lists, 662 / 1103, 1103, 800, seed=0)
    assert sorted(c['healthy'] + c['mixed']) == sorted(lists['healthy'] + lists['mixed'])


@pytest.mark.parametrize('extra, phrases', [
    (['--anomaly_rate', '0.9'], ['--anomaly_rate 0.9 of --mixed_size 11 needs 10 pneumonia', '6']),
    (['--anomaly_rate', '0.1', '--mixed_size', '30'],
     ['27 normal images for mixed/ and --healthy_size 8 need 35', 'have 13']),
    (['--mixed_size', '30'], ['--anomaly_rate 0.5455 of --mixed_size 30 needs 16']),
    (['--anomaly_rate', '1.5'], ['--anomaly_rate must lie between 0 and 1']),
    (['--healthy_size', '0'], ['--healthy_size must be at least 1']),
    (['--size', '-3'], ['--size must be 0']),
])
def test_impossible_mix_is_one_line(download, capsys, extra, phrases):
    assert _main(download, *extra) == 2
    _one_error(capsys, *phrases)
    assert not os.path.exists(download.out)


# ------------------------------------------------------------------------------------------------ #
#                                          Errors                                                  #
# ------------------------------------------------------------------------------------------------ #

def test_missing_folder(download, capsys):
    os.rename(download.base / 'test' / 'PNEUMONIA', download.base / 'test' / 'pneumonia_old')
    assert _main(download) == 2
    _one_error(capsys, 'no folder test/PNEUMONIA', 'train/NORMAL, train/PNEUMONIA')
    assert pz.main(['--download', str(download.base / 'nowhere'), '--out', download.out]) == 2
    _one_error(capsys, 'no folder train/NORMAL')
    assert not os.path.exists(download.out)


def test_listed_file_not_in_download(download, capsys):
    gone = [r for r in download.rows if r['folder'] == 'mixed' and r['label'] == 'anomalous'][0]
    os.remove(download.base / 'train' / 'PNEUMONIA' / gone['file'])
    assert _main(download) == 2
    _one_error(capsys, f'1 of the {len(download.rows)} listed images are not in the download',
               gone['file'])
    assert not os.path.exists(download.out)


def test_file_in_two_splits_of_the_download(download, capsys):
    name = download.rows[0]['file']
    src = download.base / 'train' / 'NORMAL' / name
    (download.base / 'test' / 'NORMAL' / name).write_bytes(src.read_bytes())
    assert _main(download) == 2
    _one_error(capsys, '1 file(s)', f'{name} in train/NORMAL and test/NORMAL', 'two splits')


def test_listed_training_file_only_in_test(download, capsys):
    name = download.rows[0]['file']
    os.rename(download.base / 'train' / 'NORMAL' / name, download.base / 'test' / 'NORMAL' / name)
    assert _main(download) == 2
    _one_error(capsys, f'{name} (listed for healthy, official train split) is in test/NORMAL')


def test_listed_file_in_the_other_class_folder(download, capsys):
    name = download.rows[0]['file']
    os.rename(download.base / 'train' / 'NORMAL' / name,
              download.base / 'train' / 'PNEUMONIA' / name)
    assert _main(download) == 2
    _one_error(capsys, 'wrong folder', 'train/PNEUMONIA')


def test_listed_file_from_kaggle_val_is_taken(download, capsys):
    row = download.rows[0]
    os.rename(download.base / 'train' / 'NORMAL' / row['file'],
              download.base / 'val' / 'NORMAL' / row['file'])
    assert _main(download, '--size', '8') == 0
    assert row['file'] in _names(download.out, 'healthy')
    assert "val/ (Kaggle's, 3 images): 1 in the lists" in capsys.readouterr().out


def test_test_image_in_the_other_class_folder(download, capsys):
    os.rename(download.base / 'test' / 'PNEUMONIA' / 'person9001_bacteria_0.jpeg',
              download.base / 'test' / 'NORMAL' / 'person9001_bacteria_0.jpeg')
    assert _main(download) == 2
    _one_error(capsys, 'test/NORMAL/person9001_bacteria_0.jpeg is named as a PNEUMONIA image')


@pytest.mark.parametrize('edit, phrases', [
    (lambda rows: rows + [dict(rows[0], folder='mixed')], ['listed twice', 'two splits']),
    (lambda rows: rows + [dict(rows[0], file='scan_7.jpeg')], ['unknown file name', 'scan_7']),
    (lambda rows: rows + [dict(rows[0], label='anomalous')], ['listed twice']),
    (lambda rows: [dict(rows[0], label='anomalous')] + rows[1:],
     ['named as a NORMAL image but listed as anomalous']),
    (lambda rows: rows + [dict(rows[0], file=rows[0]['file'].replace('-0001.', '-0009.'),
                               folder='validation/normal')],
     ['a patient must stay in one folder']),
    (lambda rows: [dict(rows[0], folder='train')] + rows[1:], ["not 'train'"]),
])
def test_bad_lists(download, capsys, edit, phrases):
    lists = _write_lists(os.path.join(os.path.dirname(download.lists), 'bad'), edit(download.rows))
    assert pz.main(['--download', download.dir, '--lists', lists, '--out', download.out]) == 2
    err = _one_error(capsys, *phrases)
    assert 'split.csv:' in err
    assert not os.path.exists(download.out)


def test_lists_folder_without_split_csv(download, tmp_path, capsys):
    assert pz.main(['--download', download.dir, '--lists', str(tmp_path / 'none'),
                    '--out', download.out]) == 2
    _one_error(capsys, 'cannot read the file lists', '--lists names the folder')


def test_out_holding_something_else_is_refused(download, capsys):
    os.makedirs(download.out)
    keep = os.path.join(download.out, 'precious.txt')
    open(keep, 'w').write('x')
    for flags in ([], ['--overwrite']):
        assert _main(download, *flags) == 2
        _one_error(capsys, 'files this tool did not write', 'choose another --out')
    with open(os.path.join(download.out, 'split.json'), 'w') as f:
        json.dump({'source': 'nih'}, f)
    assert _main(download, '--overwrite') == 2
    _one_error(capsys, 'another dataset (split.json: nih)')
    assert os.path.exists(keep)


def test_unreadable_image_leaves_nothing(download, capsys):
    bad = download.base / 'test' / 'NORMAL' / 'IM-9001-0001.jpeg'
    bad.write_bytes(bad.read_bytes()[:40])
    assert _main(download, '--size', '8') == 2
    _one_error(capsys, 'cannot read', 'IM-9001-0001.jpeg')
    assert not os.path.exists(download.out) and not os.path.exists(download.out + '.partial')
