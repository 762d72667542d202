"""tools/score_study.py: the validation table from labelled images, on a tiny trained run."""
import csv
import json
import os

import numpy as np
import pytest

import main as cli
from conftest import tiny_args, write_image
from test_selection import labelled_layout
from tools import score_study


def test_healthy_z_is_the_excess_over_the_healthy_images_in_their_spread():
    ref = np.stack([np.full((2, 2), 1.0), np.full((2, 2), 3.0)])  # mu 2, sd 1 everywhere
    z = score_study.healthy_z(np.full((1, 2, 2), 4.0), ref)
    assert np.allclose(z, (4 - 2) / (1 + 1))  # sd plus the median sd


def test_the_best_statistic_is_turned_the_way_it_separates():
    labels = np.array([0, 0, 1, 1])
    stats = np.array([[0.5, 1.0, 4.0], [0.4, 2.0, 3.0], [0.6, 3.0, 2.0], [0.5, 4.0, 1.0]])
    name, values, auroc = score_study.best_statistic(labels, stats)
    # contrast and sharpness both separate perfectly; sharpness only turned round
    assert auroc == 1.0 and name == 'contrast' and np.array_equal(values, stats[:, 1])
    name, values, auroc = score_study.best_statistic(labels, stats[:, [0, 2, 2]])
    assert name == 'contrast' and np.array_equal(values, -stats[:, 2])


@pytest.mark.slow
def test_the_table_scores_validation_and_hold_out_with_the_cli_translations(tmp_path, capsys):
    root, truth = labelled_layout(tmp_path / 'data')
    rng = np.random.default_rng(3)
    for sub, n, bright in (('normal', 3, 0), ('anomalous', 3, 100)):
        for k in range(n):
            write_image(str(tmp_path / 'val' / sub / f'{sub}_{k}.png'), rng, bright=bright)
    run = tiny_args(tmp_path, root, '--holdout_fraction', '0.34', '--holdout_labels',
                    str(root / 'mixed_truth.csv'), '--use_tensorboard', 'false')
    cli.main(['--mode', 'train', *run, '--num_iters', '4', '--model_save_step', '2',
              '--sample_step', '100'])
    models = str(tmp_path / 'run' / 'models')
    score_study.main_(['--model_save_dir', models, '--val_dir', str(tmp_path / 'val'),
                       '--ensemble', '2', '--bootstrap', '20'])
    out = capsys.readouterr().out
    assert 'Validation AUROC' in out and 'residual AUROC' in out
    t = json.load(open(os.path.join(models, 'validation_images.json')))
    assert [r['iter'] for r in t['checkpoints']] == [2, 4]
    assert t['n_normal'] + t['n_anomalous'] == 6 + 3 and t['n_reference'] == 3
    assert t['checkpoints'][0]['ensemble'] == {}  # fewer than 2 checkpoints up to 2
    cell = t['checkpoints'][1]['ensemble']['mean']
    assert 0 <= cell['AUROC'] <= 1 and cell['ci95'][0] <= cell['AUROC'] <= cell['ci95'][1]
    assert t['last_ensemble'] == [2, 4] and 'disagreement' in t['residual']
    d, lo, hi = t['residual']['ref_z']['lead_over_best_statistic']
    assert lo <= d <= hi and t['best_statistic']['AUROC'] >= 0.5
    assert 'Lead over the best of them' in out
    with open(os.path.join(models, 'validation_images_scores.csv')) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 9 and {'path', 'gt_label', 'ref_z', 'mean'} <= set(rows[0])
    assert sorted(int(r['gt_label']) for r in rows).count(1) == t['n_anomalous']

    # The table's translations are the CLI's: testAUC's mean score of the test images, again.
    cli.main(['--mode', 'testAUC', *run, '--test_iters', '4', '--report', 'false',
              '--bootstrap', '0'])
    with open(tmp_path / 'run' / 'results' / 'scores.csv') as f:
        rows = list(csv.DictReader(f))
    config = score_study.run_config(models)
    config.batch_size = 2
    solver = score_study.Solver(config)
    solver.restore_model(4, load_D=False)
    maps, residuals, masks, _ = score_study.translate_all(
        solver, [r['path'] for r in rows], [solver.G.state_dict()])
    scores = score_study.study_scores(maps, residuals, masks, maps, None)
    assert np.allclose(scores['mean'], [float(r['score_mean']) for r in rows], atol=1e-3)
    assert np.allclose(scores['masked'], [float(r['score_masked']) for r in rows], atol=1e-3)


def test_a_run_without_hold_out_is_refused_in_one_line(tmp_path, folder_dataset):
    run = tiny_args(tmp_path, folder_dataset, '--use_tensorboard', 'false')
    cli.main(['--mode', 'train', *run, '--num_iters', '2', '--model_save_step', '2',
              '--sample_step', '100'])
    with pytest.raises(SystemExit, match='without a hold-out'):
        score_study.main_(['--model_save_dir', str(tmp_path / 'run' / 'models'),
                           '--val_dir', str(folder_dataset / 'test')])


def test_the_shipped_validation_radiographs_are_of_patients_in_no_other_folder():
    from conftest import NIH_MINI
    import data_loader

    def patients(sub):
        return {os.path.basename(p).split('_')[1] for p in
                data_loader.list_images(os.path.join(NIH_MINI, sub))}
    normal, anomalous = (data_loader.list_images(os.path.join(NIH_MINI, 'validation', s))
                         for s in ('normal', 'anomalous'))
    assert (len(normal), len(anomalous)) == (27, 240)
    validation = patients('validation')
    for other in ('healthy', 'mixed', 'test'):
        assert not validation & patients(other), other
