"""Anomaly scores, AUROC and the pixel metrics: healthygan/detection/anomaly.py (the scores) and
healthygan/reports/statistics.py (the metrics), re-exported here so that ``import metrics`` (the
tools, users' notebooks) keeps working."""
from healthygan.detection.anomaly import *  # noqa: F401,F403
from healthygan.reports.statistics import *  # noqa: F401,F403
