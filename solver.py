"""Solver: builds G and D and drives them: train (WGAN-GP with the identity, reconstruction and
mask terms), test (translation grids) and testAUC (anomaly scores and AUROC).

The class lives in healthygan/solver.py, so that the ``healthygan`` command finds it inside the
package; this file keeps the original's ``from solver import Solver``.
"""
from healthygan.solver import Solver

__all__ = ['Solver']
