"""Faults of the Python API and the fitted files (issue 40, items 1, 2, 3, 6-11, 14): inputs that
are no radiograph, broken or foreign fitted files, arguments no detector can use. Each is one
clear error naming what was given (or a flag on the result), never a traceback or a silent
score. The shipped weights and tiny runs are real; the broken files are written on disk."""
import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import healthygan
from conftest import NIH_MINI, read_csv
from healthygan.data.splits import list_images
from healthygan.errors import ConfigError, DataError
from test_api import SHIPPED, score_argv, train_tiny_run
from test_faults import error_line, run as run_main
from tools import ship_weights

PIXELS = 'healthy_pixels_6500-7000-7500-8000_64px.pt'


@pytest.fixture(scope='module')
def det():
    return healthygan.load(SHIPPED, device='cpu')


@pytest.fixture(scope='module')
def radiograph():
    """A validation radiograph of the shipped weights' data set as uint8 (H, W)."""
    return np.asarray(Image.open(list_images(os.path.join(NIH_MINI, 'validation'))[0]).convert('L'))


@pytest.fixture
def shipped_copy(tmp_path):
    shutil.copytree(SHIPPED, tmp_path / 'w')
    return tmp_path / 'w'


@pytest.fixture(scope='module')
def ref_run(tmp_path_factory):
    """A tiny run holding 3 healthy images out of training (the ref_z reference's least)."""
    return train_tiny_run(tmp_path_factory.mktemp('faultsrefz'), 10, 6, 3, 0.3, seed=1)


def closed_image():
    img = Image.new('L', (64, 64))
    img.close()
    return img


# ---- 1. API inputs that hold no image ------------------------------------------------------- #

@pytest.mark.parametrize('given,words', [
    (lambda: np.zeros((0, 0), np.uint8), 'empty'),
    (lambda: np.zeros((0, 64), np.float32), 'empty'),
    (closed_image, 'PIL image cannot be read'),
    (lambda: torch.zeros(0, 3, 64, 64), 'holds no image'),
    (lambda: torch.zeros(1, 3, 64, 64, device='meta'), 'meta tensor')])
def test_1_an_input_holding_no_image_is_one_data_error(det, given, words):
    with pytest.raises(DataError, match=words):
        det.score(given())


def test_1_a_tensor_requiring_grad_scores_as_without(det, radiograph):
    x = torch.zeros(1, 3, 64, 64)
    assert det.score(x.clone().requires_grad_(True))[0].score == det.score(x)[0].score


def test_41_a_folder_scores_each_image_sorted(det, tmp_path, radiograph):
    for name in ('b.png', 'a.png'):
        Image.fromarray(radiograph).save(tmp_path / name)
    results = det.score(str(tmp_path))
    assert [os.path.basename(r.source) for r in results] == ['a.png', 'b.png']
    assert results[0].score == det.score(str(tmp_path / 'a.png')).score


# ---- 2. arguments of load() no detector can use ---------------------------------------------- #

@pytest.mark.parametrize('kwargs,words', [
    (dict(healthy_percentile=150), 'healthy_percentile'),
    (dict(healthy_percentile=float('nan')), 'healthy_percentile'),
    (dict(device='tpu'), "device 'tpu'"), (dict(test_iters='abc'), "test_iters 'abc'")])
def test_2_load_refuses_an_argument_in_one_error(kwargs, words):
    with pytest.raises(ConfigError, match=words):
        healthygan.load(SHIPPED, **kwargs)


# ---- 3. / 9. fitted files with the right name but broken or foreign contents ----------------- #

@pytest.mark.parametrize('advice,words', [
    ({'ensemble': 'abc'}, "ensemble 'abc'"), ({'ensemble': None}, 'ensemble None'),
    ({'test_iters': None}, 'test_iters None'), ({'ensemble': 0}, 'ensemble 0'),
    ({'ensemble': -1}, 'ensemble -1')])
def test_3_8_a_broken_detector_json_is_named(shipped_copy, advice, words):
    (shipped_copy / 'detector.json').write_text(json.dumps(advice))
    with pytest.raises(ConfigError, match=words) as e:
        healthygan.load(shipped_copy)
    assert 'detector.json' in str(e.value)


@pytest.mark.parametrize('ensemble', [0, -1])
def test_8_ensemble_of_no_checkpoint_is_refused(ensemble, tmp_path, capsys):
    with pytest.raises(ConfigError, match=f'ensemble {ensemble}: give how many checkpoints'):
        healthygan.load(SHIPPED, ensemble=ensemble, score_variant='mean')
    with pytest.raises(SystemExit) as e:
        ship_weights.main(['--run', SHIPPED, '--test_iters', '8000', '--ensemble', str(ensemble),
                           '--score_variant', 'mean', '--out', str(tmp_path / 'out'),
                           '--images', os.path.join(NIH_MINI, 'validation')])
    err = capsys.readouterr().err
    assert e.value.code != 0 and 'Traceback' not in err
    assert f'argument --ensemble: expected a positive integer, got {ensemble}' in err
    assert not (tmp_path / 'out').exists()


def break_pixels(folder, change):
    path = folder / PIXELS
    saved = torch.load(path)
    change(saved)
    torch.save(saved, path)


@pytest.mark.parametrize('change,words', [
    (lambda s: s.pop('mu'), 'mu must be a tensor'),
    (lambda s: s.update(mu=torch.zeros(32, 32)), r'mu must be a tensor \[64, 64\]'),
    (lambda s: s.update(mu=[0.0] * 64), 'mu must be a tensor'),
    (lambda s: s.pop('healthy_scores'), 'healthy_scores'),
    (lambda s: s.update(healthy_scores=[]), 'healthy_scores is empty'),
    (lambda s: s['mu'].__setitem__((0, 0), float('nan')), 'mu holds NaN'),
    (lambda s: s['scale'].__setitem__((0, 0), 0.0), 'scale holds zero or negative'),
    (lambda s: s['scale'].__setitem__((0, 0), -1.0), 'scale holds zero or negative'),
    (lambda s: s.update(healthy_scores=[float('nan')] * 3), 'NaN'),
    (lambda s: s.update(run_id='another'), 'built for run another')])
def test_3_9_a_broken_or_foreign_pixel_reference_is_named(shipped_copy, change, words):
    break_pixels(shipped_copy, change)
    with pytest.raises(ConfigError, match=words) as e:
        healthygan.load(shipped_copy)
    assert PIXELS in str(e.value)


def test_9_a_pixel_reference_naming_no_run_is_warned_about_once(shipped_copy, capsys):
    break_pixels(shipped_copy, lambda s: s.pop('run_id'))
    healthygan.load(shipped_copy)
    healthygan.load(shipped_copy)
    assert capsys.readouterr().err.count('names no run') == 1


@pytest.mark.parametrize('scores,words', [(['a', 'b'], 'no numbers'), ([float('nan')], 'NaN')])
def test_3_9_broken_healthy_scores_in_aucp_jsonl_are_named(shipped_copy, scores, words):
    (shipped_copy / 'detector.json').write_text(json.dumps({'test_iters': 8000}))
    lines = (shipped_copy / 'aucp.jsonl').read_text().splitlines()
    records = [json.loads(line) for line in lines]
    records[-1]['healthy_scores']['mean'] = scores
    (shipped_copy / 'aucp.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in records))
    with pytest.raises(ConfigError, match=words) as e:
        healthygan.load(shipped_copy)
    assert 'aucp.jsonl' in str(e.value)


@pytest.mark.parametrize('change,words', [
    (lambda s: s['state_dict'].pop('mu'), "'mu' is missing"),
    (lambda s: s['state_dict'].update(mu=torch.zeros(3, 3, dtype=torch.float64)),
     r'mu must be a tensor \[64, 64\]'),
    (lambda s: s['state_dict'].pop('generators.0.main.0.weight'), 'does not fit'),
    (lambda s: s.update(image_size='abc'), 'image_size'),
    (lambda s: s.update(members=[]), 'members'),
    (lambda s: s.update(variant='bogus'), 'bogus')])
def test_3_a_broken_detector_file_is_named(det, tmp_path, change, words):
    path = tmp_path / 'detector.pt'
    det.save(path)
    saved = torch.load(path)
    change(saved)
    torch.save(saved, path)
    with pytest.raises(ConfigError, match=words) as e:
        healthygan.load(path)
    assert str(path) in str(e.value)


# ---- 6. inputs that are no radiograph ------------------------------------------------------- #

@pytest.mark.parametrize('given,words', [
    (lambda: np.full((64, 64), np.nan, np.float32), 'NaN or infinite'),
    (lambda: np.where(np.eye(64) > 0, np.nan, 0.5).astype(np.float32), 'NaN or infinite'),
    (lambda: np.full((64, 64), np.inf), 'NaN or infinite'),
    (lambda: np.full((64, 64), None, dtype=object), 'no pixel values'),
    (lambda: torch.full((1, 3, 64, 64), 200.0), r'not in \[-1, 1\]'),
    (lambda: torch.full((1, 3, 64, 64), float('nan')), 'NaN or infinite'),
    (lambda: np.zeros((1, 1), np.uint8), '1 x 1 px'),
    (lambda: Image.new('L', (5, 300)), '5 x 300 px')])
def test_6_an_input_that_is_no_radiograph_is_refused(det, given, words):
    with pytest.raises(DataError, match=words):
        det.score(given())


@pytest.mark.parametrize('given', [
    lambda: np.random.default_rng(0).integers(0, 256, (2000, 2000, 3), dtype=np.uint8),
    lambda: np.full((256, 256), 255, np.uint8), lambda: np.full((256, 256), 100, np.uint8),
    lambda: np.stack([np.full((64, 64), 60), np.full((64, 64), 120),
                      np.full((64, 64), 180)], -1).astype(np.uint8)])
def test_6_an_image_unlike_the_healthy_radiographs_is_flagged(det, given, capsys):
    r = det.score(given())
    assert r.in_distribution is False
    assert 'ndarray' in capsys.readouterr().err  # the warning names the input


def test_6_the_shipped_validation_radiographs_are_not_flagged(det):
    results = det.score(list_images(os.path.join(NIH_MINI, 'validation')))
    assert sum(r.in_distribution is False for r in results) == 0


def test_6_score_mode_writes_the_flag(shipped_copy, tmp_path, radiograph, capsys):
    folder = tmp_path / 'imgs'
    folder.mkdir()
    Image.fromarray(radiograph).save(folder / 'a.png')
    Image.fromarray(np.full((128, 128), 255, np.uint8)).save(folder / 'b.png')
    code, _, err = run_main(capsys, score_argv(shipped_copy, folder, tmp_path / 'out',
                                               '--score_variant', 'ref_z', '--ensemble', '4',
                                               '--test_iters', '8000'))
    rows = read_csv(tmp_path / 'out' / 'scores.csv')
    assert code in (0, None) and [r['in_distribution'] for r in rows] == ['1', '0']
    assert 'b.png' in err


# ---- 7. the same picture as uint8 and float in [0, 1] ----------------------------------------- #

def test_7_uint8_and_float_intensities_score_alike(det, radiograph):
    assert det.score(radiograph.astype(np.float32) / 255).score == det.score(radiograph).score
    assert det.score(radiograph / 255.0).score == det.score(radiograph).score


# ---- 10. run_config.json edited to another size ----------------------------------------------- #

def test_10_run_config_of_another_size_is_refused(shipped_copy, tmp_path, capsys):
    path = shipped_copy / 'run_config.json'
    record = json.loads(path.read_text())
    record['config']['image_size'] = 128
    path.write_text(json.dumps(record))
    with pytest.raises(ConfigError, match='made at 64 px'):
        healthygan.load(shipped_copy)
    code, _, err = run_main(capsys, score_argv(shipped_copy, NIH_MINI + '/validation',
                                               tmp_path / 'out', '--score_variant', 'ref_z',
                                               '--ensemble', '4', '--test_iters', '8000',
                                               '--image_size', '128'))
    assert code == 2 and 'made at 64 px' in error_line(err)


# ---- 11. held-out healthy images replaced under the same names ------------------------------- #

def test_11_ref_z_is_rebuilt_when_its_held_out_images_changed(ref_run, tmp_path, capsys):
    models, folder = ref_run / 'models', ref_run / 'syn' / 'test' / 'anomalous'
    argv = score_argv(models, folder, tmp_path / 'first', '--score_variant', 'ref_z',
                      '--ensemble', '2')
    assert run_main(capsys, argv)[0] in (0, None)
    ref = next(p for p in os.listdir(models) if p.startswith('healthy_pixels_'))
    held_out = torch.load(models / ref)
    assert held_out['images'] and held_out['statistics'].shape == (2, 3)
    healthy = sorted((ref_run / 'syn' / 'healthy').iterdir())
    for p in healthy:  # replaced under the same names (new bytes, new times)
        Image.open(p).rotate(90).save(p)
    argv[argv.index(str(tmp_path / 'first'))] = str(tmp_path / 'again')
    code, out, err = run_main(capsys, argv)
    assert code in (0, None) and 'changed since' in err and 'building it again' in err
    assert torch.load(models / ref)['images'] != held_out['images']


# ---- 14. shapes the API cannot take --------------------------------------------------------- #

@pytest.mark.parametrize('call,shape', [
    ('score', (1, 64, 64, 3)), ('score', (64,)), ('translate', (2, 32, 32, 3))])
def test_14_a_shape_it_cannot_take_is_named_with_those_it_takes(det, call, shape):
    with pytest.raises(DataError) as e:
        getattr(det, call)(np.zeros(shape, np.uint8))
    assert str(shape) in str(e.value) and '(H, W)' in str(e.value)
