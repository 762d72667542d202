"""--diff_augment: what the critic sees (DiffAugment)."""
import pytest
import torch

import main as cli
import solver as S
from conftest import tiny_args


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
