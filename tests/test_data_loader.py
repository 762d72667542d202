"""Preprocessing, dataset semantics and the safe list reader."""
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

import data_loader as dl
from healthygan.data import datasets
from conftest import NIH_MINI, shared_path


def test_crop_radiograph_cuts_the_top_8_percent_then_centres_a_square():
    arr = np.arange(120)[:, None].repeat(100, axis=1).astype(np.uint8)  # value = row index
    out = np.asarray(dl.crop_radiograph(Image.fromarray(arr)))
    # top = int(0.08 * 120) = 9 rows cut -> 100 x 111 -> centred 100 x 100 starting 5 rows lower
    assert out.shape == (100, 100)
    assert out[0, 0] == 14 and out[-1, 0] == 113
    wide = np.zeros((50, 80), np.uint8)
    wide[:, 40] = 255
    out = np.asarray(dl.crop_radiograph(Image.fromarray(wide)))
    assert out.shape == (46, 46) and out[:, 40 - 17].min() == 255  # centred horizontally


def test_transform_outputs_three_equal_channels_in_minus_one_one():
    img = Image.fromarray(np.full((50, 40), 255, np.uint8)).convert('RGB')
    x = dl.build_transform(16)(img)
    assert x.shape == (3, 16, 16) and torch.allclose(x, torch.ones_like(x))


def test_pair_dataset_follows_the_original_indexing(monkeypatch):
    ds = dl.PairDataset(['a0', 'a1', 'a2'], ['b0', 'b1'], transform=lambda img: img)
    monkeypatch.setattr(datasets, 'load_image', lambda p: p)
    assert len(ds) == 5
    assert [ds[k] for k in range(5)] == [('a0', 'b0'), ('a1', 'b1'), ('a2', 'b0'),
                                         ('a0', 'b1'), ('a1', 'b0')]


def test_flips_are_drawn_per_item_from_seed_and_index():
    assert dl.item_flips(0, 7) == tuple(bool(v) for v in
                                        np.random.default_rng([0, 7]).random(2) < 0.5)
    draws = {dl.item_flips(0, i) for i in range(64)}
    assert draws == {(False, False), (False, True), (True, False), (True, True)}


def test_broken_image_is_named_in_the_error(tmp_path):
    bad = tmp_path / 'broken.png'
    bad.write_bytes(b'\x89PNG\r\n\x1a\n not really')
    with pytest.raises(dl.DataError, match='broken.png'):
        dl.load_image(str(bad))


def test_sixteen_bit_png_is_stretched_not_clipped(tmp_path):
    arr = np.linspace(0, 4000, 64, dtype=np.uint16).reshape(8, 8)
    Image.fromarray(arr).save(tmp_path / 'x16.png')
    img = np.asarray(dl.load_image(str(tmp_path / 'x16.png')))
    assert img.shape == (8, 8, 3) and img.min() == 0 and img.max() == 255


def test_list_images_is_sorted_recursive_and_skips_other_files(tmp_path):
    for name in ['b.png', 'a.jpg', 'sub/c.PNG', 'notes.txt', '.hidden.png']:
        p = tmp_path / name
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(b'x')
    found = [p[len(str(tmp_path)) + 1:] for p in dl.list_images(str(tmp_path))]
    assert found == ['a.jpg', 'b.png', 'sub/c.PNG']
    (tmp_path / 'empty').mkdir()
    with pytest.raises(dl.DataError, match='no images'):
        dl.list_images(str(tmp_path / 'empty'))
    with pytest.raises(dl.DataError, match='not found'):
        dl.list_images(str(tmp_path / 'missing'))


def test_safe_load_list_accepts_lists_of_strings_only(tmp_path):
    good = tmp_path / 'good.pickle'
    good.write_bytes(pickle.dumps(['a.png', 'b.jpg']))
    assert dl.safe_load_list(str(good)) == ['a.png', 'b.jpg']
    wrong = tmp_path / 'wrong.pickle'
    wrong.write_bytes(pickle.dumps({'a': 1}))
    with pytest.raises(dl.DataError, match='not a list'):
        dl.safe_load_list(str(wrong))
    mixed = tmp_path / 'mixed.pickle'
    mixed.write_bytes(pickle.dumps(['a.png', 3]))
    with pytest.raises(dl.DataError):
        dl.safe_load_list(str(mixed))
    with pytest.raises(dl.DataError, match='not found'):
        dl.safe_load_list(str(tmp_path / 'absent.pickle'))


def test_safe_load_list_reads_the_original_covid_lists():
    folder = shared_path('reference', 'original_lists')
    sizes = {name: len(dl.safe_load_list(f'{folder}/{name}.pickle'))
             for name in ['train_neg', 'train_pos', 'train_neg_mixed', 'test_neg', 'test_pos']}
    assert sizes == {'train_neg': 10031, 'train_pos': 1570, 'train_neg_mixed': 3663,
                     'test_neg': 100, 'test_pos': 100}


def test_folder_layout_of_the_real_nih_mini_set():
    root = NIH_MINI

    class C:  # the hold-out flags at their parser defaults (declared there alone)
        dataset, image_dir, holdout_fraction, holdout_stratify = 'Folder', root, 0.0, False
    split = dl.resolve_split(C)
    assert {k: len(v) for k, v in split.items()} == {
        'healthy': 200, 'mixed': 200, 'test_normal': 50, 'test_anomalous': 50,
        'holdout_healthy': 0, 'holdout_mixed': 0}
    C.holdout_fraction = 0.2  # 40 + 40 held out for AUCp, never trained on
    held = dl.resolve_split(C)
    assert [len(held[k]) for k in ('healthy', 'holdout_healthy', 'mixed', 'holdout_mixed')] == \
        [160, 40, 160, 40]
    assert not set(held['healthy']) & set(held['holdout_healthy'])
    x = dl.build_transform(64)(dl.load_image(split['mixed'][0]))
    assert x.shape == (3, 64, 64) and -1 <= x.min() and x.max() <= 1
