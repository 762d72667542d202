"""tools/box_study.py on the shipped weights and shipped NIH radiographs, with boxes of our own."""
import json
import os
import shutil
import subprocess
import sys

import pytest

import healthygan
from conftest import NIH_MINI, ROOT
from healthygan.reports import boxes
from healthygan.errors import DataError
from tools import box_study

PRETRAINED = os.path.join(ROOT, 'pretrained', 'nih-cxr-mini')
IMAGES = ['nih_00000150_002.png', 'nih_00000193_019.png']


@pytest.fixture(scope='module')
def boxed(tmp_path_factory):
    """A validation folder of two shipped anomalous radiographs, and boxes for them plus one
    row of another folder (left out, as the test images' boxes are)."""
    root = tmp_path_factory.mktemp('boxed')
    for name in IMAGES:
        os.makedirs(root / 'val' / 'anomalous', exist_ok=True)
        shutil.copy(os.path.join(NIH_MINI, 'validation', 'anomalous', name),
                    root / 'val' / 'anomalous' / name)
    (root / 'boxes.csv').write_text(
        'file,folder,finding,x,y,w,h\n'
        f'{IMAGES[0]},validation/anomalous,Pneumonia,150,100,50,40\n'
        f'{IMAGES[1]},validation/anomalous,Pneumonia,60,60,40,60\n'
        f'{IMAGES[1]},validation/anomalous,Mass,170,150,30,30\n'
        'nih_elsewhere.png,test/anomalous,Pneumonia,10,40,20,20\n')
    return root


def test_the_study_measures_the_maps_the_api_gives(boxed, capsys):
    out, panel = boxed / 'study.json', boxed / 'panel.png'
    box_study.main(['--run_dir', PRETRAINED, '--val_dir', str(boxed / 'val'),
                    '--boxes', str(boxed / 'boxes.csv'), '--sigmas', '0', '4',
                    '--bootstrap', '50', '--out', str(out), '--panel', str(panel),
                    '--panel_images', '2'])
    printed = capsys.readouterr().out
    assert '2 validation images with 3 boxes' in printed and '1 rows of other folders' in printed
    assert '| ref_z | 4 |' in printed and '| chance |' in printed
    assert 'residual: ' in printed and 'at the edge' in printed
    saved = json.loads(out.read_text())
    rows = {(r['map'], r['sigma']): r for r in saved['table']}
    assert {('residual', 0), ('ref_z', 4), ('mask', 0), ('residual_in_lung', 4),
            ('brightness', 0), ('darkness', 0), ('uniform', 0)} <= set(rows)
    uniform = rows[('uniform', 0)]
    assert uniform['pointing']['mean'] == pytest.approx(uniform['pointing']['chance'])
    assert uniform['pixel_AUROC']['mean'] == 0.5
    # the residual measured is the API's anomaly map of each image
    det = healthygan.load(PRETRAINED, device='cpu')
    matched = boxes.match_boxes(boxes.read_boxes(str(boxed / 'boxes.csv'))[:3],
                                [str(boxed / 'val' / 'anomalous' / n) for n in IMAGES], 'b')
    for path, image_boxes in matched.items():
        mask = boxes.box_mask(image_boxes, (256, 256), det.image_size)
        expected = boxes.image_box_metrics(det.score(path).map, mask)
        got = saved['per_image']['residual@0'][os.path.basename(path)]
        # Result.map is float32: a few pixels tie there that differ in float64
        assert got == pytest.approx(expected, abs=1e-4)
    assert panel.stat().st_size > 10_000


def test_a_box_outside_an_image_stops_the_study(boxed):
    bad = boxed / 'bad.csv'
    bad.write_text(f'file,x,y,w,h\n{IMAGES[0]},300,10,20,20\n')
    with pytest.raises(DataError, match=r'line 2: the box of nih_00000150_002.png .* lies '
                                        r'outside the image \(256 x 256 px\)'):
        box_study.main(['--run_dir', PRETRAINED, '--val_dir', str(boxed / 'val'),
                        '--boxes', str(bad), '--bootstrap', '0'])


def test_the_command_line_says_one_line_and_fails(boxed):
    bad = boxed / 'nan.csv'
    bad.write_text(f'file,x,y,w,h\n{IMAGES[0]},1,2,3,oops\n')
    run = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'box_study.py'),
                          '--run_dir', PRETRAINED, '--val_dir', str(boxed / 'val'),
                          '--boxes', str(bad)], capture_output=True, text=True,
                         env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert run.returncode != 0 and 'Traceback' not in run.stderr
    assert run.stderr.strip().splitlines() == [f"error: {bad} line 2: h is 'oops', not a number"]
