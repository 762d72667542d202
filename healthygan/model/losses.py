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


# The weighted sums of the paper's two losses, shared by the training step and the benchmark's
# copy of the original loop; each network's weights are also what the NaN guard names.
LOSS_WEIGHTS = {'D': ('lambda_gp',),
                'G': ('lambda_rec', 'lambda_id', 'lambda_mask', 'lambda_msmall', 'lambda_mzerone')}


def loss_weights(config, net):
    """{flag: value} of the loss weights of network net ('G' or 'D')."""
    return {flag: getattr(config, flag) for flag in LOSS_WEIGHTS[net]}


def critic_loss(out_real, out_fake, d_loss_gp, lambda_gp):
    """The critic's WGAN-GP loss, -D(x_B) + D(x_hat_A) + lambda_gp * GP, and its logged terms."""
    d_loss_real = d_loss_real_fn(out_real)
    d_loss_fake = d_loss_fake_fn(out_fake)
    d_loss = d_loss_real + d_loss_fake + lambda_gp * d_loss_gp
    return d_loss, {'D/loss_real': d_loss_real, 'D/loss_fake': d_loss_fake, 'D/loss_gp': d_loss_gp}


def generator_loss(x_A, x_raw_A, mask_A, out_A, x_B, x_raw_B, mask_B, out_B, lambda_rec,
                   lambda_id, lambda_mask, lambda_msmall, lambda_mzerone):
    """G's loss over its two paths and its logged terms; also the mask terms of each path,
    {'OT': (small, zero-one), 'OO': ...}, for mask_stats."""
    # Mixed path (original -> target): fool D, and leave everything outside the mask alone.
    g_loss_fake = g_adv_loss(out_A)
    g_loss_rec = reconstruction_loss(x_A, x_raw_A, mask_A)
    # Healthy path (original -> original): fool D, and reproduce the image exactly.
    g_loss_fake_id = g_adv_loss(out_B)
    g_loss_id = identity_loss(x_B, x_raw_B)
    # Mask terms, the two paths averaged.
    mask_loss_A, small_A, zo_A = mask_loss(mask_A, lambda_msmall, lambda_mzerone)
    mask_loss_B, small_B, zo_B = mask_loss(mask_B, lambda_msmall, lambda_mzerone)
    g_loss_mask = 0.5 * mask_loss_A + 0.5 * mask_loss_B
    g_loss = (g_loss_fake + g_loss_fake_id + lambda_id * g_loss_id
              + lambda_rec * g_loss_rec + lambda_mask * g_loss_mask)
    terms = {'G/loss_fake': g_loss_fake, 'G/loss_rec': g_loss_rec,
             'G/loss_fake_id': g_loss_fake_id, 'G/loss_id': g_loss_id, 'G/loss_mask': g_loss_mask}
    return g_loss, terms, {'OT': (small_A, zo_A), 'OO': (small_B, zo_B)}


def mask_stats(path, mask_logit, small, zero_one):
    """The logged mask terms of one path (OT: mixed -> target, OO: healthy -> itself)."""
    return {f'Mask/{path}_min': mask_logit.min(), f'Mask/{path}_max': mask_logit.max(),
            f'Mask/{path}_small': small, f'Mask/{path}_zo': zero_one}


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
