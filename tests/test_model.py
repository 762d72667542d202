"""Networks: the original's state-dict keys and shapes, output shapes, checkpoint round trip."""
import json

import pytest
import torch

from conftest import shared_path
from model import Discriminator, Generator, count_parameters


def shapes(module):
    return {k: list(v.shape) for k, v in module.state_dict().items()}


def test_state_dicts_match_the_original_json():
    ref = json.load(open(shared_path('reference', 'original_state_dict.json')))
    G, D = Generator(), Discriminator(image_size=256)
    assert list(shapes(G)) == list(ref['generator'])  # same keys, same order
    assert shapes(G) == ref['generator']
    assert len(ref['generator']) == 103
    assert shapes(D) == ref['discriminator_256']
    assert len(ref['discriminator_256']) == 13


def test_parameter_counts_of_the_default_networks():
    # The numbers the original's README and ORIGINAL.md give for G and for D at 256 px.
    assert count_parameters(Generator(64, 0, 6)) == 8_417_984
    assert count_parameters(Discriminator(256, 64, 0, 6)) == 44_721_088


def test_generator_and_patchgan_shapes():
    G, D = Generator(8, 0, 2), Discriminator(32, 8, 0, 3)
    image_logits, mask_logit = G(torch.randn(2, 3, 32, 32))
    assert image_logits.shape == (2, 3, 32, 32) and mask_logit.shape == (2, 1, 32, 32)
    features, patch = D(torch.randn(2, 3, 32, 32))
    assert patch.shape == (2, 1, 32 // 2 ** 3, 32 // 2 ** 3)
    assert features.shape == (2, 8 * 2 ** 2, 4, 4)


def test_bare_state_dict_checkpoint_round_trip(tmp_path):
    G = Generator(8, 0, 2)
    path = tmp_path / '10-G.ckpt'
    torch.save(G.state_dict(), path)
    loaded = torch.load(path, weights_only=True)
    G2 = Generator(8, 0, 2)
    G2.load_state_dict(loaded, strict=True)
    x = torch.randn(1, 3, 16, 16)
    for a, b in zip(G(x), G2(x)):
        assert torch.equal(a, b)
    with pytest.raises(RuntimeError):
        Generator(16, 0, 2).load_state_dict(loaded, strict=True)
