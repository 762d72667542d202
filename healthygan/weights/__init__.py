"""Weights shipped inside the package (added), so that `healthygan.load(NAME)` works after
`pip install .` from any folder: each NAME.pt is one detector file (Detector.save) of the run in
pretrained/NAME of the clone, made there by
`healthygan.load('pretrained/NAME').save('healthygan/weights/NAME.pt')`."""
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def names():
    """The names of the shipped detectors, e.g. ['nih-cxr-mini']."""
    return sorted(f[:-3] for f in os.listdir(HERE) if f.endswith('.pt'))


def path_of(name):
    """The detector file shipped under this name, or None where there is none."""
    return os.path.join(HERE, f'{name}.pt') if name in names() else None
