"""The README's commands as written: its fenced shell blocks parsed into commands, each script,
tool and flag checked, the cheap ones run on the shipped weights, its Python block executed."""
import argparse
import contextlib
import importlib
import io
import os
import re
import shlex
import shutil
import subprocess

import pytest

import main as cli
from conftest import NIH_MINI, ROOT, read_csv, tiny_flags
from healthygan import console
from healthygan.cli import REMOVED_FLAGS

README = os.path.join(ROOT, 'README.md')
SHIPPED = 'pretrained/nih-cxr-mini'
# Variables a command line may set for any program, not only for the script it runs.
GENERIC_ENV = {'OMP_NUM_THREADS', 'CUDA_VISIBLE_DEVICES'}
SEPARATORS = {';', '&&', '||', '|', '&'}
# Commands that are not this project's and are only named, never checked.
FOREIGN = {'pip', 'sha256sum'}


def readme_text():
    with open(README, encoding='utf-8') as f:
        return f.read()


def fenced_blocks(text, language):
    """The code of every ```language block, list-indented ones included, dedented."""
    pattern = re.compile(r'^( *)```' + language + r'\n(.*?)^\1```[ \t]*$', re.S | re.M)
    blocks = []
    for m in pattern.finditer(text):
        indent = len(m.group(1))
        blocks.append(''.join(line[indent:] for line in m.group(2).splitlines(True)))
    return blocks


def split_command_line(line):
    """One shell line (continuations joined) as lists of words, one per simple command; comments
    dropped, loop keywords left out."""
    lex = shlex.shlex(line, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    commands, words = [], []
    for token in list(lex) + [';']:
        if token in SEPARATORS:
            if words and words[0] not in ('for', 'done', 'while', 'if', 'fi'):
                commands.append(words)
            words = []
        elif words or token not in ('do', 'then', 'else'):
            words.append(token)
    return commands


def shell_commands(text):
    """(env, words, line) of every simple command in the text's bash blocks; env holds the
    leading NAME=value assignments."""
    found = []
    for block in fenced_blocks(text, 'bash'):
        for line in block.replace('\\\n', ' ').splitlines():
            for words in split_command_line(line):
                env = {}
                while words and re.match(r'^[A-Za-z_][A-Za-z0-9_]*=', words[0]):
                    name, value = words.pop(0).split('=', 1)
                    env[name] = value
                if words:
                    found.append((env, words, line.strip()))
    return found


def classify(words):
    """(kind, target, args): kind is 'main' (main.py's flags), 'mode' (healthygan MODE),
    'tool' (a Python file or module), 'script' (bash), 'pytest', 'foreign' or 'unknown'."""
    args = [w for w in words if w != '...']  # '...' stands for more flags of the reader's
    head = args[0]
    if head in ('python', 'python3') and len(args) > 1:
        if args[1] == 'main.py':
            return 'main', 'main.py', args[2:]
        if args[1] == '-m' and len(args) > 2:
            if args[2] == 'healthygan':
                return 'mode', 'healthygan', args[3:]
            if args[2] == 'pytest':
                return 'pytest', 'pytest', args[3:]
            return 'tool', args[2], args[3:]
        if args[1].endswith('.py'):
            return 'tool', args[1], args[2:]
    if head == 'healthygan':
        return 'mode', 'healthygan', args[1:]
    if head == 'torchrun' and 'main.py' in args:
        return 'main', 'main.py', args[args.index('main.py') + 1:]
    if head == 'bash' and len(args) > 1:
        return 'script', args[1], args[2:]
    if head in FOREIGN:
        return 'foreign', head, args[1:]
    return 'unknown', head, args[1:]


def main_argv(kind, args):
    """main.py's argv of a 'main' or 'mode' command."""
    if kind == 'main':
        return list(args)
    assert args and args[0] in console.MODES, f'healthygan needs a mode first, not {args[:1]}'
    return ['--mode', args[0], *args[1:]]


def commands(*kinds):
    return [(env, classify(words), line) for env, words, line in shell_commands(readme_text())
            if classify(words)[0] in kinds]


def flag_value(argv, flag):
    return argv[argv.index(flag) + 1] if flag in argv else None


def with_flag(argv, flag, value):
    """argv with flag set to value (replaced where it is given, added where not)."""
    if flag in argv:
        argv = list(argv)
        argv[argv.index(flag) + 1] = value
        return argv
    return [*argv, flag, value]


def test_the_parser_of_this_test_reads_shell_lines():
    assert split_command_line('for s in 0 1; do SEED=$s bash a.sh; done  # note') == \
        [['SEED=$s', 'bash', 'a.sh']]
    [(env, words, _)] = shell_commands('```bash\nX=1 python main.py --mode test \\\n'
                                       '    --seed 2  # c\n```\n')
    assert env == {'X': '1'} and words == ['python', 'main.py', '--mode', 'test', '--seed', '2']
    assert fenced_blocks('1. a\n   ```bash\n   ls\n   ```\n', 'bash') == ['ls\n']
    assert classify(['torchrun', '--standalone', 'main.py', '--seed', '1', '...'])[2] == \
        ['--seed', '1']


def test_every_readme_command_is_one_this_test_knows():
    found = shell_commands(readme_text())
    kinds = [classify(words)[0] for _, words, _ in found]
    unknown = [line for (_, _, line), kind in zip(found, kinds) if kind == 'unknown']
    assert not unknown, f'commands this test cannot check: {unknown}'
    for kind in ('main', 'mode', 'tool', 'script', 'pytest'):
        assert kind in kinds, f'the README has no {kind} command any more: update this test'


def test_main_and_healthygan_commands_parse_as_written():
    for _, (kind, _, args), line in commands('main', 'mode'):
        argv = main_argv(kind, args)
        removed = [a for a in argv if a.split('=', 1)[0] in REMOVED_FLAGS]
        assert not removed, f'{line}: removed flag {removed}'
        try:
            cli.build_parser().parse_args(argv)
        except SystemExit:
            pytest.fail(f'the README command does not parse: {line}')


class Parsed(Exception):
    """Raised by the dry parse once a tool's flags have parsed."""


def test_tool_commands_exist_and_their_flags_parse(monkeypatch):
    parse_args = argparse.ArgumentParser.parse_args

    def dry(self, args=None, namespace=None):
        raise Parsed(parse_args(self, args, namespace))
    monkeypatch.setattr(argparse.ArgumentParser, 'parse_args', dry)
    for _, (_, target, args), line in commands('tool'):
        module = target[:-3].replace('/', '.') if target.endswith('.py') else target
        if target.endswith('.py'):
            assert os.path.isfile(os.path.join(ROOT, target)), f'{line}: no {target}'
        tool = importlib.import_module(module)
        try:
            tool.main(args)
        except Parsed:
            continue
        except SystemExit:
            pytest.fail(f'the README command does not parse: {line}')
        pytest.fail(f'{line}: {target} ran without parsing its flags')


def test_scripts_exist_are_valid_bash_and_read_the_variables_given():
    for env, (_, script, _), line in commands('script'):
        path = os.path.join(ROOT, script)
        assert os.path.isfile(path), f'{line}: no {script}'
        r = subprocess.run(['bash', '-n', path], capture_output=True, text=True)
        assert r.returncode == 0, f'{script}: {r.stderr}'
        with open(path) as f:
            source = f.read()
        for name in set(env) - GENERIC_ENV:
            assert '${' + name in source, f'{line}: {script} does not read {name}'


def test_install_commands_name_files_that_exist():
    for _, (_, _, args), line in commands('foreign'):
        if '-r' in args:
            assert os.path.isfile(os.path.join(ROOT, flag_value(args, '-r'))), line
        if '.' in args or any(a.startswith('.[') for a in args):
            assert os.path.isfile(os.path.join(ROOT, 'pyproject.toml')), line
    pytest_commands = commands('pytest')
    for _, (_, _, args), line in pytest_commands:
        if '-m' in args:  # a marker the suite declares
            with open(os.path.join(ROOT, 'pytest.ini')) as f:
                assert flag_value(args, '-m').split()[-1] in f.read(), line


def run_score(kind, argv):
    """A score command through the real entry point of its kind."""
    if kind == 'mode':
        assert console.main(argv) == 0
    else:
        cli.main(argv)


def test_the_one_minute_score_command_runs_on_the_shipped_weights(tmp_path, monkeypatch):
    # As written, from the clone's folder; only the output folder is moved into tmp_path.
    monkeypatch.chdir(ROOT)
    runs = [(kind, args, line) for _, (kind, _, args), line in commands('main', 'mode')
            if flag_value(main_argv(kind, args), '--model_save_dir') == SHIPPED]
    assert runs, f'the README no longer scores with {SHIPPED} from the shell'
    expected = {r['path']: float(r['score']) for r in
                read_csv(os.path.join(ROOT, SHIPPED, 'expected_scores.csv'))}
    for k, (kind, args, line) in enumerate(runs):
        out = str(tmp_path / f'out{k}')
        run_score(kind, with_flag(args, '--result_dir', out) if kind == 'main' else
                  [args[0], *with_flag(args[1:], '--result_dir', out)])
        rows = read_csv(os.path.join(out, 'scores.csv'))
        known = [row for row in rows if row['path'] in expected]
        assert known, f'{line}: scores none of the images of expected_scores.csv'
        for row in known:
            assert float(row['pred_score']) == pytest.approx(expected[row['path']], abs=1e-5)
            assert float(row['healthy_percentile']) > 0


def test_the_own_radiographs_score_command_runs_with_its_flags(tmp_path):
    # After train_folder.sh: a tiny run with its hold-out and four checkpoints stands in for
    # my_run/models and two of its test images for new_xrays/; the flags are the README's, so
    # --test_iters and --ensemble must name checkpoints such a run writes (the README once asked
    # for 200000, which no train_folder.sh run has).
    import synthetic
    runs = [(kind, args, line) for _, (kind, _, args), line in commands('main', 'mode')
            if 'score' in main_argv(kind, args) and
            not os.path.isdir(os.path.join(ROOT, flag_value(main_argv(kind, args),
                                                            '--model_save_dir') or ''))]
    assert runs, 'the README no longer scores a run of train_folder.sh'
    synthetic.make_synthetic_dataset(tmp_path / 'my_xrays', n_healthy=8, n_mixed=8,
                                     n_test_normal=1, n_test_anomalous=1, size=32, seed=0)
    models = tmp_path / 'my_run' / 'models'
    cli.main(['--mode', 'train', '--dataset', 'Folder', '--image_dir', str(tmp_path / 'my_xrays'),
              *tiny_flags(), '--use_tensorboard', 'false', '--num_iters', '8',
              '--model_save_step', '2', '--holdout_fraction', '0.25',
              '--model_save_dir', str(models), '--log_dir', str(tmp_path / 'my_run' / 'logs'),
              '--sample_dir', str(tmp_path / 'my_run' / 'samples')])
    images = tmp_path / 'my_xrays' / 'test'
    for k, (kind, args, line) in enumerate(runs):
        argv = main_argv(kind, args)
        argv = with_flag(argv, '--model_save_dir', str(models))
        argv = with_flag(argv, '--score_dir', str(images))
        argv = with_flag(argv, '--result_dir', str(tmp_path / f'out{k}'))
        summary = cli.main(argv + ['--num_workers', '0', '--device', 'cpu'])
        assert summary['n_images'] == 2 and summary['iteration'] == 8, line


def test_the_python_blocks_run_and_print_what_their_comments_say(monkeypatch):
    monkeypatch.chdir(ROOT)
    blocks = fenced_blocks(readme_text(), 'python')
    assert blocks, 'the README has no Python example any more'
    for block in blocks:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(block, 'README.md', 'exec'), {})
        claimed = [line.split('#', 1)[1].split() for line in block.splitlines()
                   if line.startswith('print(') and '#' in line]
        printed = [line.split() for line in out.getvalue().splitlines()]
        assert len(printed) == len(claimed)
        for said, got in zip(claimed, printed):
            assert len(said) == len(got), (said, got)
            for s, g in zip(said, got):
                if re.fullmatch(r'-?\d+(\.\d+)?', s):
                    decimals = len(s.split('.')[1]) if '.' in s else 0
                    assert abs(float(g) - float(s)) <= 0.5 * 10 ** -decimals, (said, got)
                else:
                    assert s == g, (said, got)


def test_readme_is_for_users_in_the_order_they_work():
    text = readme_text()
    assert len(text.encode('utf-8')) <= 26000  # about 25 KB
    headings = [h for h in re.findall(r'^## (.+)$', text, re.M)]
    order = ['Score a radiograph in one minute', 'Install', 'Quick start', 'Your own radiographs',
             'Data preparation', 'Training', 'Testing', 'Reproducing the paper', 'Several GPUs',
             'Pretrained weights', 'Results', 'ZhangLab', 'Differences from the original', 'Tests',
             'Citation']
    positions = [next(i for i, h in enumerate(headings) if h.startswith(want)) for want in order]
    assert positions == sorted(positions), headings
    for phrase in ('the goal', 'not met', 'weights in the box'):
        assert phrase not in text.lower(), phrase


def test_readme_links_point_to_files_and_headings_that_exist():
    text = readme_text()
    anchors = {re.sub(r'[^\w\- ]', '', h.strip().lower()).replace(' ', '-')
               for h in re.findall(r'^#+ (.+)$', text, re.M)}
    for target in re.findall(r'\]\(([^)\s]+)\)', text):
        if '://' in target:
            continue
        path, _, anchor = target.partition('#')
        if path:
            assert os.path.exists(os.path.join(ROOT, path)), target
        elif anchor:
            assert anchor in anchors, target
