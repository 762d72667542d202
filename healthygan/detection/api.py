"""The Python API (added): a trained run folder, or the weights shipped in pretrained/, as a
detector of new images.

    import healthygan
    det = healthygan.load('pretrained/nih-cxr-mini')
    r = det.score('chest.png')       # r.score, r.map, r.percentile, r.above_reference
    x_hat, mask = det.translate('chest.png')

Images go through the same preprocessing and the same scoring pass (scoring.Scorer) as
`--mode score`, so a score here equals that image's row in scores.csv.
"""
import dataclasses
import json
import os
import types

import numpy as np
import torch
from PIL import Image

from healthygan.data.decode import build_transform, load_image, stretch_to_uint8, to_rgb8
from healthygan.detection import anomaly
from healthygan.detection.lung import LungPrior
from healthygan.detection.pixel_reference import PixelReference
from healthygan.detection.reference import HealthyReference
from healthygan.detection.scoring import Scorer
from healthygan.detection.selection import ensemble_members, resolve_iters
from healthygan.device import resolve_device
from healthygan.errors import ConfigError, DataError
from healthygan.model.networks import Generator
from healthygan.training import run_record
from healthygan.training.checkpoints import load_state_dict_checked

# Optional, beside the checkpoints: the checkpoint, snapshot ensemble and score a run folder
# recommends ({"test_iters": 5500, "ensemble": 4, "score_variant": "mean"}); load() follows it
# unless told otherwise. pretrained/nih-cxr-mini ships one.
DETECTOR_FILE = 'detector.json'


@dataclasses.dataclass
class Result:
    """One image's score, its anomaly map and, where the run logged held-out healthy scores,
    its place among them."""
    score: float              # the chosen score variant (default: the original's mean)
    map: np.ndarray           # |x - x_hat| / 2 averaged over channels, [S, S] in [0, 1]
    variants: dict            # every score variant, as in scores.csv
    percentile: float = None  # % of held-out healthy images scoring at or below it
    above_reference: bool = None  # above the reference's percentile (a label-free threshold)
    source: str = None        # the file, or what was given


class Detector:
    """G of one checkpoint (or a snapshot ensemble) of a run, with the run's architecture,
    lung prior and healthy reference. Build it with load()."""

    def __init__(self, run_dir, G, scorer, image_size, variant, region, reference, members,
                 device, pixels=None):
        self.run_dir, self.G, self.scorer, self.device = run_dir, G, scorer, device
        self.image_size, self.score_variant, self.region = image_size, variant, region
        self.pixels = pixels  # 'ref_z': the healthy pixel reference (mu, scale)
        self.reference, self.members = reference, members
        self.transform = build_transform(image_size)

    def __repr__(self):
        return (f'Detector({self.run_dir!r}, checkpoints {self.members}, {self.image_size} px, '
                f'score {self.score_variant!r}, reference '
                f'{self.reference.describe() if self.reference else None!r})')

    def score(self, x):
        """Score images: a path, a PIL image or a numpy array (a whole radiograph, cropped and
        resized as files are) gives one Result; a list of them, or a tensor batch [N, C, S, S]
        already preprocessed to [-1, 1] at the run's size, gives a list."""
        batch, sources, single = self.prepare(x)
        _, _, amap, variants = self.scorer.translate_scored(batch, self.region, self.pixels)
        variants = {v: anomaly.to_numpy(s).astype(np.float64) for v, s in variants.items()}
        selected = variants[self.score_variant]
        percentiles = above = [None] * len(selected)
        if self.reference is not None:
            percentiles = self.reference.percentiles(selected)
            above = self.reference.above(selected)
        maps = anomaly.to_numpy(amap)[:, 0].astype(np.float32)
        results = [Result(float(selected[k]), maps[k], {v: float(s[k]) for v, s in variants.items()},
                          None if percentiles[k] is None else float(percentiles[k]),
                          None if above[k] is None else bool(above[k]), sources[k])
                   for k in range(len(selected))]
        return results[0] if single else results

    def translate(self, x):
        """(x_hat, mask) of the images, in [-1, 1] and [0, 1]: [3, S, S] and [1, S, S] for one
        image, [N, ...] for several. With a snapshot ensemble, the newest member's."""
        batch, _, single = self.prepare(x)
        x_hat, _, mask = self.scorer.translate(batch)
        x_hat, mask = x_hat.cpu(), mask.float().cpu()
        return (x_hat[0], mask[0]) if single else (x_hat, mask)

    def prepare(self, x):
        """(batch on the device, a name per image, whether one image was given)."""
        if torch.is_tensor(x):
            return self.tensor_batch(x), ['<tensor>'] * (1 if x.dim() == 3 else len(x)), \
                x.dim() == 3
        single = not isinstance(x, (list, tuple))
        items = [x] if single else list(x)
        if not items:
            raise DataError('no images given')
        tensors = [self.transform(self.as_rgb(item)) for item in items]
        sources = [str(item) if isinstance(item, (str, os.PathLike)) else type(item).__name__
                   for item in items]
        return torch.stack(tensors).to(self.device), sources, single

    @staticmethod
    def as_rgb(item):
        """An image file, PIL image or numpy array as 8-bit RGB, read as files are read."""
        if isinstance(item, (str, os.PathLike)):
            return load_image(os.fspath(item))
        if isinstance(item, Image.Image):
            return to_rgb8(item)
        if isinstance(item, np.ndarray) and item.ndim in (2, 3):
            if item.ndim == 3 and item.shape[2] not in (1, 3, 4):
                raise DataError(f'an array image must be (H, W), (H, W, 1), (H, W, 3) or '
                                f'(H, W, 4), not {item.shape}')
            arr = item[..., 0] if item.ndim == 3 and item.shape[2] == 1 else item
            if arr.dtype != np.uint8:  # 16-bit, float: stretched to 8 bits as 16-bit files are
                arr = stretch_to_uint8(arr)
            return to_rgb8(Image.fromarray(arr))
        raise DataError(f'cannot score a {type(item).__name__}: give a path, a PIL image, a numpy '
                        f'array or a tensor batch')

    def tensor_batch(self, x):
        """A preprocessed tensor ([C, S, S] or [N, C, S, S], C 1 or 3, values in [-1, 1])."""
        batch = x[None] if x.dim() == 3 else x
        if batch.dim() != 4 or batch.shape[1] not in (1, 3) or \
                tuple(batch.shape[2:]) != (self.image_size, self.image_size):
            raise DataError(f'a tensor must be [N, 1 or 3, {self.image_size}, {self.image_size}] '
                            f'(preprocessed to this run\'s size, values in [-1, 1]), not '
                            f'{list(x.shape)}; give paths, PIL images or arrays to have them '
                            f'preprocessed')
        if batch.shape[1] == 1:
            batch = batch.expand(-1, 3, -1, -1)
        return batch.float().to(self.device)


def load(run_dir, test_iters=None, ensemble=None, score_variant=None, healthy_percentile=95.0,
         device='auto'):
    """A Detector of a run folder (its --model_save_dir) or shipped weights.

    The architecture comes from the folder's run_config.json; test_iters (a number, 'latest',
    'best_aucp', 'best_val'), ensemble and score_variant default to the folder's detector.json
    where it has one, else to 'latest', 1 and 'mean' (the original's single checkpoint and
    score). The healthy reference is the held-out healthy images' scores the run logged.
    """
    run_dir = os.fspath(run_dir)
    if not os.path.isdir(run_dir):
        raise ConfigError(f'{run_dir} is not a folder: give a run folder (--model_save_dir) '
                          f'holding <iters>-G.ckpt and run_config.json')
    arch = run_record.run_architecture(run_dir)
    if arch is None or not {'image_size', 'g_conv_dim', 'g_repeat_num'} <= set(arch):
        raise ConfigError(f'{run_dir} has no readable run_config.json with the architecture; '
                          f'score it with main.py --mode score and the architecture flags')
    advice = read_detector_file(run_dir)
    test_iters = test_iters if test_iters is not None else advice.get('test_iters', 'latest')
    ensemble = int(ensemble if ensemble is not None else advice.get('ensemble', 1))
    variant = score_variant or advice.get('score_variant', 'mean')
    if variant not in anomaly.SCORE_VARIANTS:
        raise ConfigError(f'score_variant {variant!r}: choose one of '
                          f'{", ".join(anomaly.SCORE_VARIANTS)}')
    device = resolve_device(device)
    iters = resolve_iters(test_iters, run_dir, 'test_iters', variant)
    members = ensemble_members(run_dir, iters, ensemble)
    G = Generator(arch['g_conv_dim'], 0, arch['g_repeat_num']).to(device)
    scorer = Scorer(types.SimpleNamespace(G=G), eager=True)
    scorer.load_members(members, lambda i: load_state_dict_checked(
        G, os.path.join(run_dir, f'{i}-G.ckpt'), 'Generator'))
    prior = LungPrior(types.SimpleNamespace(model_save_dir=run_dir, image_size=arch['image_size'],
                                            score_variant=variant), None, device)
    region = prior.read()
    if variant == 'lung' and region is None:
        raise ConfigError(f"score_variant 'lung' needs the run's lung prior: {prior.note}")
    pixels = None
    if variant == 'ref_z':
        ref = PixelReference(run_dir, arch['image_size'], members)
        if not ref.read():
            raise ConfigError(f"score_variant 'ref_z' needs {ref.path}: build it once with "
                              f"`python main.py --mode score --score_variant ref_z "
                              f"--model_save_dir {run_dir} --test_iters {members[-1]} "
                              f"--ensemble {len(members)} --score_dir IMAGE` where the run's "
                              f"training images are at hand")
        pixels = ref.pair()
        reference = ref.healthy_reference(healthy_percentile)
    else:
        reference = HealthyReference.of_run(run_dir, members, variant, healthy_percentile)
    return Detector(run_dir, G, scorer, arch['image_size'], variant,
                    None if region is None else region.to(device), reference, members, device,
                    pixels)


def read_detector_file(run_dir):
    """detector.json's advice ({} where there is none)."""
    path = os.path.join(run_dir, DETECTOR_FILE)
    if not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            advice = json.load(f)
    except (OSError, ValueError) as e:
        raise ConfigError(f'{path} is not readable JSON ({e}); fix or remove it') from None
    if not isinstance(advice, dict):
        raise ConfigError(f'{path} must hold a JSON object such as {{"ensemble": 4}}')
    return advice
