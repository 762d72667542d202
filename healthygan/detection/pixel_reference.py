"""The 'ref_z' score's reference (added): what G's residual |x - x_hat| / 2 looks like, pixel by
pixel, on healthy radiographs. It is built from the healthy images held out of training
(--holdout_fraction), translated by the very checkpoints being tested (a snapshot ensemble's
members together), and saved beside them, as the lung prior is, so that scoring a new image
needs no training image. An image then scores by how far its residual exceeds the healthy
images' at the same place, so that ribs, edges and borders G misses on every image stop
counting."""
import argparse
import hashlib
import os

import torch

from healthygan.data.loaders import folder_loader
from healthygan.data.splits import resolve_split
from healthygan.detection import anomaly, fitted, statistics
from healthygan.errors import ConfigError, DataError, warn
from healthygan.training import run_record
from healthygan.training.checkpoints import load_checked, save_atomic
from healthygan.training.distributed import is_main


LEGACY_WARNED = set()  # files naming no run, warned about once each
# each held-out healthy image's leave-one-out score needs a spread of at least 2 others
MIN_PIXEL_REFERENCE = 3


def reference_file(members, image_size):
    """The file name of the reference of these checkpoints at this size."""
    return f'healthy_pixels_{"-".join(str(i) for i in members)}_{image_size}px.pt'


def held_out_healthy(model_save_dir, config):
    """The healthy images the run in model_save_dir held out of training, from its run record
    (the data flags it was trained with), or one clear error."""
    trained = (run_record.saved_run_record(model_save_dir, 0) or {}).get('config') or {}
    fraction = trained.get('holdout_fraction', 0) or 0
    if fraction <= 0:
        raise ConfigError(f"--score_variant ref_z needs healthy images held out of training: "
                          f"{model_save_dir}'s run record shows no --holdout_fraction > 0; "
                          f"choose another --score_variant")
    flags = argparse.Namespace(**vars(config))
    for name in ('dataset', 'image_dir', 'list_dir'):
        if trained.get(name) is not None:
            setattr(flags, name, trained[name])
    # the healthy hold-out depends on the file names and the fraction alone
    flags.holdout_fraction, flags.holdout_stratify = fraction, False
    try:
        paths = resolve_split(flags, 'train')['holdout_healthy']
    except DataError as e:
        raise ConfigError(f"--score_variant ref_z needs the healthy images {model_save_dir}'s "
                          f"run held out of training, which cannot be read ({e}); choose "
                          f"another --score_variant") from None
    if len(paths) < MIN_PIXEL_REFERENCE:
        raise ConfigError(f'--score_variant ref_z: {model_save_dir}\'s run held out '
                          f'{len(paths)} healthy image(s) of training; the healthy pixel '
                          f'reference needs at least {MIN_PIXEL_REFERENCE} (a larger '
                          f'--holdout_fraction)')
    return paths


def images_digest(paths):
    """A digest of image files' names, sizes and modification times (what tells the data cache
    that an image changed)."""
    digest = hashlib.sha256()
    for p in sorted(paths):
        st = os.stat(p)
        digest.update(f'{os.path.basename(p)}\t{st.st_size}\t{st.st_mtime_ns}\n'.encode())
    return digest.hexdigest()


def leave_one_out_scores(maps):
    """Each healthy image's 'ref_z' against the reference of the others [N]: in-sample scores
    would be too low, and a label-free percentile among them too strict."""
    scores = []
    for k in range(len(maps)):
        mu, scale = anomaly.healthy_pixel_reference(torch.cat([maps[:k], maps[k + 1:]]))
        scores.append(float(anomaly.ref_z_score(maps[k:k + 1, None].double(), mu, scale)[0]))
    return scores


class PixelReference:
    """The reference (mu, scale) [H, W] of one run's checkpoints at one --image_size, read from
    its file or built from the held-out healthy images and saved."""

    def __init__(self, model_save_dir, image_size, members):
        self.members, self.image_size = [int(i) for i in members], int(image_size)
        self.path = os.path.join(model_save_dir, reference_file(self.members, image_size))
        self.run_id = run_record.folder_run_id(model_save_dir)  # the run it is fitted to
        self.mu = self.scale = None
        self.healthy_scores = []  # each held-out healthy image's leave-one-out 'ref_z'
        self.statistics = None  # the held-out images' range of statistics.STATISTICS
        self.images = None  # images_digest of the held-out images it was built from

    def read(self):
        """True where the file exists (and is this reference), False where it does not; one
        ConfigError naming the file where it is broken or of another run."""
        if not os.path.exists(self.path):
            return False
        saved = load_checked(self.path, 'healthy pixel reference')
        if not isinstance(saved, dict):
            raise ConfigError(f'{self.path} is no healthy pixel reference; remove it')
        if saved.get('members') != self.members or saved.get('image_size') != self.image_size:
            raise ConfigError(f'{self.path} holds the reference of checkpoints '
                              f'{saved.get("members")} at {saved.get("image_size")} px, not of '
                              f'{self.members} at {self.image_size} px; remove it')
        if saved.get('run_id') and self.run_id and saved['run_id'] != self.run_id:
            raise ConfigError(f'{self.path} was built for run {saved["run_id"]}, but the folder '
                              f'holds run {self.run_id} (its run_config.json): it scores against '
                              f'another run\'s healthy images; remove it')
        if not saved.get('run_id') and self.path not in LEGACY_WARNED:
            LEGACY_WARNED.add(self.path)
            warn(f'{self.path} names no run (made before references did): it cannot be told '
                 f'from another run\'s; remove it to rebuild it where the run\'s images are')
        self.mu, self.scale = fitted.pixel_reference(self.path, saved.get('mu'),
                                                     saved.get('scale'), self.image_size)
        self.healthy_scores = fitted.finite_scores(self.path, saved.get('healthy_scores'))
        self.statistics = fitted.statistics_range(self.path, saved.get('statistics'))
        self.images = saved.get('images')
        return True

    def build(self, detector, config, paths, device):
        """Translate the held-out healthy images with the detector's checkpoints (a snapshot
        ensemble's maps averaged, as in testing) and save the reference (rank 0 writes)."""
        maps, stats = [], []
        for batch in folder_loader(config, paths):
            x, bad = batch[0].to(device), batch[3]
            if any(bad):
                raise DataError(f'a held-out healthy image cannot be read: '
                                f'{next(b for b in bad if b)}')
            maps.append(detector.score_all(x)['map'][:, 0].double().cpu())
            stats.append(statistics.global_statistics(x).cpu())
        maps = torch.cat(maps)
        self.statistics = statistics.fit_range(torch.cat(stats))
        self.images = images_digest(paths)
        self.mu, self.scale = anomaly.healthy_pixel_reference(maps)
        self.healthy_scores = leave_one_out_scores(maps)
        if is_main():
            save_atomic({'members': self.members, 'image_size': self.image_size,
                         'run_id': self.run_id,
                         'mu': self.mu.float(), 'scale': self.scale.float(), 'n': len(maps),
                         'healthy_scores': self.healthy_scores, 'statistics': self.statistics,
                         'images': self.images}, self.path)
        # scoring uses the values as saved, so that a re-read reference scores the same
        self.mu, self.scale = self.mu.float().double(), self.scale.float().double()

    def describe(self):
        return (f'{len(self.healthy_scores)} healthy images held out of training, translated by '
                f'checkpoints {self.members} ({os.path.basename(self.path)})')

    def fit(self, detector):
        """Give the detector this reference and, as the label-free reference of 'ref_z'
        (reference.py), its healthy images' own leave-one-out scores."""
        detector.fit_pixels(self.mu, self.scale)
        detector.fit_statistics(self.statistics)
        detector.fit_reference(self.healthy_scores, f'{os.path.basename(self.path)}, each image '
                                                    f'against the others')


def reference_for(config, detector, members, device):
    """The PixelReference of the tested checkpoints: read where saved, else built (the run's
    held-out healthy images must be at hand) and saved beside the checkpoints."""
    fitted.run_size(config.model_save_dir, members, config.image_size)
    ref = PixelReference(config.model_save_dir, config.image_size, members)
    if ref.read() and ref.images is not None:
        try:
            paths = held_out_healthy(config.model_save_dir, config)
        except ConfigError:  # the images are not at hand: nothing to compare with
            return ref
        if images_digest(paths) != ref.images:  # replaced under the same names
            warn(f'the held-out healthy images changed since {ref.path} was built from them; '
                 f'building it again')
            ref.images = None
            ref.build(detector, config, paths, device)
        return ref
    if ref.mu is None:
        paths = held_out_healthy(config.model_save_dir, config)
        print(f'Building the healthy pixel reference from {len(paths)} held-out healthy images')
        ref.build(detector, config, paths, device)
    return ref

