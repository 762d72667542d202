"""Each loss and helper against values computed by hand."""
import pytest
import torch

from healthygan.model import losses  # noqa: E402


def test_mask_from_logit_and_blend():
    logit = torch.tensor([0.0, 100.0, -100.0])
    assert torch.allclose(losses.mask_from_logit(logit), torch.tensor([0.5, 1.0, 0.0]))
    x, x_raw = torch.tensor([1.0, 1.0, 1.0]), torch.tensor([-1.0, -1.0, -1.0])
    # m = 0.5 averages, m = 1 takes G's output, m = 0 keeps the input
    assert torch.allclose(losses.blend(x, x_raw, losses.mask_from_logit(logit)),
                          torch.tensor([0.0, -1.0, 1.0]))


def test_generate_applies_tanh_and_the_mask():
    class FixedG(torch.nn.Module):
        def forward(self, x):
            return torch.full_like(x, 100.0), torch.zeros_like(x[:, :1])  # tanh -> 1, m = 0.5
    x = torch.full((1, 3, 2, 2), -1.0)
    x_hat, x_raw, mask = losses.generate(FixedG(), x)
    assert torch.allclose(x_raw, torch.ones_like(x))
    assert torch.allclose(mask, torch.full((1, 1, 2, 2), 0.5))
    assert torch.allclose(x_hat, torch.zeros_like(x))


def test_wgan_terms():
    out = torch.tensor([[1.0, 3.0], [2.0, 6.0]])
    assert losses.d_loss_real_fn(out).item() == -3.0
    assert losses.d_loss_fake_fn(out).item() == 3.0
    assert losses.g_adv_loss(out).item() == -3.0


def test_gradient_penalty_of_a_linear_critic():
    # D(x) = sum(w * x) per sample has gradient w everywhere: GP = (||w|| - 1)^2.
    w = torch.tensor([3.0, 4.0]).reshape(1, 2, 1, 1)  # ||w|| = 5
    x = torch.randn(4, 2, 1, 1, requires_grad=True)
    out = (x * w).sum(dim=(1, 2, 3))
    gp = losses.gradient_penalty(out, x)
    assert gp.item() == pytest.approx(16.0)
    # create_graph=True: the penalty itself is differentiable (double backward)
    w2 = w.clone().requires_grad_(True)
    gp2 = losses.gradient_penalty((x * w2).sum(dim=(1, 2, 3)), x)
    gp2.backward()
    # d/dw (||w|| - 1)^2 = 2 (||w|| - 1) w / ||w|| = 2 * 4 * w / 5
    assert torch.allclose(w2.grad.flatten(), torch.tensor([4.8, 6.4]))


def test_interpolate_is_detached_and_between():
    a, b = torch.zeros(2, 1, 1, 1, requires_grad=True), torch.ones(2, 1, 1, 1)
    x = losses.interpolate(a, b, torch.tensor([0.25, 1.0]).reshape(2, 1, 1, 1))
    assert x.requires_grad and x.grad_fn is None
    assert torch.allclose(x.flatten(), torch.tensor([0.75, 0.0]))


def test_reconstruction_and_identity_losses():
    x = torch.tensor([1.0, -1.0, 0.5, 0.0])
    x_raw = torch.tensor([0.0, 0.0, 0.0, 0.0])
    # mask 1: x_rec = x, loss 0; mask 0: x_rec = x_raw, loss = mean |x - x_raw|
    assert losses.reconstruction_loss(x, x_raw, torch.ones(4)).item() == 0.0
    assert losses.reconstruction_loss(x, x_raw, torch.zeros(4)).item() == pytest.approx(0.625)
    # mask 0.5 everywhere: |x - (x + x_raw)/2| = |x|/2 -> 0.3125
    assert losses.reconstruction_loss(x, x_raw, torch.full((4,), 0.5)).item() == \
        pytest.approx(0.3125)
    assert losses.identity_loss(x, x_raw).item() == pytest.approx(0.625)


def test_mask_losses():
    m = torch.tensor([0.0, 1.0, 0.5, 0.5])
    assert losses.mask_small_loss(m).item() == pytest.approx(0.25)
    # binary masks cost nothing, m = 0.5 costs 1/0.01 - 1/0.51
    assert losses.mask_zero_one_loss(torch.tensor([0.0, 1.0])).item() == pytest.approx(0.0, abs=1e-5)
    expected_half = 100 - 1 / 0.51
    assert losses.mask_zero_one_loss(torch.tensor([0.5])).item() == pytest.approx(expected_half)
    expected = (1 / 0.51 * 2 + 100 * 2) / 4 - 1 / 0.51
    assert losses.mask_zero_one_loss(m).item() == pytest.approx(expected, rel=1e-5)
    total, small, zero_one = losses.mask_loss(m, 2.0, 3.0)
    assert total.item() == pytest.approx(2 * 0.25 + 3 * expected, rel=1e-5)
    assert small.item() == pytest.approx(0.25) and zero_one.item() == pytest.approx(expected)


def simulate_original_lr(lr0, num_iters, num_iters_decay, lr_update_step):
    """The original's loop: use lr during iteration i, then maybe lower it."""
    lr, used = lr0, []
    for i in range(num_iters):
        used.append(lr)
        if (i + 1) % lr_update_step == 0 and (i + 1) > (num_iters - num_iters_decay):
            lr -= lr0 / float(num_iters_decay)
    return used, lr


def test_learning_rate_matches_the_original_loop():
    used, _ = simulate_original_lr(1e-4, 50, 20, 5)
    for i, lr in enumerate(used):
        assert losses.learning_rate(i, 1e-4, 50, 20, 5) == pytest.approx(lr, rel=1e-12)
    # the defaults: no decay at all before 100,000 and 99.9% of lr0 at the very end
    assert losses.learning_rate(100_000, 1e-4, 200_000, 100_000, 1000) == 1e-4
    assert losses.learning_rate(101_000, 1e-4, 200_000, 100_000, 1000) == \
        pytest.approx(1e-4 - 1e-9)
    _, final = simulate_original_lr(1e-4, 200_000, 100_000, 1000)
    assert final == pytest.approx(0.999e-4)
    assert losses.learning_rate(200_000, 1e-4, 200_000, 100_000, 1000) == pytest.approx(final)


def test_linear_learning_rate_reaches_zero():
    assert losses.learning_rate(0, 1e-4, 200_000, 100_000, 1000, 'linear') == 1e-4
    assert losses.learning_rate(150_000, 1e-4, 200_000, 100_000, 1000, 'linear') == \
        pytest.approx(0.5e-4)
    assert losses.learning_rate(200_000, 1e-4, 200_000, 100_000, 1000, 'linear') == 0.0
    with pytest.raises(ValueError):
        losses.learning_rate(0, 1e-4, 10, 10, 1, 'cosine')
