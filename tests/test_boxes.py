"""Lesion boxes: reading, the loader's geometry, and the pointing game, top share and pixel
AUROC of maps whose answer is known."""
import os

import numpy as np
import pytest
from PIL import Image

from conftest import shared_path
from healthygan.reports import boxes
from healthygan.data.datasets import FolderImages
from healthygan.errors import DataError


def write_csv(path, text):
    path.write_text(text)
    return str(path)


def one_box(x, y, w, h, name='a.png'):
    return {'file': name, 'x': x, 'y': y, 'w': w, 'h': h, 'finding': None, 'line': 2}


def square_mask(size=64, x0=10, y0=20, w=16, h=12):
    mask = np.zeros((size, size), dtype=bool)
    mask[y0:y0 + h, x0:x0 + w] = True
    return mask


# ------------------------------------------------------------------------------------------------ #
#                                 Maps whose answer is known                                       #
# ------------------------------------------------------------------------------------------------ #

@pytest.mark.parametrize('sigma', [0, 2])
def test_a_map_lighting_exactly_the_box_scores_one(sigma):
    mask = square_mask(w=20, h=12)  # 240 pixels >= the top 5% (205)
    r = boxes.image_box_metrics(mask.astype(float), mask, sigma=sigma)
    assert r['pointing'] == 1 and r['top_share'] == 1 and r['pixel_AUROC'] == 1
    assert r['area'] == pytest.approx(240 / 4096)


def test_a_box_smaller_than_the_top_share_caps_it_at_its_area():
    mask = square_mask(w=4, h=4)  # 16 pixels: at most 16 of the top 205 can be inside
    r = boxes.image_box_metrics(mask.astype(float), mask)
    assert r['top_share'] == pytest.approx(16 / 205)
    assert r['pointing'] == 1 and r['pixel_AUROC'] == 1


def test_a_map_lighting_only_outside_scores_zero():
    mask = square_mask()
    r = boxes.image_box_metrics((~mask).astype(float), mask)
    assert r['pointing'] == 0 and r['top_share'] == 0 and r['pixel_AUROC'] == 0


@pytest.mark.parametrize('sigma', [0, 4])
def test_a_flat_map_scores_chance_exactly(sigma):
    """Ties in expectation: the peak is any pixel, the top 5% any pixels, ties count half."""
    mask = square_mask(w=20, h=15)
    r = boxes.image_box_metrics(np.full(mask.shape, 0.3), mask, sigma=sigma)
    area = mask.mean()
    assert r['pointing'] == pytest.approx(area)
    assert r['top_share'] == pytest.approx(area)
    assert r['pixel_AUROC'] == 0.5
    assert boxes.chance('pointing', area) == area and boxes.chance('pixel_AUROC', area) == 0.5


def test_random_maps_score_chance_on_average():
    rng = np.random.default_rng(0)
    mask = square_mask(w=24, h=16)
    runs = [boxes.image_box_metrics(rng.random(mask.shape), mask) for _ in range(400)]
    assert np.mean([r['pointing'] for r in runs]) == pytest.approx(mask.mean(), abs=0.04)
    assert np.mean([r['top_share'] for r in runs]) == pytest.approx(mask.mean(), abs=0.01)
    assert np.mean([r['pixel_AUROC'] for r in runs]) == pytest.approx(0.5, abs=0.01)


def test_smoothing_finds_a_broad_blob_over_a_single_hot_pixel():
    mask = square_mask(x0=30, y0=30, w=12, h=12)
    amap = np.zeros(mask.shape)
    yy, xx = np.mgrid[:64, :64]
    amap += 0.5 * np.exp(-((yy - 36) ** 2 + (xx - 36) ** 2) / (2 * 4 ** 2))
    amap[5, 5] = 1.0  # one hot pixel far from the box
    assert boxes.pointing_game(amap, mask, sigma=0) == 0
    assert boxes.pointing_game(amap, mask, sigma=2) == 1


def test_bootstrap_mean_and_summary():
    mean, low, high = boxes.bootstrap_mean([1.0] * 10)
    assert (mean, low, high) == (1.0, 1.0, 1.0)
    mean, low, high = boxes.bootstrap_mean([0, 1] * 10, n_bootstrap=500, seed=3)
    assert mean == 0.5 and 0.2 < low < 0.5 < high < 0.8
    assert boxes.bootstrap_mean([0, 1] * 10, 500, 3) == (mean, low, high)  # seeded
    per_image = [{'pointing': 1.0, 'top_share': 0.5, 'pixel_AUROC': 0.9, 'area': 0.1},
                 {'pointing': 0.0, 'top_share': 0.3, 'pixel_AUROC': 0.7, 'area': 0.3}]
    s = boxes.summarise(per_image, n_bootstrap=200)
    assert s['n_images'] == 2
    assert s['pointing']['mean'] == 0.5 and s['pointing']['chance'] == pytest.approx(0.2)
    assert s['pixel_AUROC']['chance'] == 0.5 and s['top_share']['mean'] == pytest.approx(0.4)


# ------------------------------------------------------------------------------------------------ #
#                                 Reading: one clear line each                                     #
# ------------------------------------------------------------------------------------------------ #

def test_reads_rows_keeping_the_finding_and_ignoring_other_columns(tmp_path):
    path = write_csv(tmp_path / 'b.csv', 'file,folder,finding,x,y,w,h\n'
                     'a.png,validation/anomalous,Mass,1.5,2,3,4\na.png,v,,5,6,7,8\n')
    rows = boxes.read_boxes(path)
    assert [(r['file'], r['finding'], r['x'], r['h'], r['line']) for r in rows] == \
        [('a.png', 'Mass', 1.5, 4.0, 2), ('a.png', None, 5.0, 8.0, 3)]


@pytest.mark.parametrize('text, words', [
    ('file,x,y,w\na.png,1,2,3\n', 'lacks the column(s) h'),
    ('file,x,y,w,h\n', 'holds no boxes'),
    ('file,x,y,w,h\na.png,1,two,3,4\n', "line 2: y is 'two', not a number"),
    ('file,x,y,w,h\na.png,1,2,3,nan\n', 'not a finite number'),
    ('file,x,y,w,h\na.png,1,2,3,4\na.png,1,2,0,4\n', 'line 3: the box of a.png has size 0 x 4'),
    ('file,x,y,w,h\na.png,1,2,3,-4\n', 'has size 3 x -4; w and h must be positive'),
    ('file,x,y,w,h\n,1,2,3,4\n', 'the file column is empty'),
])
def test_bad_rows_get_one_clear_error(tmp_path, text, words):
    path = write_csv(tmp_path / 'b.csv', text)
    with pytest.raises(DataError) as e:
        boxes.read_boxes(path)
    assert words in str(e.value) and path in str(e.value) and '\n' not in str(e.value)


def test_a_missing_boxes_file_is_named(tmp_path):
    with pytest.raises(DataError, match='cannot read the boxes file .*nope.csv'):
        boxes.read_boxes(str(tmp_path / 'nope.csv'))


def test_files_match_by_name_or_trailing_folders():
    paths = ['/d/validation/anomalous/a.png', '/d/validation/anomalous/b.png', '/d/test/a2.png']
    rows = [one_box(1, 1, 2, 2, 'a.png'), one_box(1, 1, 2, 2, 'anomalous/b.png'),
            one_box(3, 3, 2, 2, 'a.png')]
    matched = boxes.match_boxes(rows, paths, 'b.csv')
    assert {p: len(b) for p, b in matched.items()} == {paths[0]: 2, paths[1]: 1}


def test_a_file_not_evaluated_or_ambiguous_is_an_error():
    with pytest.raises(DataError, match=r'b.csv line 2: c.png is not among the 2 evaluated'):
        boxes.match_boxes([one_box(1, 1, 2, 2, 'c.png')], ['/d/a.png', '/d/b.png'], 'b.csv')
    with pytest.raises(DataError, match='matches 2 evaluated images'):
        boxes.match_boxes([one_box(1, 1, 2, 2, 'a.png')], ['/d/x/a.png', '/d/y/a.png'], 'b.csv')


def test_a_box_partly_outside_is_clipped_wholly_outside_is_an_error():
    clipped = boxes.check_inside([one_box(-2, 90, 10, 20)], (100, 100), 'b.csv')[0]
    assert (clipped['x'], clipped['y'], clipped['w'], clipped['h']) == (0, 90, 8, 10)
    with pytest.raises(DataError, match=r'b.csv line 2: the box of a.png .* lies outside the '
                                        r'image \(100 x 80 px\)'):
        boxes.check_inside([one_box(10, 85, 5, 5)], (100, 80), 'b.csv')


def test_a_box_in_the_cropped_away_rows_leaves_nothing_to_measure():
    # the crop cuts the top 8 of 100 rows
    with pytest.raises(DataError, match='lie wholly in the part of the image the crop cuts'):
        boxes.box_mask([one_box(10, 0, 50, 6)], (100, 100), 32, 'b.csv')
    with pytest.raises(DataError, match='cover the whole cropped image'):
        boxes.box_mask([one_box(0, 0, 100, 100)], (100, 100), 32, 'b.csv')


def test_a_box_smaller_than_a_map_pixel_keeps_its_pixel():
    mask = boxes.box_mask([one_box(50.1, 60.1, 0.5, 0.5)], (100, 108), 10)
    assert mask.sum() == 1


# ------------------------------------------------------------------------------------------------ #
#              Geometry: a box lands where the loader puts the pixels it covers                    #
# ------------------------------------------------------------------------------------------------ #

@pytest.mark.parametrize('width, height, box', [
    (300, 280, (60, 100, 120, 90)),   # wide: the crop cuts the top rows and both sides
    (240, 320, (30, 140, 100, 110)),  # tall: the top rows, then rows above and below
    (256, 256, (84, 127, 104, 100)),  # the NIH PNGs' size
])
def test_box_mask_covers_the_bright_pixels_the_loader_produces(tmp_path, width, height, box):
    x, y, w, h = box
    arr = np.full((height, width), 40, dtype=np.uint8)
    arr[y:y + h, x:x + w] = 220
    path = str(tmp_path / 'bright.png')
    Image.fromarray(arr).save(path)
    image_size = 64
    x_in, _, _, error = FolderImages([path], [1], image_size)[0]  # the scoring path
    assert error == ''
    pixels = (x_in[0].numpy() + 1) / 2 * 255
    size = boxes.sizes_of([path])[path]
    assert size == (width, height)
    mask = boxes.box_mask(boxes.check_inside([one_box(x, y, w, h)], size, 'b.csv'), size,
                          image_size)
    bright = pixels > (40 + 220) / 2
    # a pixel whose centre is inside the box is more bright than dark, except near a corner,
    # where the resize's filter reaches both edges
    disagree = np.argwhere(mask != bright)
    assert len(disagree) <= 4
    assert pixels[mask].min() > 40 + 0.25 * 180 and pixels[~mask].max() < 220 - 0.25 * 180
    assert mask[pixels > 215].all() and not mask[pixels < 45].any()


def test_the_shared_validation_boxes_map_into_the_images():
    csv_path = shared_path('data', 'nih-cxr-mini', 'boxes.csv')
    root = os.path.dirname(csv_path)
    rows = boxes.read_boxes(csv_path)
    paths = sorted({os.path.join(root, 'validation', 'anomalous', r['file']) for r in rows
                    if os.path.exists(os.path.join(root, 'validation', 'anomalous', r['file']))})
    kept = [r for r in rows if any(p.endswith('/' + r['file']) for p in paths)]
    assert (len(paths), len(kept)) == (27, 31)  # 31 boxes on 27 validation images
    matched = boxes.match_boxes(kept, paths, csv_path)
    sizes = boxes.sizes_of(paths)
    areas = [boxes.box_mask(boxes.check_inside(b, sizes[p], csv_path), sizes[p], 64).mean()
             for p, b in matched.items()]
    assert len(areas) == 27 and 0.05 < np.mean(areas) < 0.3


def test_a_spreadsheets_byte_order_mark_is_read(tmp_path):
    path = tmp_path / 'b.csv'
    path.write_bytes('\ufefffile,x,y,w,h\na.png,1,2,3,4\n'.encode('utf-8'))
    assert boxes.read_boxes(str(path))[0]['file'] == 'a.png'
