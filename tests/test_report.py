"""The report: testAUC's metrics, scores, maps, panels, plots and report.html (report.py)."""
import json
import os

import numpy as np
import pytest
from PIL import Image

import main as cli
import metrics
import report
from conftest import assert_report_references_only_existing_files, eval_args, read_csv


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
    # every variant but ref_z, which only --score_variant ref_z computes (its reference)
    assert set(saved['variants']) == set(metrics.SCORE_VARIANTS) - {'ref_z'}
    assert saved['variants']['mean']['image_AUROC'] == saved['image_AUROC']

    rows = read_csv(out / 'scores.csv')
    assert list(rows[0])[:3] == ['path', 'gt_label', 'pred_score'] and len(rows) == 16
    assert {f'score_{v}' for v in metrics.SCORE_VARIANTS if v != 'ref_z'} == \
        {k for k in rows[0] if k.startswith('score_')}
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
    # G's mask as a lesion map of its own, from the tested checkpoint's translations
    import torch
    from healthygan.model.losses import generate
    from model import Generator
    from conftest import TINY
    G = Generator(TINY['g_conv_dim'], 0, TINY['g_repeat_num'])
    G.load_state_dict(torch.load(trained / 'models' / '2-G.ckpt', weights_only=True))
    G.train()
    x = torch.stack([data_loader.build_transform(32)(data_loader.load_image(r['path']))
                     for r in rows])
    with torch.no_grad():
        masks = generate(G, x)[2][:, 0].numpy()
    assert saved['mask_pixel_AUROC'] == pytest.approx(
        metrics.pixel_metrics(gt, list(masks))['pixel_AUROC'], abs=1e-6)

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
    result = cli.main(eval_args(trained, trained / 'syn', 'p99', '--score_variant', 'p99',
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
