"""Testing (the original's test and testAUC modes) and scoring unlabelled folders (added):
thresholds, metrics and the files they write; the scores come from detection/detector.py, the pictures
from reporting.py."""
import csv
import html
import json
import os
import sys
import types

import numpy as np
import torch
from torchvision.utils import save_image
from tqdm import tqdm

from healthygan import errors
from healthygan.data.cache import same_content
from healthygan.data.decode import IMAGE_EXTENSIONS
from healthygan.data.loaders import folder_loader, get_loader
from healthygan.data.splits import find_mask, list_images, load_mask, what_is
from healthygan.detection import anomaly, fitted
from healthygan.detection import statistics as image_statistics
from healthygan.detection.api import write_detector_file
from healthygan.detection.detector import Detector
from healthygan.detection.pixel_reference import reference_for
from healthygan.detection.reference import HealthyReference
from healthygan.detection.selection import ensemble_members, resolve_iters
from healthygan.errors import ConfigError, DataError
from healthygan.reports import localisation, report, statistics
from healthygan.reports.reporting import ReportWriter
from healthygan.training import run_record
from healthygan.training.images import denorm, translation_grid


class Evaluator:
    """The test modes: translation grids (test), anomaly scores, AUROC and reports (testAUC) and
    the scores of an unlabelled folder (score), of the checkpoint --test_iters names, scored by
    a detector.Detector of the tested checkpoints."""

    def __init__(self, config, split, device, nets, store, lung):
        self.config, self.split, self.device = config, split, device
        self.nets, self.store, self.lung = nets, store, lung
        self.reports = ReportWriter(config, device)
        self.ensemble_iters = []  # --ensemble: the members' iterations, set by tested_members
        self.in_distribution = {}  # index: detection/statistics.py's verdict, where it has one
        self.detector = None  # the tested checkpoints and their references, set to score
        self.pixels = None  # --score_variant ref_z: the healthy pixel reference, set to score

    def tested_members(self):
        """(--test_iters resolved, the checkpoints tested: with --ensemble N, the N up to it)."""
        c = self.config
        iters = resolve_iters(c.test_iters, c.model_save_dir, '--test_iters', c.score_variant)
        trained = (run_record.saved_run_record(c.model_save_dir, iters) or {}).get('config') or {}
        if trained.get('image_size') not in (None, c.image_size):
            # G is fully convolutional, so it runs at any size, but on other features than
            # those it learnt: the scores are not the trained model's.
            errors.warn(f'--image_size {c.image_size}, but {self.checkpoint_path(iters)} was '
                        f'trained at --image_size {trained["image_size"]} (its run record in '
                        f'{c.model_save_dir}): its scores at another size are not the trained '
                        f'model\'s; pass --image_size {trained["image_size"]}')
        members = ensemble_members(c.model_save_dir, iters, c.ensemble)
        self.ensemble_iters = members
        if len(members) > 1:
            print(f'Snapshot ensemble of {len(members)} checkpoints: {members}')
        return iters, members

    def load_for_test(self):
        """Resolve --test_iters and load G (D is not needed to test)."""
        iters, _ = self.tested_members()
        self.store.restore_model(iters, load_D=False)
        return iters

    def load_detector(self, members):
        """The Detector of the tested checkpoints with every reference fitted: the lung region,
        and the healthy pixel reference (read, or built and saved) or the held-out healthy
        scores the run logged."""
        c = self.config
        det = Detector(c.g_conv_dim, c.g_repeat_num, c.image_size, members, c.score_variant,
                       run_record.folder_run_id(c.model_save_dir), c.healthy_percentile)
        det = det.to(self.device).run_as(self.nets.amp_dtype, self.nets.speed['channels_last'])
        det.load_members(c.model_save_dir, announce=True)
        fitted.run_size(c.model_save_dir, members, c.image_size)
        det.fit_region(self.lung.region())
        if anomaly.VARIANTS[c.score_variant].needs == 'pixels':  # built where missing
            self.pixels = reference_for(c, det, members, self.device)
            self.pixels.fit(det)
        else:
            ref = HealthyReference.of_run(c.model_save_dir, members, c.score_variant,
                                          c.healthy_percentile)
            det.fit_reference(ref and ref.scores, ref and ref.source)
        return det

    def test(self):
        """Write translation grids (input, raw, blended, mask for a mixed and a healthy image)."""
        c = self.config
        iters = self.load_for_test()
        os.makedirs(c.result_dir, exist_ok=True)
        loader = get_loader(c, 'test', self.split, self.device)
        for k, (x_A, x_B) in enumerate(tqdm(loader, desc='test', file=sys.stdout)):
            self.nets.G.train()
            with torch.no_grad():
                grid = translation_grid(self.nets.G, x_A.to(self.device), x_B.to(self.device))
            path = os.path.join(c.result_dir, f'{iters}-{k + 1}-images.jpg')
            save_image(denorm(grid.cpu()), path, nrow=1, padding=0)
        print(f'Saved translated images into {c.result_dir}...')

    @torch.no_grad()
    def score_pass(self, loader, names=None, map_dir=None, keep_maps=(), desc='scoring'):
        """One translation pass over a loader of (images, labels, indices[, errors]) batches.

        Returns ({variant: float array [n]}, {index: (anomaly map, G's mask)} for the indices in
        keep_maps, {index: error} for unreadable images). With map_dir, each image's anomaly
        map is written to map_dir/<names[index]> as a 16-bit PNG.
        """
        n = len(loader.dataset)
        scores = {v: np.full(n, np.nan) for v in self.detector.scored_variants()}
        kept, errors = {}, {}
        for batch in tqdm(loader, desc=desc, file=sys.stdout):
            x, index = batch[0].to(self.device), batch[2].tolist()
            bad = batch[3] if len(batch) > 3 else [''] * len(index)
            out = self.detector.score_all(x)
            verdicts = dict(zip(index, image_statistics.check(
                x, self.detector.statistics_range)[0]))
            self.in_distribution.update({k: v for k, v in verdicts.items() if v is not None})
            variants = {v: anomaly.to_numpy(s) for v, s in out['variants'].items()}
            amap = anomaly.to_numpy(out['map'])[:, 0].astype(np.float32)
            mask = anomaly.to_numpy(out['mask'].float())[:, 0]
            for j, k in enumerate(index):
                if bad[j]:
                    errors[k] = bad[j]
                    continue
                for v, s in variants.items():
                    scores[v][k] = s[j]
                if map_dir is not None:
                    report.save_map(amap[j], os.path.join(map_dir, names[k]))
                if k in keep_maps:
                    kept[k] = (amap[j], mask[j])
        return scores, kept, errors

    def validation_thresholds(self, val):
        """The original's threshold rule applied to the validation scores of every variant."""
        paths, labels, where = val
        loader = folder_loader(self.config, paths, labels)
        scores, _, errors = self.score_pass(loader, desc='validation')
        if errors:
            raise DataError(
                f'{len(errors)} validation images cannot be read, e.g. '
                f'{next(iter(errors.values()))}; remove them from {where}')
        n_normal, n_anomalous = labels.count(0), labels.count(1)
        source = (f"validation set {where} ({n_normal} normal, {n_anomalous} anomalous; the "
                  f"original's rule, |TPR - (1 - FPR)| minimal, applied to it)")
        thresholds = {v: statistics.original_threshold(labels, s)[0] for v, s in scores.items()}
        c = self.config
        at = {v: statistics.image_metrics(labels, s, n_bootstrap=c.bootstrap, seed=c.bootstrap_seed)
              for v, s in scores.items()}
        info = {'dir': where, 'n_normal': n_normal, 'n_anomalous': n_anomalous,
                'image_AUROC': {v: m['image_AUROC'] for v, m in at.items()}}
        if c.bootstrap > 0:
            info['image_AUROC_ci95'] = {v: m['image_AUROC_ci95'] for v, m in at.items()}
        return thresholds, source, info

    def ensemble_record(self):
        """{'ensemble': the members' files} for metrics.json / summary.json; {} for one checkpoint."""
        if len(self.ensemble_iters) > 1:
            return {'ensemble': [self.checkpoint_path(i) for i in self.ensemble_iters]}
        return {}

    def checkpoint_path(self, iters):
        """The generator file that was tested."""
        return os.path.join(self.config.model_save_dir, f'{iters}-G.ckpt')

    # -------------------------------------------------------------------------------------- #
    #       The two front ends: testAUC (labelled test set) and score (a folder, no labels)    #
    # -------------------------------------------------------------------------------------- #

    def start_scoring(self):
        """Before any image is read: the lung prior's check, the Detector of the tested
        checkpoints (--ensemble) with its references (the healthy pixel reference of
        --score_variant ref_z built where missing), result_dir."""
        self.lung.region()  # --score_variant lung without a prior: one line, before work
        iters, members = self.tested_members()
        self.detector = self.reports.detector = self.load_detector(members)
        os.makedirs(self.config.result_dir, exist_ok=True)
        return iters

    def score_all(self, loader, names, test_paths=(), keep_maps=(), desc='scoring'):
        """The scoring path testAUC and score share: every image of the loader with every score
        variant, its map written to maps/, and the thresholds chosen on the validation set
        when there is one. Returns a namespace."""
        val = validation_set(self.config, test_paths)
        scores, maps, errors = self.score_pass(loader, names,
                                               os.path.join(self.config.result_dir, 'maps'),
                                               keep_maps, desc)
        thresholds, source, val_info = (self.validation_thresholds(val) if val
                                        else ({}, None, None))
        return types.SimpleNamespace(scores=scores, maps=maps, errors=errors,
                                     thresholds=thresholds, source=source, validation=val_info)

    def write_scores_csv(self, paths, names, scores, rows, labels=None, threshold=None,
                         extra=None):
        """scores.csv: one row per scored image; gt_label where labelled, pred_label where a
        threshold exists, then every variant and the extra {column: per-image values}."""
        selected = scores[self.config.score_variant]
        extra = extra or {}
        header = (['path'] + (['gt_label'] if labels is not None else [])
                  + ['pred_score', 'anomaly_map'] + (['pred_label'] if threshold is not None
                                                     else []) + [f'score_{v}' for v in scores]
                  + list(extra))
        with open(os.path.join(self.config.result_dir, 'scores.csv'), 'w', newline='') as f:
            w = csv.writer(f)
            w.writerow(header)
            for k in rows:
                w.writerow([paths[k]] + ([int(labels[k])] if labels is not None else [])
                           + [f'{selected[k]:.8f}', os.path.join('maps', names[k])]
                           + ([int(selected[k] >= threshold)] if threshold is not None else [])
                           + [f'{scores[v][k]:.8f}' for v in scores]
                           + [values[k] for values in extra.values()])

    def boxed_images(self, paths):
        """--boxes: the evaluated images' boxes, read and checked before any scoring; or None."""
        c = self.config
        return localisation.BoxedImages(c.boxes, paths, c.image_size) if c.boxes else None

    def measure_boxes(self, boxed, kept, n):
        """(the localisation block, scores.csv's added columns) of the boxed images; (None, {})
        without --boxes."""
        if boxed is None:
            return None, {}
        c = self.config
        rows = localisation.image_rows(localisation.kept_maps(self.detector, kept,
                                                              boxed.indices), boxed)
        return (localisation.summary(rows, boxed, c.score_variant, c.bootstrap, c.bootstrap_seed),
                localisation.csv_columns(rows, n))

    def test_auc(self):
        """Score every test image with every score variant; AUROC (bootstrap CI), AUPRC and the
        operating point's metrics, pixel metrics where lesion masks exist; scores.csv, the maps,
        metrics.json and (--report true) pictures and report.html in result_dir."""
        c = self.config
        iters = self.start_scoring()
        loader = get_loader(c, 'testAUC', self.split, self.device)
        paths, labels = list(loader.dataset.paths), np.asarray(loader.dataset.labels, dtype=int)
        names = report.output_names(paths)
        gt_masks, pixel_keys = lesion_masks(paths, labels, c.image_dir, c.image_size)
        boxed = self.boxed_images(paths)
        s = self.score_all(loader, names, paths,
                           pixel_keys | set(boxed.indices if boxed else ()), desc='testAUC')
        result = self.test_metrics(s, labels, iters)
        if pixel_keys:
            keys = sorted(pixel_keys)
            empty = np.zeros((c.image_size, c.image_size), bool)
            truth = [gt_masks.get(k, empty) for k in keys]
            result.update(statistics.pixel_metrics(truth, [s.maps[k][0] for k in keys]))
            result['pixel_map'] = 'anomaly_map |x - x_hat| / 2; normal images count as lesion-free'
            # G's own mask as a lesion detector: where the paper's translation may change pixels.
            result['mask_pixel_AUROC'] = statistics.pixel_metrics(
                truth, [s.maps[k][1] for k in keys])['pixel_AUROC']
        located, columns = self.measure_boxes(boxed, s.maps, len(paths))
        if located:
            result['localisation'] = located
        self.write_scores_csv(paths, names, s.scores, range(len(paths)), labels,
                              result['threshold'], extra=columns)
        if c.report:
            result['report'] = 'report.html'
        if c.save_detector:  # the run's recommendation: what was tested here
            result['detector'] = write_detector_file(c.model_save_dir, iters,
                                                     len(self.ensemble_iters) or 1,
                                                     c.score_variant)
        with open(os.path.join(c.result_dir, 'metrics.json'), 'w') as f:
            json.dump(result, f, indent=1)
        if c.report:
            info = {'checkpoint': result['checkpoint'], 'iteration': iters,
                    'image size': c.image_size, 'test images': len(labels),
                    'score variant': f"{c.score_variant}: {result['score']}",
                    'threshold source': result['threshold_source']}
            self.reports.write_report(s.scores, range(len(paths)), names, loader.dataset,
                              'HealthyGAN test report', info, report.metrics_html(result)
                              + (localisation.html_table(located) if located else ''),
                              'metrics.json', labels, result['threshold'], gt_masks,
                              {v: r['image_AUROC'] for v, r in result['variants'].items()},
                              boxes=boxed and boxed.rects)
        print_test_result(result, c)
        return result

    def test_metrics(self, s, labels, iters):
        """metrics.json's content: the headline variant's image metrics, every variant's."""
        c = self.config
        variants = {}
        for v, scores in s.scores.items():
            r = statistics.image_metrics(labels, scores, s.thresholds.get(v), s.source, c.bootstrap,
                                      c.bootstrap_seed)
            variants[v] = {'description': anomaly.SCORE_VARIANTS[v], **r}
        result = dict(variants[c.score_variant])
        del result['description']
        result.update({'checkpoint': self.checkpoint_path(iters), 'iteration': iters,
                       'score': anomaly.SCORE_VARIANTS[c.score_variant],
                       'score_variant': c.score_variant, 'image_size': c.image_size,
                       'bootstrap': {'n': c.bootstrap, 'seed': c.bootstrap_seed,
                                     'method': 'percentile, stratified by class'}})
        result.update(self.ensemble_record())
        if s.validation:
            result['validation'] = s.validation
        if self.lung.note:
            result['notes'] = {'lung': self.lung.note}
        if self.pixels is not None:
            result['healthy_pixel_reference'] = self.pixels.describe()
        overlap = training_test_overlap(c.model_save_dir, iters)
        if overlap:  # the run was trained despite its warning: the metrics must say so
            errors.warn(overlap)
            result.setdefault('notes', {})['data_overlap'] = overlap
        result['variants'] = {v: {key: r[key] for key in (
            'description', 'image_AUROC', 'image_AUROC_ci95', 'image_AUPRC', 'threshold',
            'sensitivity', 'specificity', 'accuracy', 'F1') if key in r}
            for v, r in variants.items()}
        return result

    def score_folder(self):
        """Score one image or every image below --score_dir (recursively, any supported
        format), unlabelled.

        Writes scores.csv (one row per image: path, pred_score, map file, every variant; a
        predicted label when --val_dir gives a threshold; each score's percentile among the
        held-out healthy images' and whether it is above --healthy_percentile, where the run
        logged them), maps/, summary.json and, with --report true, panels and report.html into
        result_dir.
        """
        c = self.config
        paths, root = score_paths(c)
        iters = self.start_scoring()
        names = report.output_names(paths, root=root)
        boxed = self.boxed_images(paths)
        loader = folder_loader(c, paths)
        s = self.score_all(loader, names, keep_maps=set(boxed.indices if boxed else ()),
                           desc='score')
        ok = [k for k in range(len(paths)) if k not in s.errors]
        if not ok:  # a calling script must not take an empty scores.csv for success
            raise DataError(f'none of the {len(paths)} image(s) under --score_dir '
                            f'{c.score_dir} could be read, e.g. {next(iter(s.errors.values()))}; '
                            f'nothing was scored')
        selected = s.scores[c.score_variant]
        threshold = s.thresholds.get(c.score_variant)
        reference = self.detector.reference
        percentiles = above = None
        if reference is not None:
            percentiles, above = reference.percentiles(selected), reference.above(selected)
        extra = {} if reference is None else {
            'healthy_percentile': [f'{v:.2f}' for v in percentiles],
            'above_healthy_threshold': above.astype(int)}
        located, columns = self.measure_boxes(boxed, s.maps, len(paths))
        extra.update(distribution_column(self.in_distribution, paths, len(paths)))
        self.write_scores_csv(paths, names, s.scores, ok, threshold=threshold,
                              extra={**extra, **columns})
        summary = {'checkpoint': self.checkpoint_path(iters), 'iteration': iters,
                   'score_dir': c.score_dir, 'image_size': c.image_size,
                   'score_variant': c.score_variant, 'score': anomaly.SCORE_VARIANTS[c.score_variant],
                   'n_images': len(ok), 'unreadable': {paths[k]: e for k, e in s.errors.items()}}
        summary.update(self.ensemble_record())
        if self.lung.note:
            summary['notes'] = {'lung': self.lung.note}
        v = selected[ok]
        summary['pred_score'] = {'mean': float(v.mean()), 'min': float(v.min()),
                                 'median': float(np.median(v)), 'max': float(v.max())}
        if threshold is not None:
            summary.update({'threshold': threshold, 'threshold_source': s.source,
                            'validation': s.validation,
                            'n_pred_anomalous': int((selected[ok] >= threshold).sum())})
        summary['healthy_reference'] = reference.record() if reference else (
            f'none: {c.model_save_dir} logged no scores of held-out healthy images (train with '
            f'--holdout_fraction > 0 for a label-free reference)')
        if reference:
            summary['healthy_threshold'] = reference.threshold
            summary['n_above_healthy_threshold'] = int(above[ok].sum())
        if located:
            summary['localisation'] = located
        with open(os.path.join(c.result_dir, 'summary.json'), 'w') as f:
            json.dump(summary, f, indent=1)
        if s.errors:
            print(f'warning: {len(s.errors)} images could not be read and were left out (listed '
                  f'in summary.json), e.g. {next(iter(s.errors.values()))}')
        lines = score_lines(summary, reference, c.score_variant, len(ok))
        if c.report:
            info = {'checkpoint': summary['checkpoint'], 'iteration': iters,
                    'folder': c.score_dir, 'images scored': len(ok),
                    'unreadable': len(summary['unreadable']),
                    'score variant': f"{c.score_variant}: {summary['score']}"}
            intro = ('<h2>Scores</h2><p>No labels: pred_score is the ' + c.score_variant
                     + ' score; healthy_percentile is the share of the held-out healthy images '
                     'scoring at or below it.</p>'
                     + ''.join(f'<p>{html.escape(line)}</p>' for line in lines)
                + (localisation.html_table(located) if located else ''))
            self.reports.write_report(
                s.scores, ok, names, loader.dataset, 'HealthyGAN: scores of a folder', info,
                intro, 'summary.json',
                threshold=threshold if threshold is not None else summary.get('healthy_threshold'),
                healthy_percentiles=percentiles, boxes=boxed and boxed.rects)
        for line in lines:
            print(line)
        if len(ok) <= MAX_LISTED:  # a few images: each one's score, as scores.csv has it
            for k in ok:
                print(f'  {paths[k]}: pred_score {selected[k]:.6g}' + (
                    '' if reference is None else f', healthy_percentile {percentiles[k]:.1f}'
                    + (' (above the healthy threshold)' if above[k] else '')))
        if located:
            print('\n'.join(localisation.table_lines(located)))
        print('Saved scores.csv, maps/ and summary.json' + (' and report.html' if c.report
                                                              else '') + f' into {c.result_dir}')
        return summary


MAX_LISTED = 10  # --mode score prints each image's score for at most this many images


def score_lines(summary, reference, variant, n):
    """What --mode score says of its scores, on the console and in report.html alike."""
    lines = [f'Scored {n} image(s) in {summary["score_dir"]} ({variant}: median pred_score '
             f'{summary["pred_score"]["median"]:.6g})']
    if reference is not None:
        lines.append(f'{summary["n_above_healthy_threshold"]} of {n} above the healthy threshold '
                     f'{reference.threshold:.6g}, the {reference.percentile:g}th percentile of '
                     f'healthy images ({reference.describe()})')
    else:
        lines.append(f'Healthy reference: {summary["healthy_reference"]}')
    if 'threshold' in summary:
        lines.append(f'{summary["n_pred_anomalous"]} of {n} at or above the threshold '
                     f'{summary["threshold"]:.6g} ({summary["threshold_source"]})')
    return lines


def training_test_overlap(model_save_dir, iters):
    """What the run record of checkpoint `iters` says of training images that were also test
    images (counted when it was trained), or None."""
    record = run_record.saved_run_record(model_save_dir, iters) or {}
    n = (record.get('data_overlap') or {}).get('train_test')
    if not n:
        return None
    return (f'{n} training image(s) of the run in {model_save_dir} were also test images when it '
            f'was trained (data_overlap in its run record): these test metrics are optimistic')


def distribution_column(verdicts, paths, n):
    """{'in_distribution': 1 / 0 per image} where the detector checks it, warning about the
    images outside the healthy reference's range; {} where it checks none."""
    if not verdicts:
        return {}
    outside = [paths[k] for k in sorted(verdicts) if not verdicts[k]]
    if outside:
        errors.warn(f'{len(outside)} image(s) look unlike the healthy radiographs the detector '
                    f'was fitted to, e.g. {outside[0]}: their scores mean little '
                    f'(in_distribution 0 in scores.csv)')
    return {'in_distribution': [int(verdicts.get(k, True)) for k in range(n)]}


def score_paths(config):
    """(images, the folder their output names are relative to) of --score_dir: the one image it
    names, or the images below it, leaving out a --result_dir inside it."""
    c = config
    if not c.score_dir:
        raise ConfigError('--mode score needs --score_dir PATH, an image or a folder of images '
                          'to score')
    if os.path.isfile(c.score_dir):
        if not c.score_dir.lower().endswith(IMAGE_EXTENSIONS):
            raise DataError(f'--score_dir {c.score_dir} is a file but not an image '
                            f'({", ".join(IMAGE_EXTENSIONS)}); name an image or a folder')
        return [c.score_dir], os.path.dirname(os.path.abspath(c.score_dir))
    if not os.path.isdir(c.score_dir):
        if os.path.lexists(c.score_dir):
            raise DataError(f'--score_dir {c.score_dir} is {what_is(c.score_dir)}, not an image '
                            f'or a folder')
        raise DataError(f'--score_dir {c.score_dir} does not exist')
    # A result_dir inside score_dir must not have its own maps and panels scored.
    results = os.path.abspath(c.result_dir) + os.sep
    paths = [p for p in list_images(c.score_dir)
             if not os.path.abspath(p).startswith(results)]
    # A FIFO or a device would block or never end when read (training refuses them too).
    odd = [p for p in paths if not os.path.isfile(p)]
    if odd:
        errors.warn(f'leaving out {len(odd)} file(s) under --score_dir that are no regular '
                      f'files, e.g. {odd[0]} is {what_is(odd[0])}')
        paths = [p for p in paths if p not in odd]
    if not paths:
        raise DataError(f'no images in --score_dir {c.score_dir} outside '
                        f'--result_dir {c.result_dir}')
    return paths, c.score_dir


def validation_set(config, test_paths=()):
    """(paths, labels, description) of the validation images, or None.

    --val_dir DIR, else (Folder layout) <image_dir>/val when it exists: normal/ and
    anomalous/ below it, as in test/.
    """
    where = config.val_dir
    if not where and config.dataset == 'Folder' and os.path.isdir(os.path.join(config.image_dir, 'val')):
        where = os.path.join(config.image_dir, 'val')
    if not where:
        return None
    if not os.path.isdir(where):
        raise DataError(f'--val_dir {where} does not exist; it should hold '
                                    f'normal/ and anomalous/ (as test/ does)')
    normal = list_images(os.path.join(where, 'normal'))
    anomalous = list_images(os.path.join(where, 'anomalous'))
    # the same files by path (links resolved) or by content (a copy of the test set)
    shared = {os.path.realpath(p) for p in normal + anomalous} & \
        {os.path.realpath(p) for p in test_paths}
    shared = sorted(shared) or [a for a, _ in same_content(normal + anomalous,
                                                                     list(test_paths))]
    if shared:
        raise ConfigError(f'{len(set(shared))} validation images in {where} are also test '
                          f'images (e.g. {shared[0]}, same path or same content): a '
                          f'threshold chosen on them is not independent of the test set; '
                          f'use a disjoint --val_dir')
    return normal + anomalous, [0] * len(normal) + [1] * len(anomalous), where


def lesion_masks(paths, labels, image_dir, image_size):
    """Ground-truth lesion masks (synthetic.py's layout) {index: mask}, and the images the
    pixel metrics use: those with a mask and every normal image (truth: no lesion)."""
    gt_masks = {}
    for k, p in enumerate(paths):
        found = find_mask(p, image_dir)
        if found:
            gt_masks[k] = load_mask(found, p, image_size)
    pixel_keys = set()
    if any(labels[k] == 1 for k in gt_masks):
        pixel_keys = set(gt_masks) | {k for k in range(len(paths)) if labels[k] == 0}
    return gt_masks, pixel_keys


def print_test_result(result, c):
    """testAUC's printed lines: the original's AUC, sensitivity and specificity first."""
    ci = result.get('image_AUROC_ci95')
    print(f"AUC: {result['image_AUROC']:.4f}  sensitivity: {result['sensitivity']:.4f}  "
          f"specificity: {result['specificity']:.4f}  (threshold {result['threshold']:.6f}, "
          f"{result['threshold_source']}; {result['n_normal']} normal, "
          f"{result['n_anomalous']} anomalous)")
    print(f'score {c.score_variant}' + (f'; AUROC 95% CI {ci[0]:.4f} - {ci[1]:.4f}' if ci else '')
          + f"; AUPRC {result['image_AUPRC']:.4f}; accuracy {result['accuracy']:.4f}; "
            f"F1 {result['F1']:.4f}")
    print('variants: ' + ', '.join(f"{v} {r['image_AUROC']:.4f}"
                                   for v, r in result['variants'].items()))
    val = result.get('validation')
    if val:
        vci = val.get('image_AUROC_ci95', {}).get(c.score_variant)
        print(f"validation {val['dir']} ({val['n_normal']} normal, {val['n_anomalous']} "
              f"anomalous): AUROC {val['image_AUROC'][c.score_variant]:.4f}"
              + (f' (95% CI {vci[0]:.4f} - {vci[1]:.4f})' if vci else ''))
    if 'pixel_AUROC' in result:
        print(f"pixel AUROC {result['pixel_AUROC']:.4f}; Dice {result['pixel_Dice']:.4f} "
              f"({result['pixel_threshold_source']}); G's mask alone: pixel AUROC "
              f"{result['mask_pixel_AUROC']:.4f}")
    if 'localisation' in result:
        print('\n'.join(localisation.table_lines(result['localisation'])))
    print('Saved metrics.json, scores.csv and maps/' + (', pictures and report.html'
                                                        if c.report else '')
          + f' into {c.result_dir}')
    if 'detector' in result:
        print(f"Saved {result['detector']}: --mode score and healthygan.load score as tested "
              f'here unless told otherwise')
