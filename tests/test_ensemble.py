"""--ensemble N: a snapshot ensemble of the last N checkpoints in testAUC and score modes."""
import csv
import json

import numpy as np
import pytest

import main as cli
from conftest import tiny_args


def read_scores(path):
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return {r['path']: {k[len('score_'):]: float(v) for k, v in r.items() if k.startswith('score_')}
            for r in rows}


def test_ensemble_scores_are_the_mean_of_the_members(tmp_path, folder_dataset):
    cli.main(tiny_args(tmp_path, folder_dataset, '--num_iters', '6', '--model_save_step', '2',
                       '--use_tensorboard', 'false'))
    single = {}
    for it in (2, 4, 6):
        out = tmp_path / f'single{it}'
        cli.main(tiny_args(tmp_path, folder_dataset, '--mode', 'testAUC', '--test_iters', str(it),
                           '--result_dir', str(out), '--report', 'false'))
        single[it] = read_scores(out / 'scores.csv')
    out = tmp_path / 'ens'
    result = cli.main(tiny_args(tmp_path, folder_dataset, '--mode', 'testAUC', '--test_iters',
                                'latest', '--ensemble', '3', '--result_dir', str(out),
                                '--report', 'false'))
    ens = read_scores(out / 'scores.csv')
    assert set(ens) == set(single[6]) and len(ens) == 8
    for path, variants in ens.items():
        assert set(variants) == set(single[6][path])
        for v, value in variants.items():
            expected = np.mean([single[it][path][v] for it in (2, 4, 6)])
            assert value == pytest.approx(expected, rel=1e-5, abs=1e-7), (path, v)
    # the members differ, so the mean is not any one of them (the test is not vacuous)
    first = next(iter(ens))
    assert single[2][first]['mean'] != pytest.approx(single[6][first]['mean'], rel=1e-4)
    saved = json.load(open(out / 'metrics.json'))
    assert saved['iteration'] == 6 and result['iteration'] == 6
    assert [p.rsplit('/', 1)[-1] for p in saved['ensemble']] == ['2-G.ckpt', '4-G.ckpt', '6-G.ckpt']
    # without --ensemble the result has no such entry: the original's single checkpoint
    assert 'ensemble' not in json.load(open(tmp_path / 'single6' / 'metrics.json'))

    # --test_iters 4 --ensemble 2: the members are 2 and 4, never a later checkpoint
    cli.main(tiny_args(tmp_path, folder_dataset, '--mode', 'testAUC', '--test_iters', '4',
                       '--ensemble', '2', '--result_dir', str(tmp_path / 'ens4'),
                       '--report', 'false'))
    ens4 = read_scores(tmp_path / 'ens4' / 'scores.csv')
    assert ens4[first]['mean'] == pytest.approx(
        (single[2][first]['mean'] + single[4][first]['mean']) / 2, rel=1e-5)

    # score mode (a folder of images) averages the same way
    cli.main(tiny_args(tmp_path, folder_dataset, '--mode', 'score', '--test_iters', 'latest',
                       '--ensemble', '3', '--score_dir', str(folder_dataset / 'test'),
                       '--result_dir', str(tmp_path / 'score'), '--report', 'false'))
    summary = json.load(open(tmp_path / 'score' / 'summary.json'))
    assert len(summary['ensemble']) == 3
    with open(tmp_path / 'score' / 'scores.csv') as f:
        scored = {r['path']: float(r['pred_score']) for r in csv.DictReader(f)}
    for path, value in scored.items():
        assert value == pytest.approx(ens[path]['mean'], rel=1e-5)


def test_ensemble_larger_than_the_checkpoints_is_a_clear_error(tmp_path, folder_dataset, capsys):
    cli.main(tiny_args(tmp_path, folder_dataset, '--num_iters', '4', '--model_save_step', '2',
                       '--use_tensorboard', 'false'))
    with pytest.raises(SystemExit) as e:
        cli.main(tiny_args(tmp_path, folder_dataset, '--mode', 'testAUC', '--test_iters', '4',
                           '--ensemble', '3'))
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert '--ensemble 3: only 2 checkpoint(s)' in err and '--model_save_step' in err
    with pytest.raises(SystemExit):
        cli.main(tiny_args(tmp_path, folder_dataset, '--mode', 'testAUC', '--ensemble', '0'))
    assert '--ensemble' in capsys.readouterr().err
