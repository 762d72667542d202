"""The trained detector as one module (added): the generator of one checkpoint or of each member
of a snapshot ensemble, the selected score variant, and every reference fitted to the run (the
lung region, the healthy pixel reference, the held-out healthy images' scores and the label-free
percentile) as registered buffers, so that its state dict is the whole detector and one file
ships it. forward() is the one scoring pass of testAUC, score, AUCp, validation and the API.

G stays in training mode, as in the original: InstanceNorm normalises every image with its own
statistics, and the running statistics stored in the checkpoint are never used (calling eval()
would change the released model's scores)."""
import dataclasses
import os

import numpy as np
import torch
from torch import nn

from healthygan.data.decode import build_transform
from healthygan.detection import anomaly, statistics
from healthygan.detection.inputs import prepare
from healthygan.detection.reference import HealthyReference
from healthygan.errors import ConfigError, warn
from healthygan.model.networks import Generator
from healthygan.training.checkpoints import load_checked, load_state_dict_checked, save_atomic
from healthygan.training.fast import generate_amp

FORMAT = 'healthygan-detector'  # what a detector file says it is


def detector_file(members, image_size, variant):
    """The file name of the detector of these checkpoints at this size under this score."""
    return f'detector_{"-".join(str(i) for i in members)}_{image_size}px_{variant}.pt'


@dataclasses.dataclass
class Result:
    """One image's score, its anomaly map and, where the detector holds held-out healthy scores,
    its place among them; the names are scores.csv's columns in --mode score.

    in_distribution: False where the image looks unlike the held-out healthy radiographs the
    detector was fitted to (its mean intensity, contrast or sharpness outside their range, or
    colour): its score and percentile then mean little (a warning names it). None where the
    detector holds no such range and the image is grey. The check changes no score."""
    pred_score: float         # the chosen score variant (default: the original's mean)
    anomaly_map: np.ndarray   # |x - x_hat| / 2 averaged over channels, [S, S] in [0, 1]
    variants: dict            # every score variant, scores.csv's score_<variant> columns
    healthy_percentile: float = None  # % of held-out healthy images scoring at or below it
    above_healthy_threshold: bool = None  # above the reference's percentile (label-free)
    source: str = None        # the file, or what was given
    in_distribution: bool = None  # like the healthy reference's radiographs (see above)

    # The names of the first release, kept as aliases for one more.
    score = property(lambda self: self.pred_score)
    map = property(lambda self: self.anomaly_map)
    percentile = property(lambda self: self.healthy_percentile)
    above_reference = property(lambda self: self.above_healthy_threshold)


class Detector(nn.Module):
    """G (or a snapshot ensemble's members, oldest first, the tested one last) and the fitted
    references; built from explicit arguments, filled by load_members and the fit_* methods."""

    def __init__(self, g_conv_dim, g_repeat_num, image_size, members, variant='mean',
                 run_id=None, percentile=95.0, generators=None):
        super().__init__()
        if variant not in anomaly.SCORE_VARIANTS:
            raise ConfigError(f'score variant {variant!r}: choose one of '
                              f'{", ".join(anomaly.SCORE_VARIANTS)}')
        self.g_conv_dim, self.g_repeat_num = int(g_conv_dim), int(g_repeat_num)
        self.image_size, self.members = int(image_size), [int(i) for i in members]
        self.variant, self.run_id, self.percentile = variant, run_id, float(percentile)
        # generators: modules to score with as they are (the training G, for AUCp)
        self.generators = nn.ModuleList(generators or [
            Generator(self.g_conv_dim, 0, self.g_repeat_num) for _ in self.members or [0]])
        self.register_buffer('region', torch.zeros(0))  # 'lung': [1, 1, H, W] of 0 / 1
        self.register_buffer('mu', torch.zeros(0, dtype=torch.float64))  # 'ref_z': [H, W]
        self.register_buffer('scale', torch.zeros(0, dtype=torch.float64))
        # the held-out healthy images' scores under the variant: the label-free reference
        self.register_buffer('healthy_scores', torch.zeros(0, dtype=torch.float64))
        # [2, 3]: the healthy range of statistics.STATISTICS (the out-of-distribution check)
        self.register_buffer('statistics_range', torch.zeros(0, dtype=torch.float64))
        self.reference_source = None  # where the healthy scores come from, in words
        self.amp_dtype, self.channels_last = None, False  # the fast paths asked for, if any

    # ------------------------------------------------------------------------------------ #
    #                                  Scoring                                               #
    # ------------------------------------------------------------------------------------ #

    def generate(self, G, x):
        """x_hat, x_raw, mask of one generator under inference_mode (the original: no_grad;
        same values)."""
        G.train()
        with torch.inference_mode():
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            x_hat, x_raw, mask, _ = generate_amp(G, x, self.amp_dtype)
        return x_hat, x_raw, mask

    def forward(self, x):
        """{'score': [N], 'map': [N, 1, H, W], 'x_hat', 'mask', 'variants': {name: [N]}}.

        With a snapshot ensemble the map and every score are the means over the members'
        translations; x_hat and mask are the tested (last) checkpoint's. Every variant the
        fitted references allow is scored ('lung' with a region, 'ref_z' with a pixel
        reference, from the ensemble's map as the reference was)."""
        out = self.score_all(x)
        if self.variant not in out['variants']:
            raise ConfigError(f'score variant {self.variant!r} needs its fitted reference, '
                              f'which this detector lacks')
        return {'score': out['variants'][self.variant], **out}

    def score_all(self, x):
        """forward()'s result without the selected score (its reference may not be fitted)."""
        fitted = self.fitted()
        amap, variants = 0, {}
        for G in self.generators:
            x_hat, _, mask = self.generate(G, x)
            amap = amap + anomaly.anomaly_map(x, x_hat)
            for v, s in anomaly.score_variants(x, x_hat, mask, fitted=fitted).items():
                variants[v] = variants.get(v, 0) + s
        n = len(self.generators)
        amap, variants = amap / n, {v: s / n for v, s in variants.items()}
        variants.update(anomaly.map_scores(amap, fitted))
        return {'map': amap, 'x_hat': x_hat, 'mask': mask, 'variants': variants}

    def fitted(self):
        """{need: the fitted reference, or None} for the variants of anomaly.VARIANTS."""
        return {'region': self.region if self.region.numel() else None,
                'pixels': (self.mu, self.scale) if self.mu.numel() else None}

    def scored_variants(self):
        """The names of the variants forward() gives, in anomaly.VARIANTS' order."""
        fitted = self.fitted()
        return [name for name, v in anomaly.VARIANTS.items() if anomaly.is_fitted(v, fitted)]

    def drawn_map(self, amap):
        """The selected variant's own map of anomaly maps [N, H, W], or None where it has none."""
        draw = anomaly.VARIANTS[self.variant].draw
        return None if draw is None else draw(amap, self.fitted())

    @torch.no_grad()
    def score_images(self, x, batch_size, maps=False):
        """Every score variant of each image of a CPU tensor, {name: [N]} (maps: also the
        anomaly maps [N, H, W], float64 on the CPU), leaving the generators' running statistics
        as they were (so that scoring during training changes nothing of the run, and a resumed
        run equals an unbroken one)."""
        buffers = [b.clone() for b in self.generators.buffers()]
        device = self.region.device
        scores, kept = {}, []
        for batch in torch.split(x, batch_size):
            out = self.score_all(batch.to(device))
            for name, s in out['variants'].items():
                scores.setdefault(name, []).append(s.cpu())
            if maps:
                kept.append(out['map'][:, 0].double().cpu())
        for b, saved in zip(self.generators.buffers(), buffers):
            b.copy_(saved)
        scores = {name: torch.cat(s) for name, s in scores.items()}
        return (scores, torch.cat(kept)) if maps else scores

    def run_as(self, amp_dtype=None, channels_last=False):
        """Score with the fast paths the flags asked for (--amp, --channels_last); self."""
        self.amp_dtype, self.channels_last = amp_dtype, channels_last
        if channels_last:
            self.generators.to(memory_format=torch.channels_last)
        return self

    @property
    def score_variant(self):
        return self.variant

    @property
    def device(self):
        return self.mu.device

    def score(self, x):
        """Score images: a path, a PIL image or a numpy array (a whole radiograph, cropped and
        resized as files are) gives one Result; a folder (its images, sorted), a list of them, or
        a tensor batch [N, C, S, S] already preprocessed to [-1, 1] at the detector's size,
        gives a list. Arrays: uint8 as they are; floats within [0, 1] as intensities (x * 255,
        so a picture scores as its uint8 self); other floats and 16-bit arrays stretched from
        their own min..max to 8 bits, as 16-bit files are. NaN, empty or tiny inputs are
        refused; see Result.in_distribution for images unlike radiographs."""
        batch, sources, single = prepare(x, build_transform(self.image_size), self.image_size,
                                         self.device)
        out = self(batch)
        variants = {v: anomaly.to_numpy(s).astype(np.float64) for v, s in out['variants'].items()}
        selected = variants[self.variant]
        percentiles = above = [None] * len(selected)
        reference = self.reference
        if reference is not None:
            percentiles, above = reference.percentiles(selected), reference.above(selected)
        maps = anomaly.to_numpy(out['map'])[:, 0].astype(np.float32)
        verdicts = self.check_distribution(batch, sources)
        results = [Result(float(selected[k]), maps[k],
                          {v: float(s[k]) for v, s in variants.items()},
                          None if percentiles[k] is None else float(percentiles[k]),
                          None if above[k] is None else bool(above[k]), sources[k], verdicts[k])
                   for k in range(len(selected))]
        return results[0] if single else results

    def check_distribution(self, x, sources):
        """[N] in_distribution of images [N, 3, S, S] (statistics.check), warning once about
        those outside."""
        verdicts, reasons = statistics.check(x, self.statistics_range)
        flagged = [k for k, v in enumerate(verdicts) if v is False]
        if flagged:
            k = flagged[0]
            warn(f'{len(flagged)} of {len(verdicts)} image(s) look unlike the healthy '
                 f'radiographs this detector was fitted to, e.g. {sources[k]} ({reasons[k]}): '
                 f'their scores mean little (Result.in_distribution is False)')
        return verdicts

    def translate(self, x):
        """(x_hat, mask) of the images, in [-1, 1] and [0, 1]: [3, S, S] and [1, S, S] for one
        image, [N, ...] for several. With a snapshot ensemble, the newest member's."""
        batch, _, single = prepare(x, build_transform(self.image_size), self.image_size,
                                   self.device)
        x_hat, _, mask = self.generate(self.generators[-1], batch)
        x_hat, mask = x_hat.cpu(), mask.float().cpu()
        return (x_hat[0], mask[0]) if single else (x_hat, mask)

    # ------------------------------------------------------------------------------------ #
    #                                  Fitting                                               #
    # ------------------------------------------------------------------------------------ #

    def load_members(self, run_dir, announce=False):
        """Load each member's <member>-G.ckpt of a run folder, oldest first."""
        for G, member in zip(self.generators, self.members):
            if announce:
                print(f'Loading the trained models from step {member}...')
            load_state_dict_checked(G, os.path.join(run_dir, f'{member}-G.ckpt'), 'Generator')

    def fit_region(self, region):
        """The 'lung' score's region [1, 1, H, W] (or None: no lung score)."""
        self.region = torch.zeros(0) if region is None else region.float().to(self.mu.device)

    def fit_pixels(self, mu, scale):
        """The 'ref_z' score's healthy pixel reference [H, W] (float64; None: no ref_z score)."""
        if mu is None:
            mu = scale = torch.zeros(0, dtype=torch.float64)
        self.mu, self.scale = mu.double().to(self.mu.device), scale.double().to(self.mu.device)

    def fit_statistics(self, healthy_range):
        """The healthy range [2, 3] of the global statistics (or None: no range known)."""
        self.statistics_range = torch.zeros(0, dtype=torch.float64) if healthy_range is None \
            else torch.as_tensor(healthy_range, dtype=torch.float64).to(self.mu.device)

    def fit_reference(self, scores, source):
        """The held-out healthy images' scores under the variant (or None: no reference)."""
        self.healthy_scores = torch.zeros(0, dtype=torch.float64) if scores is None else \
            torch.as_tensor(scores, dtype=torch.float64).sort().values
        self.reference_source = source if scores is not None else None

    @torch.no_grad()
    def fit(self, healthy, batch_size=16):
        """Fit the healthy pixel reference and the held-out healthy scores to held-out healthy
        images [N, 3, S, S] in [-1, 1] (the region, where 'lung' is used, first): each image's
        'ref_z' against the others, so that its percentile among them is not too strict."""
        from healthygan.detection.pixel_reference import leave_one_out_scores
        maps = torch.cat([self.score_all(b.to(self.mu.device))['map'][:, 0].double().cpu()
                          for b in torch.split(healthy, batch_size)])
        mu, scale = anomaly.healthy_pixel_reference(maps)
        self.fit_pixels(mu.float(), scale.float())  # scored as saved: a re-read one scores alike
        self.fit_statistics(statistics.fit_range(statistics.global_statistics(healthy)))
        if anomaly.VARIANTS[self.variant].of_map:  # scored against the others' reference
            self.fit_reference(leave_one_out_scores(maps), f'{len(maps)} held-out healthy '
                               f'images, each against the others')
        else:
            self.fit_reference(self.score_images(healthy, batch_size)[self.variant].double(),
                               f'{len(maps)} held-out healthy images')
        return maps

    @property
    def reference(self):
        """The label-free reference of the selected score (reference.py), or None."""
        if not self.healthy_scores.numel():
            return None
        return HealthyReference(self.healthy_scores.cpu().numpy(), self.percentile, self.members,
                                self.variant, self.reference_source)

    # ------------------------------------------------------------------------------------ #
    #                                  One file                                              #
    # ------------------------------------------------------------------------------------ #

    def identity(self):
        """What a detector file says of itself besides its tensors (nanoGPT's model_args)."""
        return {'format': FORMAT, 'g_conv_dim': self.g_conv_dim,
                'g_repeat_num': self.g_repeat_num, 'image_size': self.image_size,
                'members': self.members, 'variant': self.variant, 'run_id': self.run_id,
                'percentile': self.percentile, 'reference_source': self.reference_source}

    def save(self, path):
        """The whole detector in one file, written atomically (safe-loaded by load)."""
        state = {k: v.detach().cpu() for k, v in self.state_dict().items()}
        save_atomic({**self.identity(), 'state_dict': state}, os.fspath(path))

    @classmethod
    def load(cls, path, device='cpu'):
        """A detector saved by save(), read with weights_only, or one ConfigError naming it."""
        path = os.fspath(path)
        saved = load_checked(path, 'detector')
        if not isinstance(saved, dict) or saved.get('format') != FORMAT or \
                not isinstance(saved.get('state_dict'), dict):
            raise ConfigError(f'{path} is no detector file (save one with Detector.save or '
                              f'tools/ship_weights.py)')
        det = cls(*checked_identity(path, saved))
        state = dict(saved['state_dict'])
        state.setdefault('statistics_range', torch.zeros(0, dtype=torch.float64))  # older files
        for name in ('region', 'mu', 'scale', 'healthy_scores', 'statistics_range'):
            if not torch.is_tensor(state.get(name)):
                raise ConfigError(f'{path}: the fitted {name!r} is missing; save the detector '
                                  f'again')
            setattr(det, name, torch.empty_like(state[name]))  # the fitted sizes
        try:
            det.load_state_dict(state)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[-1].strip()
            raise ConfigError(f'{path} does not fit its own architecture ({first}); save the '
                              f'detector again') from None
        checked_fitted(path, det)
        det.reference_source = saved.get('reference_source')
        return det.to(device)

    def extra_repr(self):
        ref = self.reference
        return (f'checkpoints {self.members}, {self.image_size} px, score {self.variant!r}, '
                f'reference {ref.describe() if ref else None!r}')


def checked_identity(path, saved):
    """The constructor's arguments from a detector file, or one ConfigError naming the file."""
    def whole(name):
        v = saved.get(name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f'{path}: {name} {v!r} is no positive whole number; save the '
                              f'detector again')
        return v
    members = saved.get('members')
    if not isinstance(members, list) or not members or \
            not all(isinstance(m, int) and not isinstance(m, bool) for m in members):
        raise ConfigError(f'{path}: members {members!r} names no checkpoints; save the '
                          f'detector again')
    variant = saved.get('variant')
    if variant not in anomaly.SCORE_VARIANTS:
        raise ConfigError(f'{path}: score variant {variant!r} is none of '
                          f'{", ".join(anomaly.SCORE_VARIANTS)}; save the detector again')
    percentile = saved.get('percentile', 95.0)
    if isinstance(percentile, bool) or not isinstance(percentile, (int, float)) or \
            not 0 <= percentile <= 100:
        raise ConfigError(f'{path}: percentile {percentile!r} is not from 0 to 100')
    return (whole('g_conv_dim'), whole('g_repeat_num'), whole('image_size'), members, variant,
            saved.get('run_id'), percentile)


def checked_fitted(path, det):
    """Refuse a detector file whose fitted references are broken (fitted.py)."""
    from healthygan.detection import fitted
    if det.region.numel() and tuple(det.region.shape) != (1, 1, det.image_size, det.image_size):
        raise ConfigError(f'{path}: the lung region is {list(det.region.shape)}, not '
                          f'[1, 1, {det.image_size}, {det.image_size}]; save the detector again')
    if det.mu.numel() or det.scale.numel():
        fitted.pixel_reference(path, det.mu, det.scale, det.image_size)
    if det.healthy_scores.numel():
        fitted.finite_scores(path, det.healthy_scores)
    if det.statistics_range.numel():
        fitted.statistics_range(path, det.statistics_range)
