"""Reports: the testAUC and score outputs, their metrics and statistics, report.html and its plots,
translation grids."""
