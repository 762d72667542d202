"""The import direction: top-level files may import healthygan, nothing in healthygan/ imports a
top-level file, so that the package runs with only itself on the path (the healthygan command)."""
import ast
import os
import subprocess
import sys

from conftest import ROOT

PACKAGE = os.path.join(ROOT, 'healthygan')


def top_level_modules():
    """The repository's own top-level modules and packages other than healthygan."""
    names = {f[:-3] for f in os.listdir(ROOT) if f.endswith('.py')}
    names |= {d for d in os.listdir(ROOT)
              if os.path.isfile(os.path.join(ROOT, d, '__init__.py')) and d != 'healthygan'}
    return names


def imported_names(tree):
    """(line, first name) of every absolute import in a parsed module."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name.split('.')[0]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            yield node.lineno, node.module.split('.')[0]


def test_the_package_imports_no_top_level_file():
    top = top_level_modules()
    assert {'main', 'solver', 'model', 'data_loader', 'logger', 'metrics', 'report',
            'synthetic', 'tools'} <= top
    wrong = []
    for folder, _, files in os.walk(PACKAGE):
        for f in files:
            if f.endswith('.py'):
                path = os.path.join(folder, f)
                tree = ast.parse(open(path).read(), path)
                wrong += [f'{os.path.relpath(path, ROOT)}:{line} imports {name}'
                          for line, name in imported_names(tree) if name in top]
    assert not wrong, wrong


def test_the_package_imports_from_anywhere(tmp_path):
    # Only the package on the path (as after pip install): every module imports.
    (tmp_path / 'healthygan').symlink_to(PACKAGE)
    code = ('import importlib, pkgutil, sys, healthygan\n'
            'for m in pkgutil.walk_packages(healthygan.__path__, "healthygan."):\n'
            '    importlib.import_module(m.name)\n'
            'print(sorted(set(sys.modules) & {"main", "solver", "model", "data_loader", '
            '"logger", "metrics", "report"}))\n')
    env = {**os.environ, 'PYTHONPATH': str(tmp_path), 'OMP_NUM_THREADS': '1'}
    out = subprocess.run([sys.executable, '-c', code], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == '[]'
