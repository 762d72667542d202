"""Test-time behaviour of the generator: per-image statistics, as the original."""
import torch

from conftest import tiny_solver


def make_solver(tmp_path):
    return tiny_solver('--model_save_dir', str(tmp_path))


def scores(solver, x):
    from metrics import anomaly_score
    x_hat, _, _ = solver.translate(x)
    return anomaly_score(x, x_hat)


def test_test_time_uses_per_image_statistics_not_the_stored_running_ones(tmp_path):
    torch.manual_seed(0)
    solver = make_solver(tmp_path)
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    reference = scores(solver, x)

    # A checkpoint whose stored running statistics are absurd must score exactly the same.
    state = solver.G.state_dict()
    for k in state:
        if k.endswith('running_mean'):
            state[k] = torch.full_like(state[k], 50.0)
        if k.endswith('running_var'):
            state[k] = torch.full_like(state[k], 1e4)
    torch.save(state, tmp_path / '5-G.ckpt')
    solver2 = make_solver(tmp_path)
    solver2.restore_model(5, load_D=False)
    assert torch.allclose(scores(solver2, x), reference, atol=1e-6)

    # ... while eval() (running statistics) would change them: the test above is not vacuous.
    solver2.G.eval()
    with torch.no_grad():
        from healthygan.losses import generate
        from metrics import anomaly_score
        x_hat_eval, _, _ = generate(solver2.G, x)
    assert not torch.allclose(anomaly_score(x, x_hat_eval), reference, atol=1e-3)


def test_an_images_score_does_not_depend_on_its_batch(tmp_path):
    torch.manual_seed(1)
    solver = make_solver(tmp_path)
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    together = scores(solver, x)
    alone = torch.cat([scores(solver, x[k:k + 1]) for k in range(4)])
    assert torch.allclose(together, alone, atol=1e-6)
