"""Image formats (PNG / JPEG in every mode, 16 bits, DICOM) and unreadable files (skip / refuse)."""
import os
import sys

import numpy as np
import pytest
from PIL import Image

import data_loader as dl
import main as cli
from conftest import tiny_args


def write_dicom(path, arr, photometric='MONOCHROME2', bits_stored=12, **attrs):
    """A minimal single-frame grayscale DICOM (Digital X-Ray) with arr as its pixel data."""
    pytest.importorskip('pydicom')
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = '1.2.840.10008.5.1.4.1.1.1.1'  # DX for presentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = 'DX'
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits_stored, bits_stored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(arr, dtype='<u2').tobytes()
    for name, value in attrs.items():
        setattr(ds, name, value)
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    try:
        ds.save_as(str(path), enforce_file_format=True)  # pydicom >= 3
    except TypeError:  # pydicom 2
        ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.save_as(str(path), write_like_original=False)
    return str(path)


def rgb(path):
    img = dl.load_image(str(path))
    assert img.mode == 'RGB'
    return np.asarray(img)


def test_png_and_jpeg_in_every_mode_open_as_8_bit_rgb(tmp_path):
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (12, 10), dtype=np.uint8)
    colour = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
    alpha = rng.integers(0, 256, (12, 10, 1), dtype=np.uint8)

    Image.fromarray(gray).save(tmp_path / 'l.png')
    assert (rgb(tmp_path / 'l.png') == gray[..., None]).all()  # 3 equal channels
    Image.fromarray(colour).save(tmp_path / 'rgb.png')
    assert (rgb(tmp_path / 'rgb.png') == colour).all()
    # RGBA loses its alpha channel, as the original's convert('RGB') did
    Image.fromarray(np.concatenate([colour, alpha], 2)).save(tmp_path / 'rgba.png')
    assert (rgb(tmp_path / 'rgba.png') == colour).all()
    Image.fromarray(np.concatenate([gray[..., None], alpha], 2)).save(tmp_path / 'la.png')
    assert (rgb(tmp_path / 'la.png') == gray[..., None]).all()
    palette = Image.fromarray(colour).quantize(16)
    palette.save(tmp_path / 'p.png')
    assert Image.open(tmp_path / 'p.png').mode == 'P'
    assert (rgb(tmp_path / 'p.png') == np.asarray(palette.convert('RGB'))).all()
    # 16 bits: the image's own range stretched to 0..255 (convert('RGB') would clip at 255)
    Image.fromarray((gray.astype(np.uint16) * 16 + 1000)).save(tmp_path / 'i16.png')
    assert Image.open(tmp_path / 'i16.png').mode.startswith('I')
    got = rgb(tmp_path / 'i16.png')[..., 0].astype(int)
    expected = np.round((gray - gray.min()) * 255.0 / (gray.max() - gray.min()))
    assert np.abs(got - expected).max() <= 1
    # JPEG (lossy): grayscale and colour
    smooth = np.repeat(np.linspace(0, 255, 16, dtype=np.uint8)[None], 16, 0)
    Image.fromarray(smooth).save(tmp_path / 'l.jpg', quality=95)
    assert np.abs(rgb(tmp_path / 'l.jpg').astype(int) - smooth[..., None]).max() <= 4
    Image.fromarray(np.stack([smooth, smooth.T, 255 - smooth], 2)).save(tmp_path / 'c.jpeg',
                                                                         quality=95)
    assert rgb(tmp_path / 'c.jpeg').shape == (16, 16, 3)


def test_dicom_is_rescaled_windowed_and_monochrome1_inverted(tmp_path):
    values = np.arange(0, 4000, 50, dtype=np.uint16).reshape(8, 10)
    # Without a window, the stored range is stretched to 8 bits, exactly as a 16-bit PNG
    Image.fromarray(values).save(tmp_path / 'same.png')
    m2 = rgb(write_dicom(tmp_path / 'm2.dcm', values))
    assert (m2 == rgb(tmp_path / 'same.png')).all() and m2.min() == 0 and m2.max() == 255
    # MONOCHROME1 (low values bright) comes out inverted: bright bones either way
    m1 = rgb(write_dicom(tmp_path / 'm1.dcm', values, photometric='MONOCHROME1'))
    assert (m1 == 255 - m2).all()
    # Rescale to Hounsfield-like units, then the stored window (centre 40, width 400)
    hu = rgb(write_dicom(tmp_path / 'win.dcm', values, RescaleIntercept=-1024, RescaleSlope=1,
                         WindowCenter=40, WindowWidth=400))[..., 0]
    v = values.astype(float) - 1024
    assert (hu[v <= 40 - 0.5 - 399 / 2] == 0).all() and (hu[v > 40 - 0.5 + 399 / 2] == 255).all()
    inside = (v > -160) & (v < 240)
    assert inside.any()
    expected = np.round(((v - 39.5) / 399 + 0.5) * 255)
    assert (hu[inside] == expected[inside]).all()
    # Multi-valued windows: the first one is used
    multi = rgb(write_dicom(tmp_path / 'multi.dcm', values, RescaleIntercept=-1024,
                            WindowCenter=[40, 500], WindowWidth=[400, 2000]))[..., 0]
    assert (multi == hu).all()


def test_dicom_window_functions():
    x = np.array([-1000.0, 39.5, 40.0, 1000.0])
    assert dl.dicom_window(x, 40, 400).tolist() == [0, 128, 128, 255]
    assert dl.dicom_window(x, 40, 400, 'LINEAR_EXACT').tolist() == [0, 127, 128, 255]
    assert dl.dicom_window(x, 40, 400, 'SIGMOID').tolist() == [0, 127, 128, 255]
    assert dl.dicom_window(x, 40, 1).tolist() == [0, 0, 255, 255]


def test_dicom_without_pydicom_says_how_to_get_it(tmp_path, monkeypatch):
    path = write_dicom(tmp_path / 'x.dcm', np.zeros((4, 4), np.uint16))
    monkeypatch.setitem(sys.modules, 'pydicom', None)  # as if it were not installed
    with pytest.raises(dl.DataError, match=r'x\.dcm.*pip install pydicom'):
        dl.load_image(path)


def test_dicom_files_are_listed_as_images(tmp_path):
    write_dicom(tmp_path / 'a.dcm', np.zeros((4, 4), np.uint16))
    (tmp_path / 'b.DICOM').write_bytes(b'x')
    assert [os.path.basename(p) for p in dl.list_images(str(tmp_path))] == ['a.dcm', 'b.DICOM']


def write_corrupt_files(folder):
    """A truncated PNG, a text file named .png, a truncated JPEG and a text file named .dcm."""
    os.makedirs(folder, exist_ok=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)).save(
        os.path.join(folder, 'whole.png'))
    with open(os.path.join(folder, 'whole.png'), 'rb') as f:
        png = f.read()
    with open(os.path.join(folder, 'truncated.png'), 'wb') as f:
        f.write(png[:len(png) // 2])
    with open(os.path.join(folder, 'notes.png'), 'w') as f:
        f.write('not an image\n')
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(os.path.join(folder, 'whole.jpg'))
    with open(os.path.join(folder, 'whole.jpg'), 'rb') as f:
        jpg = f.read()
    with open(os.path.join(folder, 'truncated.jpg'), 'wb') as f:
        f.write(jpg[:len(jpg) // 2])
    with open(os.path.join(folder, 'notes.dcm'), 'w') as f:
        f.write('not DICOM either\n')
    os.remove(os.path.join(folder, 'whole.png'))
    os.remove(os.path.join(folder, 'whole.jpg'))
    return ['truncated.png', 'notes.png', 'truncated.jpg', 'notes.dcm']


def test_every_kind_of_broken_file_is_a_data_error_naming_it(tmp_path):
    pytest.importorskip('pydicom')
    for name in write_corrupt_files(str(tmp_path)):
        with pytest.raises(dl.DataError, match=name.replace('.', r'\.')):
            dl.load_image(str(tmp_path / name))


@pytest.mark.parametrize('cache', ['on', 'off'])
def test_unreadable_images_are_refused_before_training_or_skipped(tmp_path, folder_dataset,
                                                                  capsys, cache):
    (folder_dataset / 'mixed' / 'bad').mkdir()
    with open(folder_dataset / 'mixed' / 'img_0.png', 'rb') as f:
        png = f.read()
    (folder_dataset / 'mixed' / 'bad' / 'truncated.png').write_bytes(png[:len(png) // 2])
    (folder_dataset / 'healthy' / 'notes.png').write_text('not an image\n')
    args = ['--num_iters', '1', '--use_tensorboard', 'false', '--data_cache', cache,
            '--cache_dir', str(tmp_path / 'cache')]

    with pytest.raises(SystemExit) as e:
        cli.main(tiny_args(tmp_path / 'refuse', folder_dataset, *args))
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert '2 unreadable images' in err and 'truncated.png' in err and 'notes.png' in err
    assert 'error: 2 of 14 images cannot be read' in err and '--bad_images skip' in err
    assert not os.listdir(tmp_path / 'refuse' / 'run' / 'models')  # before any training

    cli.main(tiny_args(tmp_path / 'skip', folder_dataset, *args, '--bad_images', 'skip'))
    out, err = capsys.readouterr()
    assert 'leaving out 2 unreadable images of 14' in err
    assert 'truncated.png' in err and 'notes.png' in err
    assert '12 pairs an epoch' in out  # 6 mixed + 6 healthy: the readable ones
    assert os.path.exists(tmp_path / 'skip' / 'run' / 'models' / '1-G.ckpt')
