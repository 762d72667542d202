"""report.html, its plots, panels and the 16-bit anomaly maps: healthygan/reports/report.py, re-exported
here so that ``import report`` keeps working."""
from healthygan.reports.report import *  # noqa: F401,F403
