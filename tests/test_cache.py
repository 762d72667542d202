"""The decode-once cache: same pixels and same sampling as the per-step decode path, rebuilt when
its inputs change, safe when two runs build it at once."""
import glob
import multiprocessing
import os
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import data_loader as dl
import main as cli
from conftest import NIH_MINI, tiny_args
from test_formats import write_dicom


def per_step(path, image_size):
    """The original's path: decode, crop, resize, ToTensor, Normalize."""
    return dl.build_transform(image_size)(dl.load_image(path))


def assert_same_pixels(cache, store, paths, image_size):
    for p in paths:
        cached = store.images([cache.rows[os.path.abspath(p)]])[0].cpu()
        expected = per_step(p, image_size)
        grey_levels = ((cached - expected).abs().max() * 127.5).item()
        assert grey_levels <= 1, (p, grey_levels)  # what the cache promises
        assert torch.equal(cached, expected), p  # what it delivers: the same floats


def write_mixed_formats(folder):
    """Radiograph-like images in several formats, sizes and modes; one in colour."""
    rng = np.random.default_rng(3)
    os.makedirs(folder, exist_ok=True)
    ramp = np.add.outer(np.arange(50), np.arange(37)).astype(np.float64)
    gray = (ramp * 2 + rng.integers(0, 30, ramp.shape)).clip(0, 255).astype(np.uint8)
    Image.fromarray(gray).save(os.path.join(folder, 'a_gray8.png'))
    Image.fromarray((ramp * 60 + 100).astype(np.uint16)).save(os.path.join(folder, 'b_16.png'))
    Image.fromarray(gray.T).convert('RGB').save(os.path.join(folder, 'c_rgb_gray.png'))
    Image.fromarray(gray).save(os.path.join(folder, 'd_gray.jpg'), quality=90)
    Image.fromarray(np.stack([gray, gray, 255 - gray, gray], 2)).save(
        os.path.join(folder, 'e_rgba.png'))
    Image.fromarray(np.stack([gray, gray.clip(0, 90), 255 - gray], 2)).quantize(64).save(
        os.path.join(folder, 'f_palette.png'))
    return sorted(glob.glob(os.path.join(folder, '*')))


def test_cached_pixels_equal_the_per_step_decode_for_every_format(tmp_path):
    paths = write_mixed_formats(str(tmp_path / 'img'))
    try:
        paths.append(write_dicom(tmp_path / 'img' / 'g.dcm', np.arange(48 * 40, dtype=np.uint16)
                                 .reshape(48, 40), photometric='MONOCHROME1'))
    except pytest.skip.Exception:
        pass  # pydicom absent: the other formats are still compared
    cache = dl.open_cache(paths, 32, str(tmp_path / 'cache'))
    assert cache.built and not cache.bad
    assert cache.pixels.shape == (len(paths), 3, 32, 32)  # colour images: three channels
    assert_same_pixels(cache, dl.PixelStore(cache, 'cpu'), paths, 32)
    gray_only = [p for p in paths if 'rgba' not in p and 'palette' not in p]
    cache = dl.open_cache(gray_only, 16, str(tmp_path / 'cache'))
    assert cache.pixels.shape == (len(gray_only), 1, 16, 16)  # grayscale: one byte a pixel
    assert_same_pixels(cache, dl.PixelStore(cache, 'cpu'), gray_only, 16)


def test_cached_pixels_equal_the_per_step_decode_on_real_nih_images(tmp_path):
    root = NIH_MINI
    paths = dl.list_images(os.path.join(root, 'mixed'))[:12]
    cache = dl.open_cache(paths, 64, str(tmp_path / 'cache'))
    assert cache.pixels.shape == (12, 1, 64, 64)
    assert_same_pixels(cache, dl.PixelStore(cache, 'cpu'), paths, 64)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')
def test_cache_held_on_the_gpu_gives_the_same_pixels(tmp_path):
    paths = write_mixed_formats(str(tmp_path / 'img'))
    cache = dl.open_cache(paths, 32, str(tmp_path / 'cache'))
    store = dl.PixelStore(cache, 'cuda')
    assert store.where == 'cuda tensor' and store.pixels.is_cuda
    x = store.images(np.arange(len(paths)))
    assert x.is_cuda
    expected = torch.stack([per_step(p, 32) for p in sorted(paths)])
    assert (x.cpu() - expected).abs().max() * 127.5 <= 1


def config_for(root, tmp_path, **kw):
    c = dict(dataset='Folder', image_dir=str(root), image_size=16, batch_size=4, num_workers=0,
             seed=5, data_cache='on', bad_images='refuse', cache_dir=str(tmp_path / 'cache'))
    c.update(kw)
    return SimpleNamespace(**c)


def batches(loader):
    return [tuple(t.clone() if isinstance(t, torch.Tensor) else t for t in b) for b in loader]


def assert_equal_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert len(x) == len(y) and all(torch.equal(u, v) for u, v in zip(x, y))


def nested_layout(root):
    """mixed, healthy, test/normal, test/anomalous: 5, 3, 2, 3 random PNGs of different sizes
    (cropping and resizing matter); the split {name: paths}."""
    rng = np.random.default_rng(0)
    for sub, n in [('mixed', 5), ('healthy', 3), ('test/normal', 2), ('test/anomalous', 3)]:
        os.makedirs(root / sub)
        for k in range(n):
            arr = rng.integers(0, 256, (30 + 3 * k, 24 + 2 * k), dtype=np.uint8)
            Image.fromarray(arr).save(root / sub / f'{k}.png')
    return {name: dl.list_images(str(root / sub)) for name, sub in
            [('mixed', 'mixed'), ('healthy', 'healthy'), ('test_normal', 'test/normal'),
             ('test_anomalous', 'test/anomalous')]}


def test_cached_loader_samples_exactly_as_the_per_step_loader(tmp_path):
    root = tmp_path / 'data'
    split = nested_layout(root)
    on = config_for(root, tmp_path)
    off = config_for(root, tmp_path, data_cache='off')

    new, old = dl.get_loader(on, 'train', split), dl.get_loader(off, 'train', split)
    assert isinstance(new, dl.CachedLoader) and not isinstance(old, dl.CachedLoader)
    assert len(new.dataset) == len(old.dataset) == 8 and len(new) == len(old) == 2
    assert new.sampler.order(0) == old.sampler.order(0) != new.sampler.order(1)
    for k in range(8):  # pairs: mixed[k % 5], healthy[k % 3], flipped from (seed, k)
        assert all(torch.equal(a, b) for a, b in zip(new.dataset[k], old.dataset[k]))
    # epochs 0 and 1 (reshuffled), then a resume in the middle of epoch 3, as train() does
    for epoch, start in [(0, 0), (1, 0), (3, 4)]:
        for loader in (new, old):
            loader.sampler.epoch, loader.sampler.start = epoch, start
        assert_equal_batches(batches(new), batches(old))
    assert len(batches(new)) == 1  # 4 of 8 pairs left at batch size 4

    new, old = dl.get_loader(on, 'test', split), dl.get_loader(off, 'test', split)
    assert_equal_batches(batches(new), batches(old))  # in order, no flips

    new, old = dl.get_loader(on, 'testAUC', split), dl.get_loader(off, 'testAUC', split)
    assert new.dataset.paths == old.dataset.paths and new.dataset.labels == [0, 0, 1, 1, 1]
    assert_equal_batches(batches(new), batches(old))  # (images, labels, indices)


def test_training_from_the_cache_equals_training_from_per_step_decoding(tmp_path,
                                                                        folder_dataset):
    common = ['--num_iters', '3', '--model_save_step', '3', '--deterministic', 'true',
              '--use_tensorboard', 'false']
    cli.main(tiny_args(tmp_path / 'on', folder_dataset, *common))
    cli.main(tiny_args(tmp_path / 'off', folder_dataset, *common, '--data_cache', 'off'))
    assert glob.glob(os.path.join(os.environ['XDG_CACHE_HOME'], 'healthygan', '*.npy'))
    assert not (folder_dataset / '.cache').exists()  # nothing written into the data folder
    for net in ('G', 'D'):
        a = torch.load(tmp_path / 'on' / 'run' / 'models' / f'3-{net}.ckpt', weights_only=True)
        b = torch.load(tmp_path / 'off' / 'run' / 'models' / f'3-{net}.ckpt', weights_only=True)
        assert all(torch.equal(a[k], b[k]) for k in a), net  # bit for bit


def test_cache_is_reused_and_rebuilt_when_an_image_or_a_parameter_changes(tmp_path):
    paths = write_mixed_formats(str(tmp_path / 'img'))[:3]
    folder = str(tmp_path / 'cache')
    first = dl.open_cache(paths, 16, folder)
    assert first.built and dl.open_cache(list(reversed(paths)), 16, folder).built is False
    assert dl.open_cache(paths, 24, folder).built  # another image size: another cache
    assert len(glob.glob(os.path.join(folder, '*.npy'))) == 2

    Image.fromarray(np.full((20, 20), 200, np.uint8)).save(paths[0])  # an image changes
    os.utime(paths[0], ns=(1, 1))
    changed = dl.open_cache(paths, 16, folder)
    assert changed.built and changed.path != first.path
    assert not os.path.exists(first.path)  # the stale version of the same set is removed
    assert (changed.pixels[changed.rows[os.path.abspath(paths[0])]] == 200).all()
    assert len(glob.glob(os.path.join(folder, '*.npy'))) == 2

    with open(changed.path, 'r+b') as f:  # a damaged cache file is rebuilt, not trusted
        f.truncate(100)
    assert dl.open_cache(paths, 16, folder).built
    assert not glob.glob(os.path.join(folder, '*.tmp'))


def _open_at_once(barrier, results, paths, folder):
    barrier.wait()  # both processes ask for the cache at the same moment
    c = dl.open_cache(paths, 32, folder)
    results.put((bool(c.built), c.path, int(c.pixels.sum())))


@pytest.mark.skipif(sys.platform == 'win32', reason='uses fork')
def test_two_runs_starting_at_once_build_the_cache_once(tmp_path):
    paths = write_mixed_formats(str(tmp_path / 'img'))
    ctx = multiprocessing.get_context('fork')  # two processes, as two runs started together
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_open_at_once, args=(barrier, results, paths,
                                                      str(tmp_path / 'cache'))) for _ in range(2)]
    for p in procs:
        p.start()
    got = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert sorted(built for built, _, _ in got) == [False, True]  # one built, one waited
    assert got[0][1:] == got[1][1:]  # same file, same pixels
    stem = os.path.basename(got[0][1])[:-len('.npy')]
    assert sorted(os.listdir(tmp_path / 'cache')) == [stem + '.json', stem + '.lock',
                                                      stem + '.npy']  # no temporary files left


def test_unreadable_images_are_recorded_in_the_cache(tmp_path):
    paths = write_mixed_formats(str(tmp_path / 'img'))[:2]
    broken = tmp_path / 'img' / 'z_broken.png'
    broken.write_text('not an image')
    cache = dl.open_cache(paths + [str(broken)], 16, str(tmp_path / 'cache'))
    assert list(cache.bad) == [str(broken)] and 'z_broken.png' in cache.bad[str(broken)]
    again = dl.open_cache(paths + [str(broken)], 16, str(tmp_path / 'cache'))
    assert again.built is False and again.bad == cache.bad  # known without decoding again


def test_default_cache_folder_is_the_user_cache(tmp_path, monkeypatch):
    c = SimpleNamespace(image_dir=str(tmp_path / 'data'), cache_dir='')
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))
    assert dl.default_cache_dir(c) == str(tmp_path / 'xdg' / 'healthygan')
    monkeypatch.delenv('XDG_CACHE_HOME')
    assert dl.default_cache_dir(c) == os.path.join(os.path.expanduser('~'), '.cache', 'healthygan')
    c.cache_dir = str(tmp_path / 'elsewhere')
    assert dl.default_cache_dir(c) == c.cache_dir


def test_mean_image_is_the_same_from_the_cache_and_from_decoding(tmp_path):
    split = nested_layout(tmp_path / 'data')
    on = config_for(tmp_path / 'data', tmp_path)
    off = config_for(tmp_path / 'data', tmp_path, data_cache='off')
    a, b = dl.mean_image(split['healthy'], on), dl.mean_image(split['healthy'], off)
    expected = torch.stack([dl.build_transform(16)(dl.load_image(p))
                            for p in split['healthy']]).mean(0)
    assert a.shape == b.shape == (3, 16, 16)
    assert torch.allclose(a, expected, atol=1e-5) and torch.allclose(b, expected, atol=1e-5)


def test_lung_prior_reads_the_training_cache_without_building_another(tmp_path):
    split = nested_layout(tmp_path / 'data')
    config = config_for(tmp_path / 'data', tmp_path)
    dl.get_loader(config, 'train', split)  # builds the training set's cache
    built = sorted(os.listdir(tmp_path / 'cache'))
    mean = dl.mean_image(split['healthy'], config, among=split['mixed'] + split['healthy'])
    assert sorted(os.listdir(tmp_path / 'cache')) == built
    assert torch.allclose(mean, dl.mean_image(split['healthy'], config), atol=1e-6)
