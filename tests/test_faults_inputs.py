"""Faults that were silent or misleading (issue 30), each on a tiny run through the real CLI:
a wrong-but-possible input gets a warning that says so, a bad one one line that names the file
or flag and points the right way."""
import errno
import glob
import json
import os
import pickle
import shutil
import socket
import subprocess
import sys

import pytest
import torch

from healthygan.training import logs as logger  # its open() is replaced below
from conftest import tiny_args
from test_faults import QUIET, error_line, run, run2, train  # noqa: F401 (run2: a fixture)


def finished(code):
    return code is None or code == 0


def write_labels(path, names, label, text=None):
    """A labels CSV (file,label) giving every name `label`; text: the file's exact text."""
    rows = ''.join(f'{n},{label}\n' for n in names)
    path.write_text(text if text is not None else 'file,label\n' + rows)
    return path


MIXED = [f'img_{k}.png' for k in range(6)]  # the mixed images of the folder_dataset fixture


# ---- silent ---------------------------------------------------------------------------------- #

def test_1_training_images_that_are_test_or_validation_images_are_warned_about(
        tmp_path, folder_dataset, capsys):
    shutil.copy(folder_dataset / 'test' / 'anomalous' / 'img_0.png',
                folder_dataset / 'healthy' / 'copied.png')  # the same bytes, another name
    os.makedirs(folder_dataset / 'val' / 'normal')
    os.makedirs(folder_dataset / 'val' / 'anomalous')
    os.symlink(folder_dataset / 'mixed' / 'img_1.png', folder_dataset / 'val' / 'normal' / 'a.png')
    shutil.copy(folder_dataset / 'test' / 'normal' / 'img_3.png',
                folder_dataset / 'val' / 'anomalous' / 'b.png')
    code, _, err = run(capsys, train(tmp_path, folder_dataset, '--num_iters', '1'))
    assert finished(code)
    assert ('warning: 1 training image(s) are also test images, e.g. '
            f'{folder_dataset / "healthy" / "copied.png"}') in err and 'same bytes' in err
    assert '1 training image(s) are also validation images' in err and 'same file' in err
    record = json.load(open(tmp_path / 'run' / 'models' / 'run_config.json'))
    assert record['data_overlap'] == {'train_test': 1, 'train_validation': 1}


def test_2_the_same_file_in_healthy_and_mixed_is_warned_about_and_a_list_duplicate_is_not(
        tmp_path, folder_dataset, covid_dataset, capsys):
    os.symlink(folder_dataset / 'healthy' / 'img_0.png', folder_dataset / 'mixed' / 'linked.png')
    shutil.copy(folder_dataset / 'mixed' / 'img_2.png', folder_dataset / 'healthy' / 'copy.png')
    code, _, err = run(capsys, train(tmp_path, folder_dataset, '--num_iters', '1'))
    assert finished(code) and '2 healthy image(s) are also mixed images' in err
    # Covid lists: an image in train_neg and in train_neg_mixed is reported; an entry listed
    # twice in one list is trained on twice, as in the original, without a word
    lists = covid_dataset / 'lists'
    for name, files in (('train_neg', ['neg_0.png', 'neg_1.png', 'neg_1.png']),
                        ('train_neg_mixed', ['negm_0.png', 'neg_0.png'])):
        with open(lists / f'{name}.pickle', 'wb') as f:
            pickle.dump(files, f)
    code, out, err = run(capsys, tiny_args(tmp_path / 'covid', covid_dataset / 'images', *QUIET,
                                           '--num_iters', '1', '--list_dir', str(lists),
                                           dataset='Covid'))
    assert finished(code) and '1 healthy image(s) are also mixed images' in err
    assert 'neg_0.png' in err and 'neg_1.png' not in err
    assert '7 pairs an epoch' in out  # 3 healthy (neg_1 twice) + 2 positive + 2 mixed negative


def test_3_testauc_at_another_image_size_than_training_is_warned_about(
        tmp_path, folder_dataset, capsys, run2):
    test = ['--mode', 'testAUC', '--test_iters', '4', '--report', 'false', '--bootstrap', '0']
    code, _, err = run(capsys, train(tmp_path, folder_dataset, *test))
    assert finished(code) and 'trained at --image_size' not in err
    code, _, err = run(capsys, train(tmp_path, folder_dataset, *test, '--image_size', '64'))
    assert finished(code)
    assert '--image_size 64, but' in err and 'trained at --image_size 32' in err
    assert 'pass --image_size 32' in err


def test_4_another_runs_state_file_resumed_with_its_seed_is_refused(tmp_path, folder_dataset,
                                                                    capsys, run2):
    other = tmp_path / 'other'  # the same flags and seed, another run
    code, _, _ = run(capsys, tiny_args(other, folder_dataset, *QUIET, '--num_iters', '4'))
    assert finished(code)
    own = run2 / '4-state.pt'
    os.replace(own, run2 / 'own-state.keep')
    shutil.copy(other / 'run' / 'models' / '4-state.pt', own)
    argv = train(tmp_path, folder_dataset, '--num_iters', '5', '--resume_iters', 'latest')
    code, _, err = run(capsys, argv)
    line = error_line(err)
    first_id = json.load(open(run2 / 'run_config.json'))['run_id']
    assert code == 2 and '4-state.pt was written by another run' in line and first_id in line
    os.replace(run2 / 'own-state.keep', own)  # its own state: resumed, the run id kept
    code, _, err = run(capsys, argv)
    assert finished(code), err
    assert json.load(open(run2 / 'run_config-resume4.json'))['run_id'] == first_id
    assert torch.load(run2 / '5-state.pt', weights_only=True)['metadata']['run_id'] == first_id


def test_5_a_speed_switch_changed_on_resume_is_warned_about_and_recorded(
        tmp_path, folder_dataset, capsys, run2):
    code, _, err = run(capsys, train(tmp_path, folder_dataset, '--num_iters', '5',
                                     '--resume_iters', 'latest', '--amp', 'bf16'))
    assert finished(code), err
    assert "resume changes the speed switch(es) --amp from 'off' to 'bf16'" in err
    assert 'not bit for bit' in err
    record = json.load(open(run2 / 'run_config-resume4.json'))
    assert record['speed_changes'] == {'amp': ['off', 'bf16']}


@pytest.mark.parametrize('flag,folder', [('--log_dir', 'logs'), ('--sample_dir', 'samples')])
def test_6_a_run_sharing_the_log_or_sample_folder_of_a_live_run_is_refused(
        tmp_path, folder_dataset, capsys, flag, folder):
    shared = tmp_path / 'run' / folder
    os.makedirs(shared)
    alive = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
    try:  # a live run's lock in the shared folder; this run has a --model_save_dir of its own
        (shared / '.healthygan.lock').write_text(json.dumps({'pid': alive.pid,
                                                             'host': socket.gethostname()}))
        models = tmp_path / 'mine'
        code, _, err = run(capsys, train(tmp_path, folder_dataset, '--num_iters', '1',
                                         '--model_save_dir', str(models)))
        line = error_line(err)
        assert code == 2 and line.startswith(f'error: {flag} {shared} is in use by another run')
        assert str(alive.pid) in line
        assert not glob.glob(str(models / '*')) and not (models / '.healthygan.lock').exists()
    finally:
        alive.kill()
        alive.wait()


def test_7_overwrite_moves_the_old_tensorboard_events_and_sample_grids_aside(
        tmp_path, folder_dataset, capsys):
    argv = tiny_args(tmp_path, folder_dataset, '--num_iters', '2', '--sample_step', '2')
    code, _, _ = run(capsys, argv)
    assert finished(code)
    logs, samples = tmp_path / 'run' / 'logs', tmp_path / 'run' / 'samples'
    old_events = [n for n in os.listdir(logs) if n.startswith('events.out.tfevents.')]
    assert old_events
    code, _, err = run(capsys, [*argv, '--overwrite', 'true', '--sample_step', '1000'])
    assert finished(code)
    aside, = glob.glob(str(tmp_path / 'run' / 'models' / 'replaced-*'))
    assert set(old_events) <= set(os.listdir(aside))
    assert os.listdir(os.path.join(aside, 'samples')) == ['2-images.jpg']
    assert not set(old_events) & set(os.listdir(logs))  # the new run's curves alone
    assert not glob.glob(str(samples / '*.jpg'))


def test_8_a_labels_csv_giving_one_image_two_labels_is_refused(tmp_path, folder_dataset, capsys):
    labels = write_labels(tmp_path / 'truth.csv', MIXED, 0)
    labels.write_text(labels.read_text() + 'img_3.png,1\n')
    code, _, err = run(capsys, train(tmp_path, folder_dataset, '--num_iters', '1',
                                     '--holdout_fraction', '0.34',
                                     '--holdout_labels', str(labels)))
    line = error_line(err)
    assert code == 2 and str(labels) in line and 'img_3.png has two labels' in line
    assert 'line 5' in line and 'line 8' in line


# ---- misleading ------------------------------------------------------------------------------ #

def test_9_a_resume_with_the_image_dir_typed_otherwise_is_the_same_data(
        tmp_path, folder_dataset, capsys, monkeypatch, run2):
    code, _, err = run(capsys, train(tmp_path, str(folder_dataset) + '/', '--num_iters', '5',
                                     '--resume_iters', 'latest'))
    assert finished(code), err
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, train(tmp_path, 'data', '--num_iters', '6',
                                     '--resume_iters', 'latest'))
    assert finished(code), err
    shutil.copytree(folder_dataset, tmp_path / 'other_data')  # other folder: other data
    code, _, err = run(capsys, train(tmp_path, 'other_data', '--num_iters', '7',
                                     '--resume_iters', 'latest'))
    assert code == 2 and 'resume would change --image_dir' in error_line(err)


def test_10_latest_behind_an_incomplete_set_points_to_overwrite_not_to_latest(
        tmp_path, folder_dataset, capsys, run2):
    os.remove(run2 / '4-D.ckpt')
    code, _, err = run(capsys, train(tmp_path, folder_dataset, '--num_iters', '5',
                                     '--resume_iters', 'latest'))
    line = error_line(err)
    assert code == 2 and '--resume_iters latest is set 2' in line and '4-G.ckpt' in line
    assert 'pass --overwrite true' in line and 'resume from latest' not in line


def test_11_a_full_disk_names_the_folder_and_resumes_only_where_a_set_exists(
        tmp_path, folder_dataset, capsys, monkeypatch):
    samples = tmp_path / 'run' / 'samples'
    os.makedirs(samples)
    os.symlink('/dev/full', samples / '1-images.jpg')  # a real "No space left on device"
    code, _, err = run(capsys, train(tmp_path, folder_dataset, '--num_iters', '4',
                                     '--sample_step', '1', '--model_save_step', '2'))
    line = error_line(err)
    assert code == 2 and 'No space left' in line and f'(under --sample_dir {samples})' in line
    assert 'nothing to resume' in line and '--overwrite true' in line
    assert '--resume_iters' not in line
    later = tmp_path / 'c' / 'run' / 'samples'
    os.makedirs(later)
    os.symlink('/dev/full', later / '3-images.jpg')  # after the set at 2 was saved
    code, _, err = run(capsys, train(tmp_path / 'c', folder_dataset, '--num_iters', '4',
                                     '--sample_step', '1', '--model_save_step', '2'))
    line = error_line(err)
    assert code == 2 and 'resume with --resume_iters latest' in line and 'set is 2' in line

    real_open = open

    def full_disk_open(path, mode='r', *a, **k):  # stats.jsonl's append: a write that fails
        f = real_open(path, mode, *a, **k)
        if 'a' in mode:
            f.write = lambda text: (_ for _ in ()).throw(OSError(errno.ENOSPC,
                                                                 os.strerror(errno.ENOSPC)))
        return f

    monkeypatch.setattr(logger, 'open', full_disk_open, raising=False)
    code, _, err = run(capsys, train(tmp_path / 'b', folder_dataset, '--num_iters', '2',
                                     '--log_step', '1'))
    line = error_line(err)
    assert code == 2 and 'stats.jsonl' in line and f'(under --log_dir {tmp_path / "b"}' in line


def test_12_a_holdout_without_anomalous_images_says_so_and_best_val_says_why(
        tmp_path, folder_dataset, capsys):
    labels = write_labels(tmp_path / 'truth.csv', MIXED, 0)
    argv = train(tmp_path, folder_dataset, '--holdout_fraction', '0.34',
                 '--holdout_labels', str(labels))
    code, out, err = run(capsys, [*argv, '--num_iters', '2'])
    assert finished(code)
    assert 'held-out mixed images hold no anomalous image, so no validation AUROC' in err
    assert 'validation AUROC on' not in out
    code, _, err = run(capsys, [*argv, '--mode', 'testAUC', '--test_iters', 'best_val',
                                '--report', 'false', '--bootstrap', '0'])
    line = error_line(err)
    assert code == 2 and 'held no anomalous image' in line and 'best_aucp' in line
    assert 'train with --holdout_fraction > 0 and --holdout_labels' not in line


def test_13_a_labels_csv_saved_by_a_spreadsheet_is_read(tmp_path, folder_dataset, capsys):
    rows = ''.join(f'{n},{k % 2}\r\n' for k, n in enumerate(MIXED))
    labels = tmp_path / 'truth.csv'
    labels.write_bytes(('\ufeff' + 'file,label\r\n' + rows).encode('utf-8'))  # BOM, CRLF
    code, out, err = run(capsys, train(tmp_path, folder_dataset, '--num_iters', '2',
                                       '--holdout_fraction', '0.34', '--holdout_stratify', 'true',
                                       '--holdout_labels', str(labels)))
    assert finished(code), err
    assert 'Validation: the held-out mixed images hold 1 anomalous' in out


def test_14_a_huge_loss_weight_is_named_when_training_turns_non_finite(tmp_path, folder_dataset,
                                                                       capsys):
    code, _, err = run(capsys, train(tmp_path, folder_dataset, '--num_iters', '2',
                                     '--log_step', '1', '--lambda_gp', '1e38'))
    line = error_line(err)
    assert code == 2 and 'non-finite D weights' in line
    assert 'Lower --lambda_gp 1e+38' in line and 'learning rates' not in line


@pytest.mark.parametrize('kind', ['file', 'fifo', 'device link'])
def test_15_an_image_dir_or_image_that_is_not_a_folder_or_file_says_what_it_is(
        tmp_path, folder_dataset, capsys, kind):
    image_dir = tmp_path / 'not_a_folder'
    if kind == 'file':
        image_dir.write_text('x')
        expected = f'--image_dir {image_dir} is a regular file, not a folder'
    elif kind == 'fifo':
        os.mkfifo(image_dir)
        expected = f'--image_dir {image_dir} is a FIFO (named pipe), not a folder'
    else:
        image_dir = folder_dataset
        os.symlink('/dev/zero', folder_dataset / 'mixed' / 'zero.png')  # never ends if read
        expected = (f'{folder_dataset / "mixed" / "zero.png"} is a link to /dev/zero, a '
                    f'character device')
    code, _, err = run(capsys, train(tmp_path, image_dir, '--num_iters', '1'))
    line = error_line(err)
    assert code == 2 and expected in line and 'missing' not in line and 'exist' not in line


def test_15_a_generator_file_of_non_tensor_values_is_refused_as_such(tmp_path, folder_dataset,
                                                                    capsys, run2):
    names = torch.load(run2 / '4-G.ckpt', weights_only=True)
    torch.save({k: 1 for k in names}, run2 / '4-G.ckpt')
    code, _, err = run(capsys, train(tmp_path, folder_dataset, '--mode', 'testAUC',
                                     '--test_iters', '4', '--report', 'false'))
    line = error_line(err)
    assert code == 2 and '4-G.ckpt holds' in line and 'non-tensor' in line
    assert '--g_repeat_num' not in line
