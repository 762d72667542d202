"""Detection: the trained detector (G or a snapshot ensemble, the score variant, the fitted
references), its scores and maps, and the choice of checkpoints; the Python API."""
