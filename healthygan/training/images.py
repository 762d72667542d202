"""Images for people: the value range shown and the translation grids of training and test mode."""
import torch

from healthygan.model.losses import generate


def denorm(x):
    """[-1, 1] -> [0, 1]."""
    return ((x + 1) / 2).clamp(0, 1)


def translation_grid(G, x_A, x_B):
    """Columns: x_A, raw, x_hat, mask, x_B, raw, x_hat, mask (in [-1, 1]), one row per sample."""
    columns = []
    for x in (x_A, x_B):
        x_hat, x_raw, mask = generate(G, x)
        # The original drew the mask with a sigmoid here (a display bug); this shows the mask
        # the model actually uses, (tanh + 1) / 2, mapped to [-1, 1] for display.
        columns += [x, x_raw, x_hat, mask.expand_as(x) * 2 - 1]
    return torch.cat(columns, dim=3)
