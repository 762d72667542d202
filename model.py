"""HealthyGAN networks, as in the paper: a one-directional generator with a mask head (3 image
logits + 1 mask logit) and a PatchGAN critic.

They live in healthygan/model/networks.py, so that the package (and the ``healthygan`` command) stands
without the repository root on the path; this file keeps the original's ``from model import
Generator`` working.
"""
from healthygan.model.networks import Discriminator, Generator, ResidualBlock, count_parameters

__all__ = ['Generator', 'Discriminator', 'ResidualBlock', 'count_parameters']
