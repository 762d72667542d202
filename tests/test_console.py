"""The healthygan command (healthygan/console.py): modes dispatched to cli.main, its usage, and
one line for a mode it does not know."""
import pytest

from healthygan import cli, console


@pytest.fixture
def calls(monkeypatch):
    """cli.main replaced by a recorder: the dispatch alone, nothing trained."""
    seen = []
    monkeypatch.setattr(cli, 'main', lambda argv=None: seen.append(argv) or {'AUC': 1})
    return seen


@pytest.mark.parametrize('mode', ['train', 'test', 'testAUC', 'score'])
def test_each_mode_runs_main_py_in_that_mode(mode, calls):
    assert console.main([mode, '--image_size', '64']) == 0  # a metrics dict is no exit status
    assert calls == [['--mode', mode, '--image_size', '64']]


def test_main_py_own_form_is_taken_as_it_is(calls):
    assert console.main(['--mode', 'testAUC', '--test_iters', 'latest']) == 0
    assert calls == [['--mode', 'testAUC', '--test_iters', 'latest']]


@pytest.mark.parametrize('argv', [['--help'], ['-h'], ['help']])
def test_help_lists_the_modes_and_where_their_flags_are(argv, calls, capsys):
    assert console.main(argv) == 0
    out = capsys.readouterr().out
    for mode in ('train', 'test', 'testAUC', 'score'):
        assert f'\n  {mode} ' in out
    assert 'healthygan MODE --help' in out and not calls


def test_no_arguments_prints_the_usage_and_fails(calls, capsys):
    assert console.main([]) == 2
    assert 'healthygan MODE --help' in capsys.readouterr().err and not calls


def test_version(capsys):
    from healthygan.version import __version__
    assert console.main(['--version']) == 0
    assert capsys.readouterr().out.strip() == f'healthygan {__version__}'


@pytest.mark.parametrize('argv,says', [
    (['testauc'], "unknown mode 'testauc'"),
    (['fit', '--image_size', '64'], "unknown mode 'fit'"),
    (['--image_size', '64'], 'the mode comes first'),
    (['train', '--mode', 'test'], '--mode given after the mode'),
])
def test_a_bad_mode_is_one_line_and_exit_2(argv, says, calls, capsys):
    assert console.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and err.startswith('error: ') and says in err, err
    assert not calls


def test_a_close_miss_names_the_mode(capsys):
    assert console.main(['testauc']) == 2
    assert 'did you mean testAUC?' in capsys.readouterr().err


def test_errors_of_the_program_stay_one_line(tmp_path, capsys):
    # the real cli.main: its one-line errors and exit status 2 come through unchanged
    with pytest.raises(SystemExit) as e:
        console.main(['train', '--dataset', 'Folder', '--image_dir', str(tmp_path / 'nowhere'),
                      '--device', 'cpu', '--model_save_dir', str(tmp_path / 'm'),
                      '--log_dir', str(tmp_path / 'l'), '--sample_dir', str(tmp_path / 's')])
    assert e.value.code == 2
    assert 'nowhere does not exist' in capsys.readouterr().err
