"""The released generator's check (healthygan/detection/pretrained.py): a file that is no generator of the
script's architecture stops with one line before anything else runs."""
import os

import pytest
import torch

from healthygan.detection import pretrained
from healthygan.errors import CheckpointError
from healthygan.model.networks import Generator


@pytest.fixture(scope='module')
def released_style(tmp_path_factory):
    """A default-architecture G saved as the authors saved theirs: torch.save(G.state_dict())."""
    path = tmp_path_factory.mktemp('pre') / '360000-G.ckpt'
    torch.manual_seed(0)
    torch.save(Generator().state_dict(), path)
    return path


def test_a_default_generator_passes(released_style, capsys):
    G = pretrained.check_generator_file(str(released_style), 64, 6)
    assert torch.equal(G.state_dict()['main.0.weight'],
                       torch.load(released_style, weights_only=True)['main.0.weight'])
    assert pretrained.main([str(released_style), '--g_conv_dim', '64', '--g_repeat_num', '6']) == 0
    assert '8,417,984 parameters' in capsys.readouterr().out


def test_the_checksum_is_checked_when_given(released_style, capsys):
    digest = pretrained.sha256_of(released_style)
    assert pretrained.main([str(released_style), '--sha256', digest.upper()]) == 0
    assert pretrained.main([str(released_style), '--sha256', '0' * 64]) == 1
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and digest in err and 'download it again' in err


def bad_files(root, released_style):
    """name -> (path, what its one line must say)."""
    truncated = root / 'truncated.ckpt'
    truncated.write_bytes(released_style.read_bytes()[:1_000_000])
    garbage = root / 'garbage.ckpt'
    garbage.write_bytes(b'<html>404 Not Found</html>\n')
    other = root / 'other.ckpt'
    torch.save(Generator(16, 0, 2).state_dict(), other)
    return {'truncated': (truncated, 'truncated'),
            'garbage': (garbage, 'is not a PyTorch file'),  # not "holds Python objects"
            'other architecture': (other, '--g_conv_dim 16 (this run: 64)'),
            'missing': (root / 'none.ckpt', 'not found')}


@pytest.mark.parametrize('name', ['truncated', 'garbage', 'other architecture', 'missing'])
def test_a_bad_file_is_one_line_and_exit_1(name, tmp_path, released_style, capsys):
    path, says = bad_files(tmp_path, released_style)[name]
    with pytest.raises(CheckpointError, match=str(path)):
        pretrained.check_generator_file(str(path), 64, 6)
    assert pretrained.main([str(path), '--g_conv_dim', '64', '--g_repeat_num', '6']) == 1
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and err.startswith('error: ') and str(path) in err, err
    assert says in err, err


@pytest.mark.slow
def test_the_pretrained_script_stops_before_anything_runs(tmp_path, released_style):
    from test_scripts import run_script
    root = tmp_path / 'bad'
    os.makedirs(root)
    files = bad_files(root, released_style)
    del files['missing']  # the script's own message: test_scripts.py
    for name, (path, says) in files.items():
        pre = tmp_path / name.replace(' ', '_')
        os.makedirs(pre)
        os.replace(path, pre / '360000-G.ckpt')
        env = {'PRETRAINED_DIR': str(pre), 'LIST_DIR': str(tmp_path / 'lists'),
               'RESULT_DIR': str(tmp_path / 'res'), 'OMP_NUM_THREADS': '1'}
        r = run_script('test_covid_pretrained.sh', env)
        assert r.returncode == 1, r.stderr
        assert r.stderr.count('\n') == 1 and str(pre / '360000-G.ckpt') in r.stderr, r.stderr
        assert says in r.stderr, r.stderr
        # no split lists built, nothing scored or written
        assert not (tmp_path / 'lists').exists() and not (tmp_path / 'res').exists()
    # a recorded checksum that the file does not match
    os.makedirs(tmp_path / 'good')
    os.symlink(released_style, tmp_path / 'good' / '360000-G.ckpt')
    r = run_script('test_covid_pretrained.sh',
                   {'PRETRAINED_DIR': str(tmp_path / 'good'), 'PRETRAINED_SHA256': 'ab' * 32,
                    'LIST_DIR': str(tmp_path / 'lists'), 'OMP_NUM_THREADS': '1'})
    assert r.returncode == 1 and 'SHA-256' in r.stderr and r.stderr.count('\n') == 1, r.stderr
    assert not (tmp_path / 'lists').exists()
