"""HealthyGAN networks: a one-directional generator with a mask head and a PatchGAN critic.

Layer order, names and shapes follow the original implementation exactly, so that its released
checkpoints (e.g. ``360000-G.ckpt``) load with ``strict=True``.
"""
import torch.nn as nn


def _instance_norm(num_features):
    # affine + running statistics, as in the original (the running statistics are stored in the
    # checkpoints but, since G is never put in eval mode, never used; see Solver.translate).
    return nn.InstanceNorm2d(num_features, affine=True, track_running_stats=True)


class ResidualBlock(nn.Module):
    """Residual block: conv3x3-IN-ReLU-conv3x3-IN, added to the input."""

    def __init__(self, dim_in, dim_out):
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(dim_in, dim_out, kernel_size=3, stride=1, padding=1, bias=False),
            _instance_norm(dim_out),
            nn.ReLU(inplace=True),
            nn.Conv2d(dim_out, dim_out, kernel_size=3, stride=1, padding=1, bias=False),
            _instance_norm(dim_out),
        )

    def forward(self, x):
        return x + self.main(x)


class Generator(nn.Module):
    """Encoder (2 downsamplings) - residual blocks - decoder; 3 image logits + 1 mask logit."""

    def __init__(self, conv_dim=64, c_dim=0, repeat_num=6):
        super().__init__()
        layers = [
            nn.Conv2d(3 + c_dim, conv_dim, kernel_size=7, stride=1, padding=3, bias=False),
            _instance_norm(conv_dim),
            nn.ReLU(inplace=True),
        ]
        curr_dim = conv_dim
        for _ in range(2):
            layers += [
                nn.Conv2d(curr_dim, curr_dim * 2, kernel_size=4, stride=2, padding=1, bias=False),
                _instance_norm(curr_dim * 2),
                nn.ReLU(inplace=True),
            ]
            curr_dim *= 2
        for _ in range(repeat_num):
            layers.append(ResidualBlock(curr_dim, curr_dim))
        for _ in range(2):
            layers += [
                nn.ConvTranspose2d(curr_dim, curr_dim // 2, kernel_size=4, stride=2, padding=1,
                                   bias=False),
                _instance_norm(curr_dim // 2),
                nn.ReLU(inplace=True),
            ]
            curr_dim //= 2
        layers.append(nn.Conv2d(curr_dim, 4, kernel_size=7, stride=1, padding=3, bias=False))
        self.main = nn.Sequential(*layers)

    def forward(self, x):
        """Return (image logits [N,3,H,W], mask logit [N,1,H,W])."""
        out = self.main(x)
        return out[:, :3], out[:, 3:4]


class Discriminator(nn.Module):
    """PatchGAN critic: returns (features, patch logits of side image_size / 2**repeat_num).

    image_size and c_dim are kept for the original's signature; HealthyGAN uses no
    classification head, and the patch map's size follows from the input.
    """

    def __init__(self, image_size=128, conv_dim=64, c_dim=0, repeat_num=6):
        super().__init__()
        layers = [nn.Conv2d(3, conv_dim, kernel_size=4, stride=2, padding=1),
                  nn.LeakyReLU(0.01)]
        curr_dim = conv_dim
        for _ in range(1, repeat_num):
            layers += [nn.Conv2d(curr_dim, curr_dim * 2, kernel_size=4, stride=2, padding=1),
                       nn.LeakyReLU(0.01)]
            curr_dim *= 2
        self.main = nn.Sequential(*layers)
        self.conv1 = nn.Conv2d(curr_dim, 1, kernel_size=3, stride=1, padding=1, bias=False)

    def forward(self, x):
        h = self.main(x)
        return h, self.conv1(h)


def count_parameters(model):
    """Number of parameters of a module."""
    return sum(p.numel() for p in model.parameters())
