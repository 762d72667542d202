"""--boxes through the real command line (testAUC and score) and Detector.localise, on a tiny
trained run whose anomalous test images carry a bright square: the localisation block, the
added scores.csv columns, the printout, the report's panels, one line per bad box, and no change
to a run without --boxes."""
import json
import os

import numpy as np
import pytest
from PIL import Image

import healthygan
import main as cli
from conftest import eval_args, read_csv, write_folder_layout
from healthygan.reports import boxes, localisation

# write_image's bright square: rows 15-24, columns 12-21 of the 40 x 44 px files
SQUARE = dict(x=12, y=15, w=10, h=10)
# main's testAUC metrics.json keys with the tiny run's defaults (no validation set, no masks)
METRICS_KEYS = {
    'image_AUROC', 'image_AUROC_ci95', 'image_AUPRC', 'threshold', 'threshold_source',
    'sensitivity', 'specificity', 'accuracy', 'F1', 'confusion', 'n_normal', 'n_anomalous', 'checkpoint',
    'iteration', 'score', 'score_variant', 'image_size', 'bootstrap', 'variants', 'report'}
ADDED_COLUMNS = ['n_boxes', 'box_area'] + [f'{m}_{k}' for m in localisation.MAPS
                                           for k in boxes.METRICS]


def boxes_csv(path, rows):
    """A boxes CSV of (file, x, y, w, h) rows, with a finding column."""
    lines = ['file,finding,x,y,w,h'] + [f'{f},Mass,{x},{y},{w},{h}' for f, x, y, w, h in rows]
    path.write_text('\n'.join(lines) + '\n')
    return str(path)


def square_rows(n=4):
    """The bright square of each anomalous test image (named with its folder: the normal images
    have the same file names), and a second box on the first."""
    rows = [(f'anomalous/img_{k}.png', *SQUARE.values()) for k in range(n)]
    return rows + [('anomalous/img_0.png', 0, 40, 8, 4)]


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    """A tiny run trained for 2 iterations on write_folder_layout, and its boxes file."""
    tmp = tmp_path_factory.mktemp('boxes')
    data = write_folder_layout(tmp / 'data', 6, 4)
    cli.main(eval_args(tmp, data, 'train', '--mode', 'train', '--num_iters', '2'))
    return tmp, data, boxes_csv(tmp / 'boxes.csv', square_rows())


@pytest.fixture(scope='module')
def boxed(run):
    """testAUC with --boxes: (its result folder, the printout)."""
    import contextlib
    import io
    tmp, data, csv_path = run
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        cli.main(eval_args(tmp, data, 'boxed', '--bootstrap', '200', '--boxes', csv_path))
    return tmp / 'boxed', out.getvalue()


def read_json(path):
    with open(path) as f:
        return json.load(f)


def test_testauc_writes_the_localisation_block(run, boxed):
    folder, _ = boxed
    block = read_json(folder / 'metrics.json')['localisation']
    assert block['n_images'] == 4 and block['n_boxes'] == 5
    assert block['boxes'] == run[2] and block['top_percent'] == 5
    assert block['chance']['pixel_AUROC'] == 0.5
    rows = {r['path']: r for r in read_csv(folder / 'scores.csv')}
    areas = [float(r['box_area']) for r in rows.values() if r['box_area']]
    assert block['chance']['pointing'] == pytest.approx(np.mean(areas), abs=1e-6)
    assert block['chance']['top_share'] == pytest.approx(np.mean(areas), abs=1e-6)
    for name in ('map', 'mask'):
        for metric in boxes.METRICS:
            entry = block[name][metric]
            values = [float(r[f'{name}_{metric}']) for r in rows.values() if r['n_boxes']]
            assert entry['mean'] == pytest.approx(np.mean(values), abs=1e-6)
            low, high = entry['ci95']
            assert 0 <= low <= entry['mean'] <= high <= 1
    assert 'anomaly map |x - x_hat| / 2' in block['map_source']  # --score_variant mean


def test_scores_csv_has_the_numbers_of_boxed_images_only(run, boxed):
    folder, _ = boxed
    rows = read_csv(folder / 'scores.csv')
    assert list(rows[0])[-len(ADDED_COLUMNS):] == ADDED_COLUMNS
    for r in rows:
        anomalous = r['path'].replace('\\', '/').split('/')[-2] == 'anomalous'
        assert all(bool(r[c]) == anomalous for c in ADDED_COLUMNS), r
    first = next(r for r in rows if r['path'].endswith(os.path.join('anomalous', 'img_0.png')))
    assert first['n_boxes'] == '2'
    # the map's numbers are those of the map written to maps/ (16-bit, so to 1e-4)
    amap = np.asarray(Image.open(folder / first['anomaly_map']), dtype=np.float64) / 65535
    mask = boxes.box_mask(boxes.check_inside(
        [b for b in boxes.read_boxes(run[2]) if b['file'] == 'anomalous/img_0.png'], (40, 44),
        'b'), (40, 44), 32)
    assert float(first['box_area']) == pytest.approx(mask.mean(), abs=1e-6)
    assert float(first['map_pixel_AUROC']) == pytest.approx(boxes.pixel_auroc(amap, mask),
                                                            abs=1e-3)


def test_the_printout_has_a_short_table(boxed):
    _, out = boxed
    lines = out.splitlines()
    start = next(k for k, line in enumerate(lines) if line.startswith('Localisation: 5 boxes '
                                                                      'on 4 images'))
    assert 'pointing game' in lines[start + 1] and 'pixel AUROC' in lines[start + 1]
    assert lines[start + 2].startswith('score map') and lines[start + 3].startswith("G's mask")
    assert lines[start + 4].split()[0] == 'chance' and lines[start + 4].split()[-1] == '0.500'


def test_the_report_draws_the_boxes_on_the_panels(boxed):
    folder, _ = boxed
    html = (folder / 'report.html').read_text()
    assert 'Localisation (5 boxes on 4 images)' in html and 'images with boxes' in html
    cyan = np.array(report_colour())
    boxed_panel = np.asarray(Image.open(folder / 'panels' / 'anomalous' / 'img_1.png'))[..., :3]
    plain_panel = np.asarray(Image.open(folder / 'panels' / 'normal' / 'img_1.png'))[..., :3]
    assert not (plain_panel == cyan).all(axis=2).any()
    hits = (boxed_panel == cyan).all(axis=2)
    tile = boxed_panel.shape[0] - 28  # 14 px header and footer; tiles are square
    # the box outline on the input, the mask and the map, not on the translation
    drawn = [hits[:, k * tile:(k + 1) * tile].any() for k in range(boxed_panel.shape[1] // tile)]
    assert drawn == [True, False, True, True], drawn
    # the input tile's outline: the square at 9.6 to 17.6 map pixels (12 to 22 file pixels
    # less the 3 rows cut away, times 32 / 40), upscaled 4 times, below the 14 px header
    rows = np.where(hits[:, :tile].any(axis=1))[0]
    assert abs(rows.min() - (14 + 4 * 9.6)) <= 1 and abs(rows.max() - (14 + 4 * 17.6 - 1)) <= 1


def report_colour():
    from healthygan.reports.report import BOX_COLOUR
    return BOX_COLOUR


def test_without_boxes_nothing_changes(run, boxed):
    tmp, data, _ = run
    cli.main(eval_args(tmp, data, 'plain', '--bootstrap', '200'))
    plain = read_json(tmp / 'plain' / 'metrics.json')
    assert set(plain) == METRICS_KEYS
    with_boxes = read_json(boxed[0] / 'metrics.json')
    assert set(with_boxes) == METRICS_KEYS | {'localisation'}
    assert {k: v for k, v in with_boxes.items() if k != 'localisation'} == plain
    header = list(read_csv(tmp / 'plain' / 'scores.csv')[0])
    assert list(read_csv(boxed[0] / 'scores.csv')[0]) == header + ADDED_COLUMNS
    assert 'Localisation' not in (tmp / 'plain' / 'report.html').read_text()


def score_args(tmp, data, out, *extra):
    return eval_args(tmp, data, out, '--mode', 'score', '--score_dir', str(data / 'test'),
                     '--report', 'false', *extra)


def test_score_mode_and_the_api_agree(run):
    import healthygan
    tmp, data, csv_path = run
    summary = cli.main(score_args(tmp, data, 'scored', '--boxes', csv_path))
    block = summary['localisation']
    assert read_json(tmp / 'scored' / 'summary.json')['localisation'] == block
    assert block['n_images'] == 4 and block['n_boxes'] == 5
    rows = {os.path.normpath(r['path']): r for r in read_csv(tmp / 'scored' / 'scores.csv')}
    det = healthygan.load(str(tmp / 'models'), test_iters=2, device='cpu')
    paths = sorted(rows)
    found = healthygan.localise(det, paths, csv_path)
    assert set(found['per_image']) == {p for p in paths if rows[p]['n_boxes']}
    for p, r in found['per_image'].items():
        for name in localisation.MAPS:
            for metric in boxes.METRICS:
                assert r[name][metric] == pytest.approx(float(rows[p][f'{name}_{metric}']),
                                                        abs=1e-5), (p, name, metric)
    for name in localisation.MAPS:
        for metric in boxes.METRICS:
            assert found['summary'][name][metric]['mean'] == pytest.approx(
                block[name][metric]['mean'], abs=1e-5)
    assert found['summary']['chance'] == pytest.approx(block['chance'])
    # without resamples: no interval, written as null and printed as the mean alone
    bare = healthygan.localise(det, paths, csv_path, n_bootstrap=0)['summary']
    assert bare['map']['pointing']['ci95'] == [None, None]
    assert localisation.table_lines(bare)[2].split()[2] == \
        f"{bare['map']['pointing']['mean']:.3f}"


BAD = {  # kind -> (rows, what the one line says)
    'outside the image': ([('anomalous/img_1.png', 100, 100, 10, 10)], 'lies outside the image'),
    'zero size': ([('anomalous/img_1.png', 12, 15, 0, 10)], 'w and h must be positive'),
    'a file not in the set': ([('anomalous/img_9.png', 12, 15, 10, 10)],
                              'is not among the 8 evaluated images'),
    'files not in the set': ([('anomalous/img_9.png', 12, 15, 10, 10),
                              ('other/img_1.png', 12, 15, 10, 10)],
                             'img_9.png is not among the 8 evaluated images (2 rows name images '
                             'not evaluated)'),
    'an ambiguous name': ([('img_1.png', 12, 15, 10, 10)], 'matches 2 evaluated images'),
    'not a number': ([('anomalous/img_1.png', 'left', 15, 10, 10)], 'not a number'),
}


@pytest.mark.parametrize('mode', ['testAUC', 'score'])
@pytest.mark.parametrize('kind', list(BAD))
def test_a_bad_box_is_one_line_and_exit_2(kind, mode, run, tmp_path, capsys):
    tmp, data, _ = run
    rows, says = BAD[kind]
    path = boxes_csv(tmp_path / 'bad.csv', square_rows(2) + rows)
    argv = (eval_args(tmp, data, f'bad_{mode}', '--boxes', path) if mode == 'testAUC'
            else score_args(tmp, data, f'bad_{mode}', '--boxes', path))
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and err.startswith('error: ') and path in err, err
    assert says in err, err
    assert not (tmp / f'bad_{mode}' / 'scores.csv').exists()  # stopped before scoring


@pytest.mark.parametrize('argv, says', [
    (['--boxes', 'none.csv'], 'cannot read the boxes file none.csv'),
    (['--mode', 'test', '--boxes', 'b.csv'], '--boxes measures the maps of --mode testAUC'),
])
def test_a_missing_boxes_file_or_a_wrong_mode_is_one_line(argv, says, run, capsys):
    tmp, data, _ = run
    with pytest.raises(SystemExit) as e:
        cli.main(eval_args(tmp, data, 'bad_file', *argv))
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and says in err, err
