"""tools/quickstart_table.py: the table of the quick start's runs from their metrics.json."""
import json
import os

import pytest

from tools import quickstart_table


def test_the_table_reads_each_runs_metrics_and_summarises_them(trained, tmp_path, capsys):
    metrics = json.load(open(trained / 'results' / 'metrics.json'))
    for name, wall in [('seed0_threads1', 245), ('seed1_threads1', None)]:
        os.makedirs(tmp_path / name)
        os.symlink(trained / 'results', tmp_path / name / 'results')
        if wall:
            (tmp_path / name / 'wall_seconds').write_text(str(wall))
    os.makedirs(tmp_path / 'data_seed0')  # not a run: no results/
    quickstart_table.main([str(tmp_path)])
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].startswith('| seed0_threads1 | ' + f"{metrics['image_AUROC']:.3f}")
    assert lines[2].endswith('| 4 min 5 s |') and lines[3].endswith('| - |')
    assert lines[4].startswith('| mean (range) | ' + f"{metrics['image_AUROC']:.3f} (")
    assert 'at most 4 min 5 s' in lines[4] and len(lines) == 5
    with pytest.raises(SystemExit, match='no finished demo run'):
        quickstart_table.main([str(tmp_path / 'data_seed0')])
