"""Using a trained run on new images: the Python API (healthygan.load), --mode score on one image
(PNG, DICOM) with the architecture read from the run, and the label-free healthy reference."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

import healthygan
import main as cli
from conftest import ROOT, eval_args, read_csv, tiny_flags
from healthygan.data.decode import build_transform
from healthygan.detection.reference import HealthyReference, healthy_scores
from healthygan.errors import ConfigError, DataError
from test_formats import write_dicom

SHIPPED = os.path.join(ROOT, 'pretrained', 'nih-cxr-mini')


def train_tiny_run(tmp, n_healthy, n_mixed, n_test, holdout, seed, *extra):
    """A synthetic set in tmp/syn and a tiny run on it (checkpoints 2 and 4) in tmp/models."""
    import synthetic
    if not (tmp / 'syn').exists():
        synthetic.make_synthetic_dataset(tmp / 'syn', n_healthy=n_healthy, n_mixed=n_mixed,
                                         n_test_normal=n_test, n_test_anomalous=n_test, size=32,
                                         seed=seed)
    cli.main(['--mode', 'train', '--dataset', 'Folder', '--image_dir', str(tmp / 'syn'),
              *tiny_flags(), '--use_tensorboard', 'false', '--num_iters', '4',
              '--model_save_step', '2', '--holdout_fraction', str(holdout),
              '--model_save_dir', str(tmp / 'models'), '--log_dir', str(tmp / 'logs'),
              '--sample_dir', str(tmp / 'samples'), '--result_dir', str(tmp / 'results'),
              *extra])
    return tmp


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    """A tiny run trained with a hold-out (so aucp.jsonl holds the healthy reference), two
    checkpoints, and a few images to score."""
    return train_tiny_run(tmp_path_factory.mktemp('api'), 8, 8, 2, 0.25, seed=0)


def score_argv(models, target, out, *extra):
    """--mode score naming no architecture flag: they come from the run's run_config.json."""
    return ['--mode', 'score', '--model_save_dir', str(models), '--score_dir', str(target),
            '--test_iters', 'latest', '--device', 'cpu', '--num_workers', '0',
            '--result_dir', str(out), '--report', 'false', *extra]


def anomalous_png(run):
    folder = run / 'syn' / 'test' / 'anomalous'
    return str(folder / sorted(os.listdir(folder))[0])


def test_api_scores_a_path_a_pil_image_an_array_and_a_tensor_alike(run):
    det = healthygan.load(run / 'models')
    path = anomalous_png(run)
    r = det.score(path)
    assert isinstance(r, healthygan.Result) and r.source == path
    assert r.map.shape == (32, 32) and 0 <= r.map.min() and r.map.max() <= 1
    assert r.score == pytest.approx(r.map.mean(), rel=1e-5)  # the original's score: the map's mean
    with Image.open(path) as img:
        pil = det.score(img)
        arr = det.score(np.asarray(img))
    x = build_transform(32)(Image.open(path).convert('RGB'))
    tensor = det.score(x[None])
    assert isinstance(tensor, list) and len(tensor) == 1
    for other in (pil, arr, tensor[0]):
        assert other.score == pytest.approx(r.score, abs=1e-7)
        assert other.variants == pytest.approx(r.variants, abs=1e-7)
    several = det.score([path, path])
    assert [s.score for s in several] == pytest.approx([r.score, r.score], abs=1e-7)
    x_hat, mask = det.translate(path)
    assert x_hat.shape == (3, 32, 32) and mask.shape == (1, 32, 32)
    assert -1 <= x_hat.min() and x_hat.max() <= 1 and 0 <= mask.min() and mask.max() <= 1
    # the map is |x - x_hat| / 2 of the translation
    assert (x - x_hat).abs().mean(0).div(2).numpy() == pytest.approx(r.map, abs=1e-6)


def test_cli_scores_one_png_and_one_dicom_as_the_api_does(run, capsys):
    det = healthygan.load(run / 'models')
    png = anomalous_png(run)
    cli.main(score_argv(run / 'models', png, run / 'one_png'))
    out = capsys.readouterr().out
    assert 'Architecture from' in out and '--g_conv_dim 4' in out
    rows = read_csv(run / 'one_png' / 'scores.csv')
    assert [r['path'] for r in rows] == [png]
    assert float(rows[0]['pred_score']) == pytest.approx(det.score(png).score, abs=1e-7)
    assert os.path.isfile(run / 'one_png' / rows[0]['anomaly_map'])

    values = np.asarray(Image.open(png).convert('L'), dtype=np.uint16) * 16  # 12 bits
    dcm = write_dicom(run / 'dicom' / 'chest.dcm', values)
    cli.main(score_argv(run / 'models', dcm, run / 'one_dcm'))
    rows = read_csv(run / 'one_dcm' / 'scores.csv')
    assert [r['path'] for r in rows] == [dcm]
    assert float(rows[0]['pred_score']) == pytest.approx(det.score(dcm).score, abs=1e-7)


def test_score_refuses_an_architecture_flag_that_disagrees_with_the_run(run, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(score_argv(run / 'models', anomalous_png(run), run / 'x', '--g_conv_dim', '8'))
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count('\n') == 1
    assert '--g_conv_dim 8' in err and '--g_conv_dim 4' in err and 'run_config.json' in err
    # the same value typed again is fine
    cli.main(score_argv(run / 'models', anomalous_png(run), run / 'same', '--g_conv_dim', '4'))
    (run / 'notes.txt').write_text('not an image')
    for bad, what in [(run / 'notes.txt', 'not an image'), (run / 'nothing', 'does not exist')]:
        with pytest.raises(SystemExit):
            cli.main(score_argv(run / 'models', bad, run / 'y'))
        assert what in capsys.readouterr().err


def test_the_healthy_reference_gives_percentiles_in_the_api_and_in_scores_csv(run):
    log = [json.loads(line) for line in open(run / 'models' / 'aucp.jsonl')]
    last = log[-1]
    assert last['iter'] == 4 and len(last['healthy_scores']['mean']) == last['n_healthy'] == 2
    det = healthygan.load(run / 'models', healthy_percentile=50)
    ref = det.reference
    assert list(ref.scores) == sorted(last['healthy_scores']['mean'])
    assert ref.threshold == pytest.approx(np.median(last['healthy_scores']['mean']))
    assert list(ref.percentiles([ref.scores[0], ref.scores[1], ref.scores[1] + 1])) == \
        [50.0, 100.0, 100.0]
    assert list(ref.percentiles([ref.scores[0] - 1])) == [0.0]

    folder = run / 'syn' / 'test'
    cli.main(score_argv(run / 'models', folder, run / 'ref', '--healthy_percentile', '50'))
    rows = read_csv(run / 'ref' / 'scores.csv')
    summary = json.load(open(run / 'ref' / 'summary.json'))
    assert summary['healthy_reference']['n_healthy'] == 2
    assert summary['healthy_reference']['source'].startswith('label-free')
    assert summary['n_above_healthy_threshold'] == \
        sum(int(r['above_healthy_threshold']) for r in rows)
    for row in rows:
        r = det.score(row['path'])
        assert float(row['healthy_percentile']) == pytest.approx(r.percentile, abs=0.01)
        assert int(row['above_healthy_threshold']) == r.above_healthy_threshold

    # an ensemble's reference is the mean of its members' healthy scores, as its scores are
    det2 = healthygan.load(run / 'models', ensemble=2)
    members = np.mean([log[0]['healthy_scores']['mean'], last['healthy_scores']['mean']], axis=0)
    assert det2.members == [2, 4] and list(det2.reference.scores) == pytest.approx(sorted(members))


def test_score_reports_one_image_as_the_console_does(run, capsys):
    """report.html states the healthy threshold and the percentile the console prints, and
    lists a single image once, not as both the most and the least anomalous."""
    png = anomalous_png(run)
    argv = score_argv(run / 'models', png, run / 'one_report', '--healthy_percentile', '50')
    argv[argv.index('--report') + 1] = 'true'
    cli.main(argv)
    out = capsys.readouterr().out
    row, = read_csv(run / 'one_report' / 'scores.csv')
    summary = json.load(open(run / 'one_report' / 'summary.json'))
    page = open(run / 'one_report' / 'report.html').read()
    said = [line for line in out.splitlines() if 'healthy threshold' in line and ' of 1 ' in line]
    assert len(said) == 1 and said[0] in page, (out, page)
    assert f"{summary['healthy_threshold']:.6g}" in said[0] and 'none (no --val_dir)' not in page
    percentile = f"healthy_percentile {float(row['healthy_percentile']):.1f}"
    assert percentile in out and percentile in page
    assert page.count('most anomalous') == 1 and 'least anomalous' not in page
    assert page.count(f'panels/{os.path.basename(png)}') == 1


def test_reference_of_older_logs_and_runs_without_a_hold_out(tmp_path):
    old = {'iter': 5, 'n_healthy': 2, 'val_scores': {'mean': [0.1, 0.3, 0.9]},
           'val_truth': [0, 0, 1]}
    assert healthy_scores(old, 'mean') == [0.1, 0.3]
    assert healthy_scores({**old, 'val_truth': [1, 0, 1]}, 'mean') is None
    assert healthy_scores({'iter': 5}, 'mean') is None
    ref = HealthyReference([0.3, 0.1], 95, [5], 'mean')
    assert ref.above([0.5, 0.1]).tolist() == [True, False]
    assert 'held out of training' in ref.describe()
    assert HealthyReference.of_run(str(tmp_path), [5], 'mean', 95) is None


def test_load_says_what_is_wrong_in_one_line(run, tmp_path):
    with pytest.raises(ConfigError, match='not a folder'):
        healthygan.load(tmp_path / 'absent')
    with pytest.raises(ConfigError, match='run_config.json'):
        healthygan.load(tmp_path)
    det = healthygan.load(run / 'models')
    with pytest.raises(DataError, match='cannot score a dict'):
        det.score({'x': 1})
    with pytest.raises(DataError, match=r'\[N, 1 or 3, 32, 32\]'):
        det.score(torch.zeros(1, 3, 64, 64))
    with pytest.raises(DataError, match='cannot read image'):
        (tmp_path / 'bad.png').write_bytes(b'not a png')
        det.score(str(tmp_path / 'bad.png'))
    with pytest.raises(ConfigError, match='score_variant'):
        healthygan.load(run / 'models', score_variant='max')


def shipped():
    if not os.path.isdir(SHIPPED):
        pytest.skip(f'{SHIPPED} is absent')
    return SHIPPED


def test_the_shipped_weights_score_a_radiograph_through_the_api_and_the_cli(tmp_path, capsys):
    det = healthygan.load(shipped())
    expected = read_csv(os.path.join(SHIPPED, 'expected_scores.csv'))
    for row in expected:
        r = det.score(os.path.join(ROOT, row['path']))
        assert r.score == pytest.approx(float(row['score']), abs=1e-6)
        assert r.healthy_percentile == pytest.approx(float(row['healthy_percentile']), abs=0.01)
    png = os.path.join(ROOT, expected[0]['path'])
    assert det.score_variant == 'ref_z'  # detector.json: the score chosen on validation
    same = ('--ensemble', str(len(det.members)), '--test_iters', str(det.members[-1]),
            '--score_variant', det.score_variant)
    cli.main(score_argv(SHIPPED, png, tmp_path / 'out', *same))
    rows = read_csv(tmp_path / 'out' / 'scores.csv')
    assert float(rows[0]['pred_score']) == pytest.approx(float(expected[0]['score']), abs=1e-6)
    assert 'the 95th percentile of healthy images' in capsys.readouterr().out
    values = np.asarray(Image.open(png).convert('L'), dtype=np.uint16) * 16
    dcm = write_dicom(tmp_path / 'dicom' / 'chest.dcm', values)
    cli.main(score_argv(SHIPPED, dcm, tmp_path / 'dcm', *same))
    rows = read_csv(tmp_path / 'dcm' / 'scores.csv')
    assert float(rows[0]['pred_score']) == pytest.approx(det.score(dcm).score, abs=1e-6)


def test_the_shipped_weights_as_one_detector_file_score_as_expected(tmp_path):
    # The folder (checkpoints, detector.json, healthy_pixels_*.pt, lung_prior.pt, aucp.jsonl)
    # saved as one file: the architecture, members, size, score, run and every fitted reference.
    det = healthygan.load(shipped())
    det.save(tmp_path / 'detector.pt')
    assert not [n for n in os.listdir(tmp_path) if n != 'detector.pt']  # written atomically
    saved = torch.load(tmp_path / 'detector.pt', weights_only=True)  # safe to load
    assert saved['members'] == det.members and saved['variant'] == 'ref_z'
    assert saved['image_size'] == det.image_size and saved['run_id'] == det.run_id
    one = healthygan.load(tmp_path / 'detector.pt')
    assert isinstance(one, torch.nn.Module) and one.members == det.members
    assert repr(one) == repr(det)
    for row in read_csv(os.path.join(SHIPPED, 'expected_scores.csv')):
        r = one.score(os.path.join(ROOT, row['path']))
        assert r.score == pytest.approx(float(row['score']), abs=1e-6)
        assert r.healthy_percentile == pytest.approx(float(row['healthy_percentile']), abs=0.01)
    x = build_transform(det.image_size)(Image.open(os.path.join(ROOT, row['path'])).convert('RGB'))
    out = one(x[None])  # forward: the score, the map and every variant
    assert out['score'].item() == pytest.approx(r.score, abs=1e-7)
    assert set(out['variants']) == set(r.variants) and out['map'].shape[-1] == det.image_size
    (tmp_path / 'not_a_detector.pt').write_bytes((tmp_path / 'detector.pt').read_bytes()[:100])
    with pytest.raises(Exception) as e:
        healthygan.load(tmp_path / 'not_a_detector.pt')
    assert 'not_a_detector.pt' in str(e.value)


def test_ship_weights_packages_a_run_that_loads_anywhere(run, tmp_path):
    from tools import ship_weights
    png = anomalous_png(run)
    out = tmp_path / 'shipped'
    ship_weights.main(['--run', str(run / 'models'), '--test_iters', '4', '--ensemble', '2',
                       '--out', str(out), '--images', png])
    assert sorted(os.listdir(out)) == ['2-G.ckpt', '4-G.ckpt', 'aucp.jsonl', 'detector.json',
                                       'detector_2-4_32px_mean.pt', 'expected_scores.csv',
                                       'lung_prior.pt', 'run_config.json']
    record = (out / 'run_config.json').read_text()
    assert str(run) not in record and str(tmp_path) not in record  # no machine's paths
    det = healthygan.load(out)  # detector.json: checkpoint 4, ensemble of 2
    assert det.members == [2, 4] and det.reference is not None
    ours = healthygan.load(run / 'models', test_iters=4, ensemble=2)
    expected = read_csv(out / 'expected_scores.csv')
    assert float(expected[0]['score']) == pytest.approx(ours.score(png).score, abs=1e-7)
    assert det.score(png).percentile == pytest.approx(ours.score(png).percentile)
    with pytest.raises(SystemExit, match='not empty'):
        ship_weights.main(['--run', str(run / 'models'), '--test_iters', '4', '--out', str(out),
                           '--images', png])


# ---------------------------------------------------------------------------------------------- #
#      ref_z: the residual referenced to the held-out healthy images, pixel by pixel (added)       #
# ---------------------------------------------------------------------------------------------- #

@pytest.fixture(scope='module')
def ref_run(tmp_path_factory):
    """A tiny run holding 3 of its 10 healthy images out of training: the healthy pixel
    reference's smallest size (each image's leave-one-out score needs a spread of 2 others)."""
    return train_tiny_run(tmp_path_factory.mktemp('refz'), 10, 6, 3, 0.3, seed=1)


def test_ref_z_builds_the_healthy_reference_once_and_scores_alike_everywhere(ref_run, capsys):
    from healthygan.detection import anomaly
    models, folder = ref_run / 'models', ref_run / 'syn' / 'test'
    argv = score_argv(models, folder, ref_run / 'first', '--score_variant', 'ref_z',
                      '--ensemble', '2')
    cli.main(argv)
    assert 'Building the healthy pixel reference from 3 held-out healthy images' in \
        capsys.readouterr().out
    saved = torch.load(models / 'healthy_pixels_2-4_32px.pt')
    assert saved['members'] == [2, 4] and saved['n'] == 3 and len(saved['healthy_scores']) == 3
    rows = read_csv(ref_run / 'first' / 'scores.csv')
    assert all(r['pred_score'] == r['score_ref_z'] for r in rows)
    summary = json.load(open(ref_run / 'first' / 'summary.json'))
    assert 'healthy_pixels_2-4_32px.pt' in summary['healthy_reference']['source']
    assert summary['healthy_reference']['n_healthy'] == 3
    # a second run reads the saved reference: nothing built, the same scores
    cli.main(argv[:argv.index('--result_dir') + 1] + [str(ref_run / 'again')]
             + argv[argv.index('--result_dir') + 2:])
    assert 'Building' not in capsys.readouterr().out
    assert [r['score_ref_z'] for r in read_csv(ref_run / 'again' / 'scores.csv')] == \
        [r['score_ref_z'] for r in rows]
    # the API reads the same file and gives each image the same score, from its map
    det = healthygan.load(models, ensemble=2, score_variant='ref_z')
    mu, scale = saved['mu'].double().numpy(), saved['scale'].double().numpy()
    for row in rows:
        r = det.score(row['path'])
        assert r.score == pytest.approx(float(row['pred_score']), abs=1e-6)
        assert r.score == pytest.approx(np.maximum((r.map - mu) / scale, 0).mean(), abs=1e-5)
        assert r.healthy_percentile == pytest.approx(float(row['healthy_percentile']), abs=0.01)
    assert anomaly.SCORE_VARIANTS['ref_z'].startswith('mean over pixels')
    # shipped weights carry the reference of their checkpoints and score alike
    from tools import ship_weights
    ship_weights.main(['--run', str(models), '--test_iters', '4', '--ensemble', '2',
                       '--score_variant', 'ref_z', '--out', str(ref_run / 'shipped'),
                       '--images', rows[0]['path']])
    assert 'healthy_pixels_2-4_32px.pt' in os.listdir(ref_run / 'shipped')
    shipped_det = healthygan.load(ref_run / 'shipped')
    assert shipped_det.score_variant == 'ref_z'
    assert shipped_det.score(rows[0]['path']).score == pytest.approx(
        float(rows[0]['pred_score']), abs=1e-6)
    with pytest.raises(SystemExit, match='build it first'):
        ship_weights.main(['--run', str(models), '--test_iters', '2', '--score_variant', 'ref_z',
                           '--out', str(ref_run / 'none'), '--images', rows[0]['path']])


def test_ref_z_in_testauc_reports_its_reference(ref_run):
    result = cli.main(['--mode', 'testAUC', '--dataset', 'Folder',
                       '--image_dir', str(ref_run / 'syn'), *tiny_flags(),
                       '--use_tensorboard', 'false', '--holdout_fraction', '0.3',
                       '--model_save_dir', str(ref_run / 'models'), '--test_iters', '4',
                       '--ensemble', '2', '--score_variant', 'ref_z', '--bootstrap', '0',
                       '--num_workers', '0', '--result_dir', str(ref_run / 'auc')])
    assert result['score_variant'] == 'ref_z' and 'ref_z' in result['variants']
    # the panels draw ref_z's map too: input, translation, mask, map, its excess over the
    # healthy images, true lesion (the synthetic set has masks); the report says what it is
    panel = next((ref_run / 'auc' / 'panels').rglob('*.png'))
    with Image.open(panel) as p:
        assert p.width == 6 * (p.height - 28)  # square tiles, 14 px of labels and of caption
    assert "ref_z's map" in (ref_run / 'auc' / 'report.html').read_text()
    assert result['healthy_pixel_reference'].startswith('3 healthy images held out')
    rows = read_csv(ref_run / 'auc' / 'scores.csv')
    from healthygan.reports import statistics
    assert result['image_AUROC'] == pytest.approx(statistics.image_metrics(
        [int(r['gt_label']) for r in rows], [float(r['score_ref_z']) for r in rows])['image_AUROC'])


def test_ref_z_says_what_it_needs_in_one_line(ref_run, run, trained, tmp_path, capsys):
    def refused(argv, *words):
        with pytest.raises(SystemExit) as e:
            cli.main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.count('\n') == 1, err
        for w in words:
            assert w in err, err
    folder = ref_run / 'syn' / 'test'
    # a run without a hold-out (the original's training) has no healthy images to refer to
    refused(eval_args(trained, trained / 'syn', 'refz', '--score_variant', 'ref_z'),
            '--score_variant ref_z', '--holdout_fraction > 0')
    # two held-out healthy images are too few
    refused(score_argv(run / 'models', folder, tmp_path / 'two', '--score_variant', 'ref_z'),
            'held out 2 healthy', 'at least 3')
    # a training log without ref_z scores (a run logged before them) cannot rank checkpoints
    os.makedirs(tmp_path / 'old_log')
    for name in ('2-G.ckpt', '4-G.ckpt', '2-D.ckpt', '4-D.ckpt', 'run_config.json'):
        (tmp_path / 'old_log' / name).write_bytes((ref_run / 'models' / name).read_bytes())
    with open(ref_run / 'models' / 'aucp.jsonl') as f, \
            open(tmp_path / 'old_log' / 'aucp.jsonl', 'w') as out:
        for line in f:
            record = json.loads(line)
            for key in ('AUCp_by_variant', 'healthy_scores'):
                record[key].pop('ref_z')
            out.write(json.dumps(record) + '\n')
    refused(score_argv(tmp_path / 'old_log', folder, tmp_path / 'best', '--score_variant',
                       'ref_z', '--test_iters', 'best_aucp'), 'best_aucp', 'ref_z', 'aucp.jsonl')
    # the API builds nothing: it names the command that does
    with pytest.raises(ConfigError, match='build it once with'):
        healthygan.load(ref_run / 'models', test_iters=2, score_variant='ref_z')
    # a reference file of other checkpoints is refused by name
    os.makedirs(tmp_path / 'copy')
    for name in ('2-G.ckpt', '4-G.ckpt', '2-D.ckpt', '4-D.ckpt', 'run_config.json'):
        (tmp_path / 'copy' / name).write_bytes((ref_run / 'models' / name).read_bytes())
    (tmp_path / 'copy' / 'healthy_pixels_4_32px.pt').write_bytes(
        (ref_run / 'models' / 'healthy_pixels_2-4_32px.pt').read_bytes())
    with pytest.raises(ConfigError, match='remove it'):
        healthygan.load(tmp_path / 'copy', test_iters=4, score_variant='ref_z')


def test_aucp_logs_ref_z_against_each_checkpoints_own_healthy_pixel_reference(ref_run,
                                                                              tmp_path):
    from healthygan.detection.selection import read_aucp_log, resolve_iters
    records = read_aucp_log(ref_run / 'models')
    assert sorted(records) == [2, 4]
    for r in records.values():  # the keys logged before ref_z stay
        assert {'iter', 'score_variant', 'n_healthy', 'n_mixed', 'AUCp', 'AUCp_by_variant',
                'healthy_scores'} <= set(r)
        assert 'ref_z' in r['AUCp_by_variant'] and 0 <= r['AUCp_by_variant']['ref_z'] <= 1
        assert len(r['healthy_scores']['ref_z']) == r['n_healthy'] == 3
    # the held-out healthy images' logged ref_z is what testing's reference of checkpoint 4
    # gives them (each against the others), built in a copy so the run's folder stays as it is
    os.makedirs(tmp_path / 'models')
    for name in ('2-G.ckpt', '4-G.ckpt', '2-D.ckpt', '4-D.ckpt', 'run_config.json',
                 'aucp.jsonl'):
        (tmp_path / 'models' / name).write_bytes((ref_run / 'models' / name).read_bytes())
    cli.main(score_argv(tmp_path / 'models', ref_run / 'syn' / 'test', tmp_path / 'out',
                        '--score_variant', 'ref_z', '--test_iters', '4'))
    built = torch.load(tmp_path / 'models' / 'healthy_pixels_4_32px.pt')
    assert records[4]['healthy_scores']['ref_z'] == pytest.approx(built['healthy_scores'],
                                                                  rel=1e-5, abs=1e-6)
    # so best_aucp ranks checkpoints by ref_z as by any other variant (ties: the later one)
    by = {i: r['AUCp_by_variant']['ref_z'] for i, r in records.items()}
    best = max(by, key=lambda i: (by[i], i))
    assert resolve_iters('best_aucp', str(ref_run / 'models'), '--test_iters', 'ref_z') == best


def test_a_new_run_never_scores_against_the_old_runs_healthy_pixel_reference(tmp_path, capsys):
    # The stale-reference case: a run replaced with --overwrite true has checkpoints of the same
    # numbers; the old run's reference of them must not be read as the new one's.
    run_dir = train_tiny_run(tmp_path, 10, 6, 3, 0.3, 1)
    models, folder = run_dir / 'models', run_dir / 'syn' / 'test'
    def argv(out):
        return score_argv(models, folder, tmp_path / out, '--score_variant', 'ref_z',
                          '--ensemble', '2')
    cli.main(argv('old'))
    old_id = json.load(open(models / 'run_config.json'))['run_id']
    assert torch.load(models / 'healthy_pixels_2-4_32px.pt')['run_id'] == old_id
    train_tiny_run(run_dir, 10, 6, 3, 0.3, 1, '--overwrite', 'true')
    new_id = json.load(open(models / 'run_config.json'))['run_id']
    assert new_id != old_id
    moved = [d for d in os.listdir(models) if d.startswith('replaced-')]
    assert [f for d in moved for f in os.listdir(models / d) if f.startswith('healthy_pixels')]
    assert not (models / 'healthy_pixels_2-4_32px.pt').exists()
    capsys.readouterr()
    cli.main(argv('new'))
    assert 'Building the healthy pixel reference' in capsys.readouterr().out
    assert torch.load(models / 'healthy_pixels_2-4_32px.pt')['run_id'] == new_id
    # the old run's reference put back by hand is refused, naming both runs
    old = models / moved[0] / 'healthy_pixels_2-4_32px.pt'
    (models / 'healthy_pixels_2-4_32px.pt').write_bytes(old.read_bytes())
    with pytest.raises(SystemExit) as e:
        cli.main(argv('stale'))
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count('\n') == 1 and old_id in err and new_id in err, err
    with pytest.raises(ConfigError, match='another run'):
        healthygan.load(models, ensemble=2, score_variant='ref_z')


def test_a_resume_from_an_earlier_set_moves_the_references_of_later_sets_aside(tmp_path):
    from healthygan.training.checkpoint_sets import later_files
    for name in ('2-G.ckpt', '4-G.ckpt', 'lung_prior.pt', 'healthy_pixels_2_32px.pt',
                 'healthy_pixels_2-4_32px.pt', 'healthy_pixels_4_32px.pt'):
        (tmp_path / name).write_bytes(b'')
    assert later_files(tmp_path, 2) == ['4-G.ckpt', 'healthy_pixels_2-4_32px.pt',
                                        'healthy_pixels_4_32px.pt']


def test_the_weights_in_the_package_load_by_name_from_any_folder(tmp_path, monkeypatch):
    """healthygan.load('nih-cxr-mini') is the detector of pretrained/nih-cxr-mini, shipped in
    the package (healthygan/weights), with the same scores, wherever it is called from."""
    expected = read_csv(os.path.join(shipped(), 'expected_scores.csv'))
    monkeypatch.chdir(tmp_path)
    det = healthygan.load('nih-cxr-mini')
    assert det.members == healthygan.load(SHIPPED).members and det.variant == 'ref_z'
    for row in expected:
        r = det.score(os.path.join(ROOT, row['path']))
        assert r.pred_score == pytest.approx(float(row['score']), abs=1e-6)
        assert r.healthy_percentile == pytest.approx(float(row['healthy_percentile']), abs=0.01)
    with pytest.raises(ConfigError, match=r'not a folder.*shipped in the package \(nih-cxr-mini'):
        healthygan.load('nih-cxr-maxi')
