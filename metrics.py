"""Anomaly scores, AUROC and the pixel metrics: healthygan/metrics.py, re-exported here so that
``import metrics`` (the tools, users' notebooks) keeps working."""
from healthygan.metrics import *  # noqa: F401,F403
