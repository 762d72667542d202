"""Evaluation (healthygan/reports/evaluation.py): the generator at test time (per-image statistics, as
the original), thresholds from a validation set, and --mode score."""
import os
import shutil

import pytest
import torch
from PIL import Image

import main as cli
from conftest import (assert_report_references_only_existing_files, eval_args, read_csv,
                      tiny_solver)


def make_solver(tmp_path):
    return tiny_solver('--model_save_dir', str(tmp_path))


def scores(solver, x):
    from metrics import anomaly_score
    x_hat, _, _ = solver.translate(x)
    return anomaly_score(x, x_hat)


def test_test_time_uses_per_image_statistics_not_the_stored_running_ones(tmp_path):
    torch.manual_seed(0)
    solver = make_solver(tmp_path)
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    reference = scores(solver, x)

    # A checkpoint whose stored running statistics are absurd must score exactly the same.
    state = solver.G.state_dict()
    for k in state:
        if k.endswith('running_mean'):
            state[k] = torch.full_like(state[k], 50.0)
        if k.endswith('running_var'):
            state[k] = torch.full_like(state[k], 1e4)
    torch.save(state, tmp_path / '5-G.ckpt')
    solver2 = make_solver(tmp_path)
    solver2.restore_model(5, load_D=False)
    assert torch.allclose(scores(solver2, x), reference, atol=1e-6)

    # ... while eval() (running statistics) would change them: the test above is not vacuous.
    solver2.G.eval()
    with torch.no_grad():
        from healthygan.model.losses import generate
        from metrics import anomaly_score
        x_hat_eval, _, _ = generate(solver2.G, x)
    assert not torch.allclose(anomaly_score(x, x_hat_eval), reference, atol=1e-3)


def test_an_images_score_does_not_depend_on_its_batch(tmp_path):
    torch.manual_seed(1)
    solver = make_solver(tmp_path)
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    together = scores(solver, x)
    alone = torch.cat([scores(solver, x[k:k + 1]) for k in range(4)])
    assert torch.allclose(together, alone, atol=1e-6)


def test_threshold_from_a_validation_set(trained, capsys):
    # A copy of the test images is the test set by content: refused, as the test folder is.
    copy = trained / 'val_copy'
    shutil.copytree(trained / 'syn' / 'test', copy, dirs_exist_ok=True)
    with pytest.raises(SystemExit) as e:
        cli.main(eval_args(trained, trained / 'syn', 'copy', '--val_dir', str(copy),
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
    result = cli.main(eval_args(trained, trained / 'syn', 'val_results', '--val_dir', str(val),
                                '--report', 'false', '--bootstrap', '0'))
    assert result['threshold_source'].startswith(f'validation set {val}')
    assert result['validation']['n_normal'] == 8
    assert not os.path.exists(trained / 'val_results' / 'report.html')
    assert os.path.isdir(trained / 'val_results' / 'maps')  # maps are written regardless

    # the test images themselves cannot serve as the validation set
    with pytest.raises(SystemExit) as e:
        cli.main(eval_args(trained, trained / 'syn', 'bad',
                           '--val_dir', str(trained / 'syn' / 'test'), '--report', 'false'))
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
    result = cli.main(eval_args(trained, trained / 'missing', 'scored', '--mode', 'score',
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
    cli.main(eval_args(trained, trained / 'missing', 'new/out', '--mode', 'score', '--score_dir',
                       str(folder), '--report', 'false'))
    assert len(read_csv(folder / 'out' / 'scores.csv')) == 3

    with pytest.raises(SystemExit) as e:
        cli.main(eval_args(trained, trained / 'syn', 'x', '--mode', 'score'))
    assert e.value.code == 2 and '--score_dir' in capsys.readouterr().err

    # the lung score's region was saved with the run: no training image is needed for it
    cli.main(eval_args(trained, trained / 'missing', 'lung', '--mode', 'score', '--score_dir',
                       str(folder), '--score_variant', 'lung', '--report', 'false'))
    lung = {os.path.relpath(r['path'], folder): r for r in read_csv(trained / 'lung' /
                                                                     'scores.csv')}
    assert float(lung['n0.png']['pred_score']) == pytest.approx(
        test_lung['normal_00000.png'], abs=1e-6)
