"""The paper's losses and the translation, as small pure functions (the original code's formulas).

For an input x, G gives image logits f and a mask logit; the mask is m = (tanh(logit) + 1) / 2
and the translation x_hat = m * tanh(f) + (1 - m) * x.
"""
import torch


def mask_from_logit(mask_logit):
    """Mask in [0, 1]: (tanh(logit) + 1) / 2."""
    return (torch.tanh(mask_logit) + 1) / 2


def blend(x, x_raw, mask):
    """Translation x_hat = m * G's raw output + (1 - m) * x: only the masked region changes."""
    return mask * x_raw + (1 - mask) * x


def generate(G, x):
    """Run G on x: returns (x_hat, x_raw = tanh(image logits), mask)."""
    image_logits, mask_logit = G(x)
    x_raw = torch.tanh(image_logits)
    mask = mask_from_logit(mask_logit)
    return blend(x, x_raw, mask), x_raw, mask


def d_loss_real_fn(out_real):
    """WGAN critic loss on real (healthy) images: -mean D(x_B)."""
    return -out_real.mean()


def d_loss_fake_fn(out_fake):
    """WGAN critic loss on translated images: mean D(x_hat_A)."""
    return out_fake.mean()


def g_adv_loss(out_fake):
    """Generator's adversarial loss: -mean D(x_hat)."""
    return -out_fake.mean()


def gradient_penalty(out, x):
    """WGAN-GP: mean over samples of (||dD/dx||_2 - 1)^2, gradient flattened per sample."""
    grad = torch.autograd.grad(outputs=out, inputs=x, grad_outputs=torch.ones_like(out),
                               retain_graph=True, create_graph=True, only_inputs=True)[0]
    return penalty_of_gradient(grad)


def penalty_of_gradient(grad):
    """(||grad||_2 - 1)^2 per sample, averaged; grad: dD/dx, [N, C, H, W]."""
    grad = grad.reshape(grad.size(0), -1)
    return ((grad.pow(2).sum(dim=1).sqrt() - 1) ** 2).mean()


def interpolate(x_real, x_fake, alpha):
    """Random points between real and fake images, detached, with gradients enabled."""
    return (alpha * x_real.detach() + (1 - alpha) * x_fake.detach()).requires_grad_(True)


def reconstruction_loss(x, x_raw, mask):
    """mean |x - (m * x + (1 - m) * x_raw)|: outside the mask G's raw output must equal x."""
    return (x - (mask * x + (1 - mask) * x_raw)).abs().mean()


def identity_loss(x, x_raw):
    """mean |x - x_raw| on healthy images, on the raw output before blending."""
    return (x - x_raw).abs().mean()


def mask_small_loss(mask):
    """(mean m)^2: keeps the mask small."""
    return mask.mean() ** 2


def mask_zero_one_loss(mask, center=0.5, epsilon=0.01):
    """mean 1 / (|m - 0.5| + 0.01) - 1 / 0.51: pushes the mask towards 0 or 1 (minimum 0)."""
    return (1 / ((mask - center).abs() + epsilon)).mean() - 1 / (center + epsilon)


def mask_loss(mask, lambda_msmall, lambda_mzerone):
    """Weighted sum of the two mask terms for one path; returns (loss, small term, 0-1 term)."""
    small, zero_one = mask_small_loss(mask), mask_zero_one_loss(mask)
    return lambda_msmall * small + lambda_mzerone * zero_one, small, zero_one


def learning_rate(i, lr0, num_iters, num_iters_decay, lr_update_step, schedule='original'):
    """Learning rate in force during iteration i (0-based).

    The original lowers the rate by lr0 / num_iters_decay at the end of every iteration j whose
    j + 1 is a multiple of lr_update_step and exceeds num_iters - num_iters_decay. With the
    defaults that is 100 steps of lr0 / 100000: the rate ends at 99.9% of lr0 (no real decay).
    'linear' lowers it by lr0 * lr_update_step / num_iters_decay instead, reaching ~0 at the end.
    """
    start = max(num_iters - num_iters_decay, 0)
    # decrements already applied: multiples of lr_update_step in (start, i]
    n = max(i // lr_update_step - start // lr_update_step, 0)
    if schedule == 'original':
        return lr0 - n * (lr0 / float(num_iters_decay))
    if schedule == 'linear':
        return max(lr0 * (1 - n * lr_update_step / float(num_iters_decay)), 0.0)
    raise ValueError(f'unknown lr schedule {schedule!r}')


def nonfinite_terms(loss):
    """Names of the loss terms that are NaN or infinite (one device sync)."""
    names = list(loss)
    if not names:
        return []
    finite = torch.stack([torch.isfinite(loss[k]).all() for k in names]).tolist()
    return [k for k, ok in zip(names, finite) if not ok]
