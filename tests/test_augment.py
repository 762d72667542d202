"""--augment affine: per-item draws, what each parameter does, the same batches from the cache and
the per-step path, nothing applied to the images that are scored, exact resume."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

import data_loader as dl
import main as cli
import solver as S
from conftest import tiny_args
from test_cache import assert_equal_batches, batches, config_for

IDENTITY = [[0.0, 1.0, 0.0, 0.0, 1.0, 0.0]]


def square(size=32, lo=8, hi=16):
    """A batch of one image: -1 everywhere, +1 on the square [lo, hi) x [lo, hi)."""
    x = -torch.ones(1, 3, size, size)
    x[..., lo:hi, lo:hi] = 1
    return x


def centroid(x):
    w = (x[0, 0] + 1).clamp(min=0)
    ys, xs = torch.meshgrid(torch.arange(x.shape[-2]), torch.arange(x.shape[-1]), indexing='ij')
    return float((w * ys).sum() / w.sum()), float((w * xs).sum() / w.sum())


def test_identity_parameters_leave_the_image_unchanged():
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    assert torch.allclose(dl.apply_affine(x, IDENTITY * 2), x, atol=1e-6)


def test_each_parameter_does_what_its_name_says():
    x = square()
    area = lambda y: float((y > 0).sum())
    zoomed = dl.apply_affine(x, [[0.0, 1.25, 0.0, 0.0, 1.0, 0.0]])
    assert area(zoomed) > 1.3 * area(x)  # zoom > 1: the content grows
    shifted = dl.apply_affine(x, [[0.0, 1.0, 0.25, 0.0, 1.0, 0.0]])  # +0.25 of [-1, 1] = 4 px
    (y0, x0), (y1, x1) = centroid(x), centroid(shifted)
    assert x1 - x0 == pytest.approx(4, abs=0.3) and y1 == pytest.approx(y0, abs=0.1)
    rotated = dl.apply_affine(x, [[np.pi / 2, 1.0, 0.0, 0.0, 1.0, 0.0]])
    assert torch.allclose(rotated, torch.rot90(x, 1, (-2, -1)), atol=1e-4) or \
        torch.allclose(rotated, torch.rot90(x, -1, (-2, -1)), atol=1e-4)
    flat = torch.full((1, 3, 4, 4), 0.5)
    out = dl.apply_affine(flat, [[0.0, 1.0, 0.0, 0.0, 1.2, -0.1]])
    assert torch.allclose(out, torch.full_like(flat, 0.5 * 1.2 - 0.1))
    assert dl.apply_affine(torch.ones(1, 3, 4, 4), [[0.0, 1.0, 0.0, 0.0, 1.5, 0.5]]).max() == 1


def test_draws_are_per_item_reproducible_scaled_and_leave_the_flips_alone():
    a = dl.item_affine(0, 7)
    assert a.shape == (2, 6) and np.array_equal(a, dl.item_affine(0, 7))
    assert not np.allclose(a, dl.item_affine(0, 8)) and not np.allclose(a, dl.item_affine(1, 7))
    half, identity = dl.item_affine(0, 7, 0.5), np.array(IDENTITY * 2)
    assert np.allclose(half - identity, (a - identity) / 2)
    r = dl.AFFINE_RANGES
    assert np.all(np.abs(a[:, 0]) <= np.deg2rad(r['rotate'])) and np.all(
        np.abs(a[:, 1] - 1) <= r['scale'])
    # the flips come from their own stream: --augment affine keeps --augment flip's flips
    assert dl.item_flips(0, 7) == tuple(bool(v) for v in
                                        np.random.default_rng([0, 7]).random(2) < 0.5)


def nested_layout(root):
    rng = np.random.default_rng(0)
    for sub, n in [('mixed', 5), ('healthy', 3), ('test/normal', 2), ('test/anomalous', 3)]:
        os.makedirs(root / sub)
        for k in range(n):
            arr = rng.integers(0, 256, (30 + 3 * k, 24 + 2 * k), dtype=np.uint8)
            Image.fromarray(arr).save(root / sub / f'{k}.png')
    return {name: dl.list_images(str(root / sub)) for name, sub in
            [('mixed', 'mixed'), ('healthy', 'healthy'), ('test_normal', 'test/normal'),
             ('test_anomalous', 'test/anomalous')]}


def test_cache_and_per_step_paths_give_the_same_augmented_batches(tmp_path):
    split = nested_layout(tmp_path / 'data')
    kw = dict(augment='affine', aug_strength=1.0)
    on = config_for(tmp_path / 'data', tmp_path, **kw)
    off = config_for(tmp_path / 'data', tmp_path, data_cache='off', **kw)
    plain = config_for(tmp_path / 'data', tmp_path)
    new, old = dl.get_loader(on, 'train', split), dl.get_loader(off, 'train', split)
    ref = dl.get_loader(plain, 'train', split)
    for epoch, start in [(0, 0), (2, 4)]:
        for loader in (new, old, ref):
            loader.sampler.epoch, loader.sampler.start = epoch, start
        a, b, c = batches(new), batches(old), batches(ref)
        for x, y, z in zip(a, b, c):
            for u, v, w in zip(x, y, z):
                assert torch.allclose(u, v, atol=1e-5)  # one batch at a time vs item by item
                assert (u - w).abs().mean() > 0.01  # and they are augmented
                assert u.min() >= -1 and u.max() <= 1
    # the images that are scored are never augmented
    for mode in ('testAUC', 'test'):
        assert_equal_batches(batches(dl.get_loader(on, mode, split)),
                             batches(dl.get_loader(plain, mode, split)))


def test_aug_strength_out_of_range_is_refused(tmp_path, folder_dataset, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(tiny_args(tmp_path, folder_dataset, '--augment', 'affine', '--aug_strength', '0'))
    assert e.value.code == 2 and '--aug_strength 0.0' in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ #
#                         --diff_augment: what the critic sees (DiffAugment)                        #
# ------------------------------------------------------------------------------------------------ #

def test_diff_augment_policy_parsing():
    assert S.diff_augment_policy('off') == ()
    assert S.diff_augment_policy('translation, cutout') == ('translation', 'cutout')
    with pytest.raises(ValueError, match='unknown policy flip'):
        S.diff_augment_policy('translation,flip')


def test_diff_augment_translation_shifts_and_cutout_blanks_a_half_square():
    x = torch.arange(16 * 16, dtype=torch.float32).view(1, 1, 16, 16).repeat(8, 3, 1, 1) + 1
    torch.manual_seed(0)
    y = S.diff_augment(x, ('translation',))
    for k in range(8):  # each image is x shifted by one integer offset, zeros coming in
        shifted = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                   if torch.equal(y[k, 0], torch.roll(x[k, 0], (dy, dx), (0, 1)) * (
                       y[k, 0] != 0))]
        assert len(shifted) == 1, k
        assert torch.equal(y[k, 0], y[k, 1])  # the same change on every channel
    z = S.diff_augment(x, ('cutout',))
    assert ((z == 0).flatten(1).sum(1) == 3 * 8 * 8).all()  # a square of half the side
    xr = x.clone().requires_grad_(True)
    S.diff_augment(xr, ('color', 'translation', 'cutout')).sum().backward()
    assert xr.grad.abs().sum() > 0  # differentiable: G learns through the change


def test_unknown_diff_augment_policy_is_refused(tmp_path, folder_dataset, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(tiny_args(tmp_path, folder_dataset, '--diff_augment', 'rotate'))
    assert e.value.code == 2 and '--diff_augment rotate: unknown policy rotate' in \
        capsys.readouterr().err


def test_mean_image_is_the_same_from_the_cache_and_from_decoding(tmp_path):
    split = nested_layout(tmp_path / 'data')
    on = config_for(tmp_path / 'data', tmp_path)
    off = config_for(tmp_path / 'data', tmp_path, data_cache='off')
    a, b = dl.mean_image(split['healthy'], on), dl.mean_image(split['healthy'], off)
    expected = torch.stack([dl.build_transform(16)(dl.load_image(p))
                            for p in split['healthy']]).mean(0)
    assert a.shape == b.shape == (3, 16, 16)
    assert torch.allclose(a, expected, atol=1e-5) and torch.allclose(b, expected, atol=1e-5)


def test_lung_prior_reads_the_training_cache_without_building_another(tmp_path):
    split = nested_layout(tmp_path / 'data')
    config = config_for(tmp_path / 'data', tmp_path)
    dl.get_loader(config, 'train', split)  # builds the training set's cache
    built = sorted(os.listdir(tmp_path / 'cache'))
    mean = dl.mean_image(split['healthy'], config, among=split['mixed'] + split['healthy'])
    assert sorted(os.listdir(tmp_path / 'cache')) == built
    assert torch.allclose(mean, dl.mean_image(split['healthy'], config), atol=1e-6)
