"""The Detector as a file another program runs without this package (added): TorchScript, and
ONNX where the optional onnx package is installed (pip install 'healthygan[onnx]'). The exported
module takes a batch [N, 3, S, S] in [-1, 1] (the detector's preprocessing already done) and
returns (score [N], map [N, 1, S, S]): the selected score variant and the anomaly map."""
import copy
import importlib.util
import json
import os
import warnings

import torch
from torch import nn

from healthygan.detection import anomaly
from healthygan.errors import ConfigError
from healthygan.training.fast import generate_amp


def onnx_available():
    """Whether the optional onnx package is installed."""
    return importlib.util.find_spec('onnx') is not None


class ScoreAndMap(nn.Module):
    """A Detector's score and map alone, as plain tensor operations that trace: no inference
    mode, no fast path, only the selected variant (the others' sizes would be frozen too)."""

    def __init__(self, detector):
        super().__init__()
        variant = anomaly.VARIANTS[detector.variant]
        if not anomaly.is_fitted(variant, detector.fitted()):
            raise ConfigError(f'score variant {detector.variant!r} needs its fitted reference, '
                              f'which this detector lacks')
        self.detector = copy.deepcopy(detector).cpu()
        for m in self.detector.modules():
            # InstanceNorm in training mode normalises with each image's statistics; the
            # running statistics are never read, so the exported graph need not update them.
            if isinstance(m, nn.InstanceNorm2d) and m.track_running_stats:
                m.track_running_stats, m.running_mean, m.running_var = False, None, None
        self.detector.train()  # G runs in training mode, as in the original (detector.py)
        self.variant = variant

    def forward(self, x):
        """(score [N], map [N, 1, S, S]) as Detector.score_all computes them."""
        det, v = self.detector, self.variant
        fitted = det.fitted()
        amap, score = 0, 0
        for G in det.generators:
            x_hat, _, mask, _ = generate_amp(G, x)
            one = anomaly.anomaly_map(x, x_hat)
            amap = amap + one
            if not v.of_map:
                score = score + v.score(anomaly.Translation(x, x_hat, mask, one.flatten(1)),
                                        fitted)
        n = len(det.generators)
        amap = amap / n
        return (v.score(amap, fitted) if v.of_map else score / n), amap


def example_batch(image_size, n=2):
    """A fixed batch [n, 3, S, S] in [-1, 1] to trace with."""
    ramp = torch.linspace(-1, 1, image_size * image_size).reshape(1, 1, image_size, image_size)
    return torch.cat([ramp.roll(k * image_size, dims=2).expand(1, 3, -1, -1) for k in range(n)])


def to_torchscript(detector, path):
    """Trace the detector's score and map and save them as TorchScript at path, with the
    detector's identity (detector.json inside the file); returns the traced module."""
    module = ScoreAndMap(detector)
    x = example_batch(detector.image_size)
    # The branches the tracer warns of depend on the fitted references and the image size
    # alone, fixed in the file; the traced scores are compared with the module's below.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter('ignore', torch.jit.TracerWarning)
        traced = torch.jit.trace(module, x, check_trace=False)
        expected, got = module(x), traced(x)
    if not all(torch.allclose(a, b) for a, b in zip(expected, got)):
        raise ConfigError(f'score variant {detector.variant!r} does not trace to the same '
                          f'scores; export another --score_variant')
    identity = {**detector.identity(), 'inputs': '[N, 3, S, S] in [-1, 1]',
                'outputs': ['score [N]', 'map [N, 1, S, S]']}
    traced.save(os.fspath(path), _extra_files={'detector.json': json.dumps(identity)})
    return traced


def to_onnx(detector, path):
    """Export the detector's score and map as ONNX at path (a dynamic batch dimension)."""
    module = ScoreAndMap(detector)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter('ignore', torch.jit.TracerWarning)
        torch.onnx.export(module, (example_batch(detector.image_size),), os.fspath(path),
                          input_names=['images'], output_names=['score', 'map'],
                          dynamic_axes={'images': {0: 'N'}, 'score': {0: 'N'}, 'map': {0: 'N'}},
                          dynamo=False)
