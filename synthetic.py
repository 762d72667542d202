"""Deterministic synthetic chest radiographs for the CPU quick-start demo and the tests.

This module writes the datasets (folders, masks, labels, the .complete check) and is the
command line; healthygan/data/synthetic_phantom.py draws each radiograph (the anatomy model, the
lesions, and how every random draw is ordered).

Usage: python synthetic.py --out datasets/synthetic --seed 0 --size 128
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from healthygan.data.synthetic_phantom import LESION_STRENGTH, render_radiograph

# Bump whenever the rendering (healthygan/data/synthetic_phantom.py) changes, so cached datasets are
# regenerated.
GENERATOR_VERSION = 2

DEFAULT_PARAMS = dict(n_healthy=400, n_mixed=400, anomalous_fraction=0.3, n_test_normal=100,
                      n_test_anomalous=100, size=128, seed=0, lesion_strength=LESION_STRENGTH)

# Stable per-subset stream ids: each image's RNG is SeedSequence([seed, subset, index]),
# so a subset's images do not depend on the sizes of the others.
_SUBSET_IDS = {"healthy": 1, "mixed": 2, "test_normal": 3, "test_anomalous": 4, "mixed_labels": 5}


# ----------------------------------------------------------------------------- dataset

def _normalise_params(**params):
    """Defaults merged with `params`, with numbers in canonical types (for the .complete check)."""
    unknown = set(params) - set(DEFAULT_PARAMS)
    if unknown:
        raise TypeError(f"unknown parameters: {sorted(unknown)}")
    merged = {**DEFAULT_PARAMS, **params}
    for k in ("n_healthy", "n_mixed", "n_test_normal", "n_test_anomalous", "size", "seed"):
        merged[k] = int(merged[k])
    for k in ("anomalous_fraction", "lesion_strength"):
        merged[k] = float(merged[k])
    return merged


def _validate(p):
    """Raise ValueError for parameters the generator cannot honour."""
    if not 0.0 <= p["anomalous_fraction"] <= 1.0:
        raise ValueError("anomalous_fraction must lie in [0, 1]")
    if p["size"] < 32:
        raise ValueError("size must be at least 32")
    for k in ("n_healthy", "n_mixed", "n_test_normal", "n_test_anomalous", "seed"):
        if p[k] < 0:
            raise ValueError(f"{k} must be non-negative")
    if p["lesion_strength"] < 0:
        raise ValueError("lesion_strength must be non-negative")


def _counts(p):
    """Number of images per subset implied by the parameters."""
    n_anom = int(round(p["n_mixed"] * p["anomalous_fraction"]))
    return dict(healthy=p["n_healthy"], mixed=p["n_mixed"], mixed_anomalous=n_anom,
                test_normal=p["n_test_normal"], test_anomalous=p["n_test_anomalous"])


def _single_threaded_blas():
    """Context limiting BLAS to one thread, if threadpoolctl is available.

    The matrices here are tiny; when the cores are busy (a DataLoader, a pip install)
    a multithreaded BLAS can spin and slow the products down by 100x or more.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _subject_rng(seed, subset, index):
    """Independent generator for one image of one subset."""
    return np.random.default_rng(np.random.SeedSequence([seed, _SUBSET_IDS[subset], index]))


def _save_png(array, path):
    """Write an 8-bit grayscale PNG (Pillow output is byte-deterministic)."""
    Image.fromarray(array).save(path, format="PNG", compress_level=1)


def _n_png(folder):
    """Number of PNG files in `folder` (0 if missing)."""
    return sum(1 for f in folder.glob("*.png")) if folder.is_dir() else 0


def dataset_is_complete(root, **params) -> bool:
    """True if `root` holds a finished dataset generated with exactly these parameters."""
    root = Path(root)
    try:
        info = json.loads((root / ".complete").read_text())
    except (OSError, ValueError):
        return False
    p = _normalise_params(**params)
    if info.get("version") != GENERATOR_VERSION or info.get("params") != p:
        return False
    c = _counts(p)
    return (_n_png(root / "healthy") == c["healthy"] and _n_png(root / "mixed") == c["mixed"]
            and _n_png(root / "test" / "normal") == c["test_normal"]
            and _n_png(root / "test" / "anomalous") == c["test_anomalous"]
            and _n_png(root / "masks" / "mixed") == c["mixed_anomalous"]
            and _n_png(root / "masks" / "test" / "anomalous") == c["test_anomalous"])


def _write_images(root, dirs, p, c):
    """Render and save every image, mask and the mixed-set truth table."""
    S, s = p["size"], p["seed"]
    for i in range(c["healthy"]):
        img, _ = render_radiograph(_subject_rng(s, "healthy", i), S, False)
        _save_png(img, dirs["healthy"] / f"healthy_{i:05d}.png")

    # Which mixed images are diseased is its own stream, so labels are shuffled across names.
    order = np.random.default_rng(np.random.SeedSequence([s, _SUBSET_IDS["mixed_labels"]])).permutation(c["mixed"])
    is_anom = np.zeros(c["mixed"], bool)
    is_anom[order[:c["mixed_anomalous"]]] = True
    rows = []
    for i in range(c["mixed"]):
        img, mask = render_radiograph(_subject_rng(s, "mixed", i), S, bool(is_anom[i]),
                                      lesion_strength=p["lesion_strength"])
        name = f"syn_{i:05d}.png"
        _save_png(img, dirs["mixed"] / name)
        if is_anom[i]:
            _save_png(mask.astype(np.uint8) * 255, dirs["masks/mixed"] / name)
        rows.append((name, "anomalous" if is_anom[i] else "normal"))
    with open(root / "mixed_truth.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "label"])
        w.writerows(rows)

    for i in range(c["test_normal"]):
        img, _ = render_radiograph(_subject_rng(s, "test_normal", i), S, False)
        _save_png(img, dirs["test/normal"] / f"normal_{i:05d}.png")
    for i in range(c["test_anomalous"]):
        img, mask = render_radiograph(_subject_rng(s, "test_anomalous", i), S, True,
                                      lesion_strength=p["lesion_strength"])
        name = f"anomalous_{i:05d}.png"
        _save_png(img, dirs["test/anomalous"] / name)
        _save_png(mask.astype(np.uint8) * 255, dirs["masks/test/anomalous"] / name)


_OWNED = ("healthy", "mixed", "test", "masks", "mixed_truth.csv", "README.md", ".complete")


def make_synthetic_dataset(root, n_healthy=400, n_mixed=400, anomalous_fraction=0.3,
                           n_test_normal=100, n_test_anomalous=100, size=128, seed=0,
                           lesion_strength=LESION_STRENGTH) -> dict:
    """Write the synthetic dataset tree under `root` and return the per-subset counts.

    Existing generated content in `root` is replaced; a non-empty folder that was not
    made by this module is refused. `.complete` is written last, so an interrupted
    run is detected by `dataset_is_complete`.
    """
    p = _normalise_params(n_healthy=n_healthy, n_mixed=n_mixed, anomalous_fraction=anomalous_fraction,
                          n_test_normal=n_test_normal, n_test_anomalous=n_test_anomalous,
                          size=size, seed=seed, lesion_strength=lesion_strength)
    _validate(p)
    root = Path(root)
    marker = root / ".partial"
    if root.exists() and any(root.iterdir()) and not (marker.exists() or (root / ".complete").exists()):
        raise FileExistsError(f"{root} is not empty and was not written by synthetic.py; refusing to overwrite")
    root.mkdir(parents=True, exist_ok=True)
    marker.write_text("generation in progress or interrupted\n")
    for name in _OWNED:
        target = root / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    dirs = {k: root / k for k in ("healthy", "mixed", "test/normal", "test/anomalous",
                                   "masks/mixed", "masks/test/anomalous")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)

    c = _counts(p)
    with _single_threaded_blas():
        _write_images(root, dirs, p, c)

    (root / "README.md").write_text(
        "# Synthetic chest radiographs\n\n"
        "Schematic PA chest radiographs generated by `synthetic.py` (HealthyGAN reproduction) for the\n"
        "CPU quick-start demo and tests. Not real patient data. Diseased images carry 1-3 opacities\n"
        "(ground glass, consolidation, nodule) inside the lung fields; their masks (0/255) are under\n"
        "`masks/`. `mixed_truth.csv` holds the labels of `mixed/` for analysis only.\n\n"
        f"Generator version {GENERATOR_VERSION}; parameters: "
        + ", ".join(f"{k}={v}" for k, v in p.items()) + "\n\n"
        f"Counts: {c}\n")
    # Written last (atomically via rename): its presence means the tree is complete.
    tmp = root / ".complete.tmp"
    tmp.write_text(json.dumps({"version": GENERATOR_VERSION, "params": p, "counts": c}, indent=1))
    os.replace(tmp, root / ".complete")
    marker.unlink()
    return c


# ----------------------------------------------------------------------------- CLI

def _bounded(kind, lo=None, hi=None, what=""):
    """argparse type: a number of `kind` within [lo, hi]."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a valid {kind.__name__}")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"{value} is out of range: {what}")
        return value
    return parse


def build_parser():
    """Command-line interface for generating the dataset."""
    ap = argparse.ArgumentParser(description="Generate the synthetic chest-radiograph dataset.")
    d = DEFAULT_PARAMS
    count = _bounded(int, 0, what="must be >= 0")
    ap.add_argument("--out", default="datasets/synthetic", help="output folder")
    ap.add_argument("--seed", type=count, default=d["seed"], help="master seed (same seed -> identical files)")
    ap.add_argument("--size", type=_bounded(int, 32, what="must be >= 32"), default=d["size"],
                    help="image side in pixels")
    ap.add_argument("--n_healthy", type=count, default=d["n_healthy"], help="images in healthy/")
    ap.add_argument("--n_mixed", type=count, default=d["n_mixed"], help="images in mixed/ (unlabelled)")
    ap.add_argument("--anomalous_fraction", type=_bounded(float, 0.0, 1.0, what="must lie in [0, 1]"),
                    default=d["anomalous_fraction"], help="share of diseased images in mixed/")
    ap.add_argument("--n_test_normal", type=count, default=d["n_test_normal"], help="images in test/normal/")
    ap.add_argument("--n_test_anomalous", type=count, default=d["n_test_anomalous"],
                    help="images in test/anomalous/")
    ap.add_argument("--lesion_strength", type=_bounded(float, 0.0, what="must be >= 0"),
                    default=d["lesion_strength"], help="scales lesion contrast (1.0 = default)")
    ap.add_argument("--force", action="store_true", help="regenerate even if a complete dataset exists")
    return ap


def main(argv=None) -> int:
    """Generate the dataset unless an identical complete one exists; print counts and path."""
    args = build_parser().parse_args(argv)
    params = {k: getattr(args, k) for k in DEFAULT_PARAMS}
    root = Path(args.out)
    if not args.force and dataset_is_complete(root, **params):
        counts = json.loads((root / ".complete").read_text())["counts"]
        print(f"synthetic dataset already complete at {root.resolve()}: {counts}")
        return 0
    t0 = time.time()
    counts = make_synthetic_dataset(root, **params)
    print(f"wrote synthetic dataset to {root.resolve()} in {time.time() - t0:.1f}s: {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
