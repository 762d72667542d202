"""The real CLI through main(argv): train, resume, test, testAUC, both dataset layouts, errors."""
import json
import os
import pickle

import pytest
import torch

import main as cli
from conftest import tiny_args

ORIGINAL_DEFAULTS = dict(
    image_size=128, g_conv_dim=64, d_conv_dim=64, g_repeat_num=6, d_repeat_num=6, lambda_cls=0,
    lambda_rec=1, lambda_gp=10, lambda_id=1, lambda_mask=0.1, lambda_msmall=1, lambda_mzerone=1,
    mask_loss_mode='sum', dataset='Covid', batch_size=16, num_iters=200000,
    num_iters_decay=100000, g_lr=1e-4, d_lr=1e-4, n_critic=2, beta1=0.5, beta2=0.999,
    resume_iters=None, test_iters=200000, num_workers=12, mode='train', use_tensorboard=True,
    image_dir='datasets/covid', log_dir='covid/logs', model_save_dir='covid/models',
    sample_dir='covid/samples', result_dir='covid/results', log_step=10, sample_step=1000,
    model_save_step=10000, lr_update_step=1000)


def test_every_original_flag_has_its_default():
    config = cli.build_parser().parse_args([])
    for name, default in ORIGINAL_DEFAULTS.items():
        assert getattr(config, name) == default, name
    assert config.lr_schedule == 'original' and config.device == 'auto'


@pytest.mark.parametrize('value,expected', [('true', True), ('False', False), ('TRUE', True)])
def test_booleans_accept_true_false(value, expected):
    assert cli.build_parser().parse_args(['--use_tensorboard', value]).use_tensorboard is expected


@pytest.mark.parametrize('value', ['yes', '1', '', 'tru'])
def test_booleans_refuse_anything_else(value, capsys):
    # the original counted '' and 'tru' as true and 'yes' as false
    with pytest.raises(SystemExit) as e:
        cli.build_parser().parse_args(['--use_tensorboard', value])
    assert e.value.code == 2
    assert 'expected true or false' in capsys.readouterr().err


def test_bad_architecture_flags_fail_before_any_work(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(['--image_size', '32', '--d_repeat_num', '6', '--image_dir', str(tmp_path)])
    assert 'too small for --d_repeat_num 6' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(['--image_size', '30', '--image_dir', str(tmp_path)])
    assert 'multiple of 4' in capsys.readouterr().err


def test_missing_dataset_folder_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(tiny_args(tmp_path, tmp_path / 'nowhere'))
    assert e.value.code == 2
    assert 'nowhere does not exist' in capsys.readouterr().err


def test_unavailable_device_is_a_clear_error(tmp_path, folder_dataset, capsys):
    if torch.cuda.is_available():
        pytest.skip('CUDA is available here')
    with pytest.raises(SystemExit):
        cli.main(tiny_args(tmp_path, folder_dataset, '--device', 'cuda'))
    assert 'CUDA is not available' in capsys.readouterr().err


def test_train_then_testauc_on_the_folder_layout(tmp_path, folder_dataset):
    run = tmp_path / 'run'
    cli.main(tiny_args(tmp_path, folder_dataset, '--num_iters', '7', '--model_save_step', '3',
                       '--sample_step', '3', '--log_step', '2'))
    models = sorted(os.listdir(run / 'models'))
    # every model_save_step, plus the final weights (7 is not a multiple of 3)
    assert models == ['3-D.ckpt', '3-G.ckpt', '3-state.pt', '6-D.ckpt', '6-G.ckpt', '6-state.pt',
                      '7-D.ckpt', '7-G.ckpt', '7-state.pt', 'lung_prior.pt', 'run_config.json']
    # bare state dicts with the network's keys, loadable with weights_only
    state = torch.load(run / 'models' / '7-G.ckpt', weights_only=True)
    assert 'main.0.weight' in state and 'main.1.running_mean' in state
    assert sorted(os.listdir(run / 'samples')) == ['3-images.jpg', '6-images.jpg']
    stats = [json.loads(line) for line in open(run / 'logs' / 'stats.jsonl')]
    assert [s['iter'] for s in stats] == [2, 4, 6]
    assert {'D/loss_real', 'D/loss_fake', 'D/loss_gp', 'G/loss_fake', 'G/loss_rec',
            'G/loss_fake_id', 'G/loss_id', 'G/loss_mask', 'Mask/OT_zo'} <= set(stats[-1])
    assert any(f.startswith('events.out.tfevents') for f in os.listdir(run / 'logs'))
    meta = json.load(open(run / 'models' / 'run_config.json'))
    assert meta['config']['seed'] == 0 and 'torch' in meta['versions']

    result = cli.main(tiny_args(tmp_path, folder_dataset, '--mode', 'testAUC',
                                '--test_iters', '7', '--batch_size', '3'))
    saved = json.load(open(run / 'results' / 'metrics.json'))
    assert saved['image_AUROC'] == result['image_AUROC']
    assert 0.0 <= saved['image_AUROC'] <= 1.0
    assert {'sensitivity', 'specificity', 'threshold', 'threshold_source'} <= set(saved)
    rows = open(run / 'results' / 'scores.csv').read().splitlines()
    assert rows[0].startswith('path,gt_label,pred_score,anomaly_map,') and len(rows) == 1 + 8
    assert sum(r.split(',')[1] == '1' for r in rows[1:]) == 4


def test_sample_grid_layout(tmp_path, folder_dataset):
    from PIL import Image
    cli.main(tiny_args(tmp_path, folder_dataset, '--num_iters', '2', '--sample_step', '2'))
    grid = Image.open(tmp_path / 'run' / 'samples' / '2-images.jpg')
    # one row per sample (batch 2); 8 columns: x, raw, x_hat, mask for a mixed and a healthy image
    assert grid.size == (8 * 32, 2 * 32)


def test_training_is_reproducible_with_a_seed(tmp_path, folder_dataset):
    args = ['--num_iters', '4', '--model_save_step', '4', '--use_tensorboard', 'false']
    cli.main(tiny_args(tmp_path / 'a', folder_dataset, *args))
    cli.main(tiny_args(tmp_path / 'b', folder_dataset, *args))
    a = torch.load(tmp_path / 'a' / 'run' / 'models' / '4-G.ckpt', weights_only=True)
    b = torch.load(tmp_path / 'b' / 'run' / 'models' / '4-G.ckpt', weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_continues_from_a_checkpoint(tmp_path, folder_dataset, capsys):
    cli.main(tiny_args(tmp_path, folder_dataset, '--num_iters', '4', '--model_save_step', '2'))
    cli.main(tiny_args(tmp_path, folder_dataset, '--num_iters', '6', '--model_save_step', '2',
                       '--resume_iters', 'latest'))
    out = capsys.readouterr().out
    assert 'Loading the trained models from step 4' in out
    assert os.path.exists(tmp_path / 'run' / 'models' / '6-G.ckpt')
    # the first run's record stays; the resumed run adds its own
    first = json.load(open(tmp_path / 'run' / 'models' / 'run_config.json'))
    resumed = json.load(open(tmp_path / 'run' / 'models' / 'run_config-resume4.json'))
    assert first['config']['resume_iters'] is None and resumed['config']['resume_iters'] == 'latest'


def test_test_iters_missing_lists_the_available_checkpoints(tmp_path, folder_dataset, capsys):
    cli.main(tiny_args(tmp_path, folder_dataset, '--num_iters', '2', '--model_save_step', '1'))
    with pytest.raises(SystemExit) as e:
        cli.main(tiny_args(tmp_path, folder_dataset, '--mode', 'testAUC', '--test_iters', '100'))
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert '100-G.ckpt does not exist' in err and 'Checkpoints in' in err and '1, 2' in err


def test_checkpoint_from_another_architecture_is_a_clear_error(tmp_path, folder_dataset, capsys):
    cli.main(tiny_args(tmp_path, folder_dataset, '--num_iters', '1', '--model_save_step', '1'))
    with pytest.raises(SystemExit):
        cli.main(tiny_args(tmp_path, folder_dataset, '--mode', 'testAUC', '--test_iters', '1',
                           '--g_conv_dim', '8'))
    err = capsys.readouterr().err
    assert 'does not fit the Generator' in err and 'shape mismatch' in err
    assert '--g_conv_dim 4 (this run: 8)' in err


def test_truncated_checkpoint_is_a_clear_error(tmp_path, folder_dataset, capsys):
    cli.main(tiny_args(tmp_path, folder_dataset, '--num_iters', '1', '--model_save_step', '1'))
    path = tmp_path / 'run' / 'models' / '1-G.ckpt'
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(SystemExit):
        cli.main(tiny_args(tmp_path, folder_dataset, '--mode', 'testAUC', '--test_iters', '1'))
    assert 'cannot read checkpoint' in capsys.readouterr().err


def test_test_mode_writes_translation_grids(tmp_path, folder_dataset):
    cli.main(tiny_args(tmp_path, folder_dataset, '--num_iters', '1', '--model_save_step', '1'))
    cli.main(tiny_args(tmp_path, folder_dataset, '--mode', 'test', '--test_iters', '1',
                       '--batch_size', '3'))
    grids = sorted(os.listdir(tmp_path / 'run' / 'results'))
    assert grids == ['1-1-images.jpg', '1-2-images.jpg']  # max(4, 4) test pairs / 3


def test_covid_list_layout_train_and_testauc(tmp_path, covid_dataset):
    args = ['--list_dir', str(covid_dataset / 'lists')]
    cli.main(tiny_args(tmp_path, covid_dataset / 'images', '--num_iters', '2',
                       '--model_save_step', '2', *args, dataset='Covid'))
    result = cli.main(tiny_args(tmp_path, covid_dataset / 'images', '--mode', 'testAUC',
                                '--test_iters', '2', *args, dataset='Covid'))
    assert result['n_normal'] == 3 and result['n_anomalous'] == 3


def test_covid_reads_data_covid_relative_to_the_working_directory(tmp_path, covid_dataset,
                                                                    monkeypatch):
    os.makedirs(tmp_path / 'data')
    os.rename(covid_dataset / 'lists', tmp_path / 'data' / 'covid')
    monkeypatch.chdir(tmp_path)
    cli.main(tiny_args(tmp_path, covid_dataset / 'images', '--num_iters', '1',
                       '--model_save_step', '1', dataset='Covid'))
    assert os.path.exists(tmp_path / 'run' / 'models' / '1-G.ckpt')


def test_covid_missing_images_are_counted_before_training(tmp_path, covid_dataset, capsys):
    os.remove(covid_dataset / 'images' / 'train' / 'neg_0.png')
    with pytest.raises(SystemExit):
        cli.main(tiny_args(tmp_path, covid_dataset / 'images', '--num_iters', '1',
                           '--list_dir', str(covid_dataset / 'lists'), dataset='Covid'))
    err = capsys.readouterr().err
    assert '1 of 5 healthy images are missing' in err and 'neg_0.png' in err


def test_covid_refuses_a_pickle_that_would_run_code(tmp_path, covid_dataset, capsys):
    marker = tmp_path / 'pwned'

    class Evil:
        def __reduce__(self):
            return (os.system, (f'touch {marker}',))
    with open(covid_dataset / 'lists' / 'train_pos.pickle', 'wb') as f:
        pickle.dump(Evil(), f)
    with pytest.raises(SystemExit):
        cli.main(tiny_args(tmp_path, covid_dataset / 'images', '--num_iters', '1',
                           '--list_dir', str(covid_dataset / 'lists'), dataset='Covid'))
    assert 'refusing to load' in capsys.readouterr().err
    assert not marker.exists()


def test_an_empty_split_list_is_a_clear_error(tmp_path, covid_dataset, capsys):
    with open(covid_dataset / 'lists' / 'train_neg.pickle', 'wb') as f:
        pickle.dump([], f)
    with pytest.raises(SystemExit):
        cli.main(tiny_args(tmp_path, covid_dataset / 'images', '--num_iters', '1',
                           '--list_dir', str(covid_dataset / 'lists'), dataset='Covid'))
    assert 'the healthy set is empty' in capsys.readouterr().err


def test_an_empty_folder_is_a_clear_error(tmp_path, folder_dataset, capsys):
    for f in (folder_dataset / 'mixed').iterdir():
        f.unlink()
    with pytest.raises(SystemExit):
        cli.main(tiny_args(tmp_path, folder_dataset, '--num_iters', '1'))
    err = capsys.readouterr().err
    assert 'no images' in err and 'mixed' in err


@pytest.mark.parametrize('flag,replacement', [('--g_ema_decay', '--ensemble N'),
                                              ('--test_ema', '--ensemble N'),
                                              ('--diff_augment', 'train without it'),
                                              ('--augment', 'flips images as the original'),
                                              ('--aug_strength', 'flips images as the original')])
def test_a_removed_flag_is_one_line_naming_what_replaced_it(flag, replacement, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([f'{flag}=1', '--mode', 'testAUC'])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count('\n') == 1
    assert f'{flag} was removed' in err and replacement in err and 'docs/results.md' in err


def test_score_mode_writes_beside_the_run_not_into_covid_results(tmp_path, monkeypatch):
    # Score mode without --result_dir wrote into the original's testAUC folder, covid/results,
    # whatever the images: it now writes scores/ beside the run's checkpoint folder.
    import shutil
    from healthygan.cli import score_result_dir
    shipped = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           'pretrained', 'nih-cxr-mini')
    image = os.path.join(os.path.dirname(shipped), os.pardir, 'datasets', 'nih-cxr-mini', 'test',
                         'normal', 'nih_00001362_001.png')
    os.makedirs(tmp_path / 'run' / 'models')
    for name in ('8000-G.ckpt', 'run_config.json'):
        shutil.copy(os.path.join(shipped, name), tmp_path / 'run' / 'models' / name)
    monkeypatch.chdir(tmp_path)
    cli.main(['--mode', 'score', '--model_save_dir', 'run/models', '--test_iters', '8000',
              '--score_dir', os.path.abspath(image), '--device', 'cpu', '--num_workers', '0',
              '--report', 'false'])
    assert os.path.isfile(tmp_path / 'run' / 'scores' / 'scores.csv')
    assert not os.path.exists(tmp_path / 'covid')
    assert score_result_dir('my_run/models') == os.path.join('my_run', 'scores')
    assert score_result_dir('models') == 'scores'
    # --result_dir given, and testAUC's default, stay as they were
    assert cli.build_parser().parse_args(['--mode', 'testAUC']).result_dir == 'covid/results'
