"""healthygan export (healthygan/console.py, healthygan/detection/export.py): the shipped detector
written as TorchScript scores a real radiograph as the module does; bad arguments are one line."""
import csv
import json
import os

import pytest
import torch

import healthygan
from conftest import ROOT
from healthygan import console
from healthygan.data.decode import build_transform
from healthygan.detection import export
from healthygan.detection.inputs import prepare

SHIPPED = os.path.join(ROOT, 'pretrained', 'nih-cxr-mini')


def expected_scores():
    """{path: score} of the shipped weights' expected_scores.csv."""
    with open(os.path.join(SHIPPED, 'expected_scores.csv')) as f:
        return {r['path']: float(r['score']) for r in csv.DictReader(f)}


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp('export') / 'nih' / 'detector.pt'
    assert console.main(['export', SHIPPED, '--out', str(out), '--onnx', 'false']) == 0
    return out


def test_the_torchscript_file_scores_a_radiograph_as_the_module_does(exported):
    det = healthygan.load(SHIPPED, device='cpu')
    scripted = torch.jit.load(str(exported))
    paths = list(expected_scores())[:2]  # one anomalous, one normal radiograph
    batch, _, _ = prepare([os.path.join(ROOT, p) for p in paths], build_transform(64), 64, 'cpu')
    with torch.no_grad():
        score, amap = scripted(batch)
    assert score.shape == (2,) and amap.shape == (2, 1, 64, 64)
    for k, path in enumerate(paths):
        result = det.score(os.path.join(ROOT, path))
        assert float(score[k]) == pytest.approx(result.score, rel=1e-5, abs=1e-6)
        assert torch.allclose(amap[k, 0], torch.as_tensor(result.map), atol=1e-6)
        assert float(score[k]) == pytest.approx(expected_scores()[path], rel=1e-5, abs=1e-6)
    # one image alone scores as in the batch: the batch dimension is not frozen by the trace
    with torch.no_grad():
        alone, _ = scripted(batch[1:])
    assert float(alone[0]) == pytest.approx(float(score[1]), rel=1e-5, abs=1e-6)
    files = {'detector.json': ''}
    torch.jit.load(str(exported), _extra_files=files)
    identity = json.loads(files['detector.json'])
    assert identity['variant'] == det.variant == 'ref_z' and identity['members'] == det.members


@pytest.mark.parametrize('argv,says', [
    (['export', SHIPPED], 'the following arguments are required: --out'),
    (['export', 'no-such-run', '--out', 'x.pt'], 'no-such-run is not a folder'),
    (['export', SHIPPED, '--out', 'x.pt', '--test_iters', '123'], '123-G.ckpt does not exist'),
    (['export', SHIPPED, '--out', 'x.pt', '--score_variant', 'nope'], "'nope'"),
    (['export', SHIPPED, '--out', 'x.pt', '--onnx', 'maybe'], "invalid choice: 'maybe'"),
])
def test_bad_arguments_are_one_line_and_exit_2(argv, says, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may be written, and nowhere but here
    assert console.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and err.startswith('error: ') and says in err, err
    assert not os.listdir(tmp_path)


def test_onnx_asked_for_without_the_package_is_one_line(tmp_path, capsys):
    if export.onnx_available():
        pytest.skip('onnx is installed: --onnx true writes the file (test_onnx)')
    assert console.main(['export', SHIPPED, '--out', str(tmp_path / 'd.pt'),
                         '--onnx', 'true']) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and "pip install 'healthygan[onnx]'" in err, err
    assert not os.listdir(tmp_path)


def test_onnx_is_written_beside_the_torchscript_file(tmp_path):
    onnx = pytest.importorskip('onnx', reason="the optional onnx package is not installed "
                                              "(pip install 'healthygan[onnx]')")
    assert console.main(['export', SHIPPED, '--out', str(tmp_path / 'd.pt')]) == 0
    model = onnx.load(str(tmp_path / 'd.onnx'))
    onnx.checker.check_model(model)
    assert [o.name for o in model.graph.output] == ['score', 'map']
