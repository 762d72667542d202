"""The 'lung' score's region: anomaly.lung_prior of the mean healthy training image, computed in
training and saved beside the checkpoints, so that, as in the original, testing needs no
training image."""
import os

from healthygan.data.cache import mean_image
from healthygan.data.splits import resolve_split
from healthygan.detection import anomaly
from healthygan.errors import ConfigError, DataError
from healthygan.training.checkpoints import load_checked, save_atomic
from healthygan.training.distributed import is_main

LUNG_PRIOR_FILE = 'lung_prior.pt'  # beside the checkpoints: the 'lung' score's region


class LungPrior:
    """The region of one run (its --model_save_dir) at one --image_size, on the scoring device."""

    def __init__(self, config, split, device):
        self.config, self.split, self.device = config, split, device
        self._region, self.note = None, None  # note: why the 'lung' score is left out
        self._known = False

    def path(self):
        return os.path.join(self.config.model_save_dir, LUNG_PRIOR_FILE)

    def region(self):
        """The region [1, 1, H, W], or None (then self.note says why the score is left out).

        Only where --score_variant lung asks for it and no saved prior exists is it computed
        from the training images, when they are at hand.
        """
        if not self._known:
            self.note = None
            prior = self.read()
            if prior is None and self.config.score_variant == 'lung':
                prior = self.compute(required=True)
            self._region = None if prior is None else prior.to(self.device)
            self._known = True
        return self._region

    def read(self):
        """The prior saved with the run at this --image_size, else None and a note."""
        path = self.path()
        if not os.path.exists(path):
            self.note = (f'left out: {path} not found (training saves it; runs trained '
                         f'elsewhere, e.g. the released checkpoint, have none)')
            return None
        saved = load_checked(path, 'lung prior')
        if saved.get('image_size') != self.config.image_size:
            self.note = (f'left out: {path} was made at {saved.get("image_size")} px, '
                         f'testing is at --image_size {self.config.image_size}')
            return None
        return saved['prior'].float()[None, None]

    def compute(self, required=False):
        """anomaly.lung_prior of the mean healthy training image ([1, 1, H, W], CPU)."""
        try:
            split = self.split if self.split and self.split.get('healthy') else \
                resolve_split(self.config, 'train')
        except DataError as e:
            if not required:
                raise
            raise ConfigError(f'--score_variant lung needs the lung prior: '
                              f'{self.path()} is missing and the healthy training '
                              f'images cannot be read ({e}); choose another --score_variant') \
                from None
        # read from the training set's cache (training builds it; no second decode)
        mean = mean_image(split['healthy'], self.config,
                          among=split['mixed'] + split['healthy'])
        return anomaly.lung_prior(mean)

    def save(self):
        """Compute the prior from this run's healthy training images and save it with the run
        (rank 0 writes; every rank keeps it for scoring)."""
        prior = self.compute()
        if is_main():
            save_atomic({'prior': prior[0, 0].bool(), 'image_size': self.config.image_size},
                        self.path())
        self._region, self.note, self._known = prior.to(self.device), None, True
