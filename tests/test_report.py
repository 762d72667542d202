"""Evaluation through the CLI: testAUC's metrics, scores, maps and pictures, and --mode score."""
import csv
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

import main as cli
import metrics
import report
import synthetic
from conftest import tiny_flags


@pytest.fixture(scope='module')
def tested(tmp_path_factory):
    """A tiny synthetic set with lesion masks, a tiny generator trained for 2 iterations, and
    testAUC's result with the defaults (in <tmp>/results)."""
    tmp = tmp_path_factory.mktemp('eval')
    synthetic.make_synthetic_dataset(tmp / 'syn', n_healthy=4, n_mixed=4, n_test_normal=8,
                                     n_test_anomalous=8, size=32, seed=0)
    cli.main(args(tmp, tmp / 'syn', 'run', '--mode', 'train', '--num_iters', '2'))
    result = cli.main(args(tmp, tmp / 'syn', 'results', '--bootstrap', '200'))
    return tmp, result


@pytest.fixture
def trained(tested):
    return tested[0]


def args(tmp, image_dir, out, *extra):
    """testAUC (extra may give another --mode) with the tiny model; the checkpoints always
    in tmp/models, results in tmp/<out>."""
    return ['--mode', 'testAUC', '--dataset', 'Folder', '--image_dir', str(image_dir),
            *tiny_flags(), '--use_tensorboard', 'false', '--test_iters', '2',
            '--model_save_dir', str(tmp / 'models'), '--log_dir', str(tmp / 'logs'),
            '--sample_dir', str(tmp / 'samples'), '--result_dir', str(tmp / out), *extra]


def read_csv(path):
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


def assert_report_references_only_existing_files(folder):
    refs = report.referenced_files(os.path.join(folder, 'report.html'))
    assert refs, 'the report references no pictures'
    for ref in refs:
        assert not os.path.isabs(ref) and '://' not in ref, ref  # offline, movable folder
        assert os.path.isfile(os.path.join(folder, ref)), ref


def test_testauc_writes_metrics_scores_maps_and_report(tested):
    trained, result = tested
    out = trained / 'results'
    saved = json.load(open(out / 'metrics.json'))
    # the original's keys stay, with the original's score and threshold rule by default
    for key in ('image_AUROC', 'threshold', 'threshold_source', 'sensitivity', 'specificity',
                'n_normal', 'n_anomalous'):
        assert saved[key] == result[key]
    assert saved['threshold_source'] == metrics.THRESHOLD_SOURCE_TEST
    assert saved['score_variant'] == 'mean' and (saved['n_normal'], saved['n_anomalous']) == (8, 8)
    low, high = saved['image_AUROC_ci95']
    assert low <= saved['image_AUROC'] <= high and saved['bootstrap']['n'] == 200
    assert set(saved['variants']) == set(metrics.SCORE_VARIANTS)
    assert saved['variants']['mean']['image_AUROC'] == saved['image_AUROC']

    rows = read_csv(out / 'scores.csv')
    assert list(rows[0])[:3] == ['path', 'gt_label', 'pred_score'] and len(rows) == 16
    assert {f'score_{v}' for v in metrics.SCORE_VARIANTS} <= set(rows[0])
    labels = [int(r['gt_label']) for r in rows]
    for v, summary in saved['variants'].items():  # metrics.json agrees with scores.csv
        s = [float(r[f'score_{v}']) for r in rows]
        assert summary['image_AUROC'] == pytest.approx(metrics.image_metrics(labels, s)
                                                       ['image_AUROC'])
    # each image's map file holds the map its scores came from
    for r in rows:
        amap = report.load_map(out / r['anomaly_map'])
        assert amap.shape == (32, 32)
        assert amap.mean() == pytest.approx(float(r['score_mean']), abs=1e-4)
        assert np.percentile(amap, 99) == pytest.approx(float(r['score_p99']), abs=1e-4)

    # pixel level from the synthetic lesion masks (normal images count as lesion-free)
    assert 0 <= saved['pixel_AUROC'] <= 1 and 0 <= saved['pixel_Dice'] <= 1
    assert (saved['pixel_n_images'], saved['pixel_n_lesion_images']) == (16, 8)
    import data_loader
    gt = [data_loader.load_mask(data_loader.find_mask(r['path'], trained / 'syn'), r['path'], 32)
          if r['gt_label'] == '1' else np.zeros((32, 32), bool) for r in rows]
    again = metrics.pixel_metrics(gt, [report.load_map(out / r['anomaly_map']) for r in rows])
    assert again['pixel_AUROC'] == pytest.approx(saved['pixel_AUROC'], abs=2e-3)

    # pictures: a panel per test image (default --num_maps -1), plots, a report that works
    # from disk
    panels = [r['anomaly_map'].replace('maps', 'panels', 1) for r in rows]
    assert all(os.path.isfile(out / p) for p in panels)
    with Image.open(out / panels[-1]) as im:  # anomalous: 5 tiles, the true lesion included
        assert im.size[0] == 5 * report.TILE_MIN
    with Image.open(out / panels[0]) as im:   # normal: no mask, 4 tiles
        assert im.size[0] == 4 * report.TILE_MIN
    assert os.path.isfile(out / 'plots' / 'roc.png')
    assert os.path.isfile(out / 'plots' / 'score_histogram.png')
    assert_report_references_only_existing_files(out)
    page = open(out / 'report.html').read()
    assert 'image AUROC' in page and 'pixel AUROC' in page and 'most anomalous' in page


def test_score_variant_flag_sets_the_headline_and_num_maps_limits_the_panels(trained):
    out = trained / 'p99'
    result = cli.main(args(trained, trained / 'syn', 'p99', '--score_variant', 'p99',
                           '--bootstrap', '0', '--num_maps', '1'))
    assert result['image_AUROC'] == result['variants']['p99']['image_AUROC']
    assert result['score'] == metrics.SCORE_VARIANTS['p99']
    assert 'image_AUROC_ci95' not in result
    rows = read_csv(out / 'scores.csv')
    assert [r['pred_score'] for r in rows] == [r['score_p99'] for r in rows]
    panels = {os.path.relpath(os.path.join(d, f), out / 'panels')
              for d, _, fs in os.walk(out / 'panels') for f in fs}
    # the first image, plus the report's most and least anomalous of each class
    expected = {rows[0]['anomaly_map']}
    for label in '01':
        ranked = sorted((r for r in rows if r['gt_label'] == label),
                        key=lambda r: -float(r['pred_score']))
        n = report.N_EXAMPLES
        expected |= {r['anomaly_map'] for r in ranked[:n] + ranked[-n:]}
    assert panels == {os.path.relpath(m, 'maps') for m in expected} and len(panels) < len(rows)
    assert_report_references_only_existing_files(out)


def test_threshold_from_a_validation_set(trained, capsys):
    # A copy of the test images is the test set by content: refused, as the test folder is.
    copy = trained / 'val_copy'
    shutil.copytree(trained / 'syn' / 'test', copy, dirs_exist_ok=True)
    with pytest.raises(SystemExit) as e:
        cli.main(args(trained, trained / 'syn', 'copy', '--val_dir', str(copy),
                      '--report', 'false'))
    assert e.value.code == 2 and 'same content' in capsys.readouterr().err
    # Mirrored test images: other pixels, so a validation set; its source says where the
    # threshold came from.
    val = trained / 'val'
    for d, _, files in os.walk(trained / 'syn' / 'test'):
        for f in files:
            dest = val / os.path.relpath(os.path.join(d, f), trained / 'syn' / 'test')
            os.makedirs(dest.parent, exist_ok=True)
            with Image.open(os.path.join(d, f)) as im:
                im.transpose(Image.FLIP_LEFT_RIGHT).save(dest)
    result = cli.main(args(trained, trained / 'syn', 'val_results', '--val_dir', str(val),
                           '--report', 'false', '--bootstrap', '0'))
    assert result['threshold_source'].startswith(f'validation set {val}')
    assert result['validation']['n_normal'] == 8
    assert not os.path.exists(trained / 'val_results' / 'report.html')
    assert os.path.isdir(trained / 'val_results' / 'maps')  # maps are written regardless

    # the test images themselves cannot serve as the validation set
    with pytest.raises(SystemExit) as e:
        cli.main(args(trained, trained / 'syn', 'bad', '--val_dir', str(trained / 'syn' / 'test'),
                      '--report', 'false'))
    assert e.value.code == 2 and 'also test images' in capsys.readouterr().err


def test_score_mode_scores_a_folder_recursively_in_any_format(trained, capsys):
    folder = trained / 'new'
    rows = read_csv(trained / 'results' / 'scores.csv')
    test_scores = {os.path.basename(r['path']): float(r['score_mean']) for r in rows}
    test_lung = {os.path.basename(r['path']): float(r['score_lung']) for r in rows}
    src = trained / 'syn' / 'test'
    os.makedirs(folder / 'a' / 'b')
    shutil.copy(src / 'normal' / 'normal_00000.png', folder / 'n0.png')
    shutil.copy(src / 'anomalous' / 'anomalous_00001.png', folder / 'a' / 'b' / 'x.png')
    Image.open(src / 'normal' / 'normal_00001.png').convert('RGB').save(folder / 'a' / 'x.jpg')
    (folder / 'a' / 'broken.png').write_bytes(b'not an image')
    result = cli.main(args(trained, trained / 'missing', 'scored', '--mode', 'score',
                           '--score_dir', str(folder)))
    out = trained / 'scored'
    scored = {os.path.relpath(r['path'], folder): r for r in read_csv(out / 'scores.csv')}
    assert set(scored) == {'n0.png', os.path.join('a', 'b', 'x.png'), os.path.join('a', 'x.jpg')}
    assert list(next(iter(scored.values())))[:3] == ['path', 'pred_score', 'anomaly_map']
    # the same image scores the same as in testAUC
    assert float(scored['n0.png']['pred_score']) == pytest.approx(test_scores['normal_00000.png'],
                                                                  abs=1e-6)
    assert float(scored[os.path.join('a', 'b', 'x.png')]['pred_score']) == pytest.approx(
        test_scores['anomalous_00001.png'], abs=1e-6)
    for r in scored.values():
        assert os.path.isfile(out / r['anomaly_map'])
    assert result['n_images'] == 3 and list(result['unreadable']) == [str(folder / 'a' /
                                                                          'broken.png')]
    assert 'could not be read' in capsys.readouterr().out
    assert_report_references_only_existing_files(out)

    # rerun with result_dir inside the folder: its own outputs are not scored
    cli.main(args(trained, trained / 'missing', 'new/out', '--mode', 'score', '--score_dir',
                  str(folder), '--report', 'false'))
    assert len(read_csv(folder / 'out' / 'scores.csv')) == 3

    with pytest.raises(SystemExit) as e:
        cli.main(args(trained, trained / 'syn', 'x', '--mode', 'score'))
    assert e.value.code == 2 and '--score_dir' in capsys.readouterr().err

    # the lung score's region was saved with the run: no training image is needed for it
    cli.main(args(trained, trained / 'missing', 'lung', '--mode', 'score', '--score_dir',
                  str(folder), '--score_variant', 'lung', '--report', 'false'))
    lung = {os.path.relpath(r['path'], folder): r for r in read_csv(trained / 'lung' /
                                                                     'scores.csv')}
    assert float(lung['n0.png']['pred_score']) == pytest.approx(
        test_lung['normal_00000.png'], abs=1e-6)


def test_output_names_are_unique_and_mirror_folders():
    names = report.output_names(['/d/test/normal/a.png', '/d/test/anomalous/a.png',
                                 '/d/test/anomalous/b.jpg', '/d/test/anomalous/b.png'])
    assert names == [os.path.join('normal', 'a.png'), os.path.join('anomalous', 'a.png'),
                     os.path.join('anomalous', 'b.jpg.png'), os.path.join('anomalous', 'b.png.png')]


def test_maps_round_trip_through_16_bit_png(tmp_path):
    amap = np.random.default_rng(0).random((9, 7)).astype(np.float32)
    report.save_map(amap, tmp_path / 'm' / 'x.png')
    np.testing.assert_allclose(report.load_map(tmp_path / 'm' / 'x.png'), amap,
                               atol=0.5 / report.MAP_SCALE + 1e-7)
