"""Image and label I/O: every format and dtype of the challenge data, and bad inputs."""
import warnings

import numpy as np
import pytest
import tifffile
import cv2

from utils.io import (InputError, list_images, load_image, normalize_image, read_image, read_label,
                      write_image, write_label)

RNG = np.random.default_rng(0)


def _image(dtype, channels, h=40, w=50):
    shape = (h, w) if channels == 1 else (h, w, channels)
    if np.dtype(dtype).kind == "f":
        return RNG.random(shape).astype(dtype) * 1000
    info = np.iinfo(dtype)
    return RNG.integers(max(info.min, -3000), min(info.max, 60000), shape).astype(dtype)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.float32])
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_tiff_roundtrip_channel_last(tmp_path, dtype, channels):
    img = _image(dtype, channels)
    tifffile.imwrite(tmp_path / "x.tif", img, photometric="rgb" if channels in (3, 4) else None)
    out = read_image(tmp_path / "x.tif")
    assert out.shape == (40, 50, channels) and out.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(out.reshape(img.shape), img)
    net = normalize_image(out)
    assert net.shape == (40, 50, 3) and net.dtype == np.uint8


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_write_image_tiff_roundtrip_says_rgb(tmp_path, channels):
    """write_image names RGB(A) TIFFs as such (tifffile's default for them is deprecated)."""
    img = _image(np.float32, channels)   # float and int16 RGB are where tifffile warns
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        write_image(tmp_path / "w.tif", img)
    np.testing.assert_array_equal(read_image(tmp_path / "w.tif").reshape(img.shape), img)
    if channels > 1:
        assert tifffile.TiffFile(tmp_path / "w.tif").pages[0].photometric == tifffile.PHOTOMETRIC.RGB


@pytest.mark.parametrize("channels", [2, 3, 4])
def test_tiff_channel_first_is_detected(tmp_path, channels):
    img = _image(np.uint16, channels)
    rgb = {"photometric": "rgb", "planarconfig": "separate"} if channels in (3, 4) else {}
    tifffile.imwrite(tmp_path / "x.tiff", np.moveaxis(img, -1, 0), **rgb)   # channel planes
    out = read_image(tmp_path / "x.tiff")
    np.testing.assert_array_equal(out, img)


@pytest.mark.parametrize("ext", [".png", ".bmp", ".jpg"])
@pytest.mark.parametrize("channels", [1, 3])
def test_opencv_formats_are_rgb(tmp_path, ext, channels):
    img = np.zeros((30, 30, 3), np.uint8)
    img[..., 0] = 200  # red
    if channels == 1:
        img = img[..., 0]
    write_image(tmp_path / f"x{ext}", img)
    out = read_image(tmp_path / f"x{ext}")
    assert out.shape == (30, 30, channels)
    if channels == 3:
        assert abs(int(out[..., 0].mean()) - 200) <= 2 and out[..., 2].mean() < 3


def test_rgba_png_roundtrip(tmp_path):
    img = _image(np.uint8, 4)
    write_image(tmp_path / "x.png", img)
    np.testing.assert_array_equal(read_image(tmp_path / "x.png"), img)


def test_sixteen_bit_png(tmp_path):
    img = _image(np.uint16, 1)
    cv2.imwrite(str(tmp_path / "x.png"), img)
    assert read_image(tmp_path / "x.png").dtype == np.uint16


def test_normalize_no_overflow_and_constant():
    img = np.full((20, 20, 1), 65535, np.uint16)
    img[5:10, 5:10] = 0
    net = normalize_image(img)
    assert net.max() == 255 and net.min() == 0
    assert not normalize_image(np.full((8, 8, 3), 7, np.uint16)).any()  # constant image -> 0
    const_float = normalize_image(np.full((8, 8, 1), np.nan, np.float32)[..., :1] * 0 + 3)
    assert not const_float.any()


@pytest.mark.parametrize("dtype", [np.float32, np.uint16])
def test_normalize_percentiles_per_channel(dtype):
    img = np.zeros((100, 100, 3), dtype)
    img[..., 1] = np.linspace(0, 3000, 100)[None]        # green ramp
    img[..., 2] = np.linspace(1000, 5000, 100)[:, None]  # blue ramp, another offset and range
    net = normalize_image(img)
    assert net[..., 0].max() == 0
    assert net[..., 1].max() == 255 and net[..., 2].max() == 255
    assert net[..., 1].min() == 0 and net[..., 2].min() == 0


def test_normalize_keeps_a_nearly_empty_channel_dark():
    rng = np.random.default_rng(1)
    img = np.zeros((100, 100, 3), np.uint8)
    img[..., 0] = rng.integers(0, 4, (100, 100))         # red: camera noise only
    img[..., 1] = np.linspace(0, 200, 100)[None]          # green: the signal
    net = normalize_image(img)
    assert net[..., 1].max() == 255 and np.median(net[..., 0]) < 10


def test_normalize_grey_is_replicated():
    img = np.linspace(0, 65535, 64 * 64).reshape(64, 64, 1).astype(np.uint16)
    net = normalize_image(img)
    assert (net[..., 0] == net[..., 1]).all() and (net[..., 1] == net[..., 2]).all()
    assert net.min() == 0 and net.max() == 255


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.int32, np.uint32])
def test_label_dtypes(tmp_path, dtype):
    lab = np.zeros((20, 30), dtype)
    lab[2:5, 2:5] = 1
    lab[10:15, 10:20] = 7
    tifffile.imwrite(tmp_path / "l.tiff", lab)
    out = read_label(tmp_path / "l.tiff", shape=(20, 30))
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, lab.astype(np.int32))


def test_label_png(tmp_path):
    lab = np.zeros((20, 30), np.uint16)
    lab[3:9, 3:9] = 300
    cv2.imwrite(str(tmp_path / "l.png"), lab)
    assert read_label(tmp_path / "l.png").max() == 300


def test_write_label_uint16_then_uint32(tmp_path):
    small = np.arange(12, dtype=np.int64).reshape(3, 4)
    write_label(tmp_path / "a_label.tiff", small)
    with tifffile.TiffFile(tmp_path / "a_label.tiff") as tf:
        page = tf.pages[0]
        assert page.dtype == np.uint16 and page.compression == 8  # zlib/deflate
    big = np.arange(70000, dtype=np.int64).reshape(100, 700)
    write_label(tmp_path / "b_label.tiff", big)
    out = tifffile.imread(tmp_path / "b_label.tiff")
    assert out.dtype == np.uint32 and out.max() == 69999
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary left behind


def _one_line(exc: InputError, name: str):
    msg = str(exc)
    assert "\n" not in msg and name in msg, msg


@pytest.mark.parametrize("case", ["missing", "empty", "truncated", "garbage", "nan", "stack3d"])
def test_bad_images_one_line_error(tmp_path, case):
    path = tmp_path / f"bad_{case}.tif"
    if case == "empty":
        path.write_bytes(b"")
    elif case == "truncated":
        tifffile.imwrite(path, _image(np.uint16, 1, 200, 200))
        path.write_bytes(path.read_bytes()[:300])
    elif case == "garbage":
        path = tmp_path / "bad.png"
        path.write_bytes(b"this is not a png" * 10)
    elif case == "nan":
        tifffile.imwrite(path, np.full((10, 10), np.nan, np.float32))
    elif case == "stack3d":
        tifffile.imwrite(path, np.zeros((12, 30, 30), np.uint8))
    with pytest.raises(InputError) as err:
        read_image(path)
        load_image(path)
    _one_line(err.value, path.name)


def test_label_shape_mismatch_and_bad_values(tmp_path):
    tifffile.imwrite(tmp_path / "l.tiff", np.zeros((10, 12), np.uint16))
    with pytest.raises(InputError) as err:
        read_label(tmp_path / "l.tiff", shape=(10, 13))
    _one_line(err.value, "l.tiff")
    tifffile.imwrite(tmp_path / "neg.tiff", -np.ones((4, 4), np.int16))
    with pytest.raises(InputError):
        read_label(tmp_path / "neg.tiff")
    tifffile.imwrite(tmp_path / "stack.tiff", np.zeros((5, 10, 12), np.uint16))
    with pytest.raises(InputError):
        read_label(tmp_path / "stack.tiff")


def test_list_images(tmp_path):
    for name in ("b.png", "a.TIF", "c.txt", ".hidden.png"):
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in list_images(tmp_path)] == ["a.TIF", "b.png"]
    with pytest.raises(InputError):
        list_images(tmp_path / "nope")


def _tiff(path, arr, **kw):
    tifffile.imwrite(path, arr, **kw)
    return path


@pytest.mark.parametrize("case, words", [
    ("complex64", "unsupported pixel type complex64"),
    ("imagej_z3", "3D stack of 3 planes along axis Z"),
    ("hwc5", "5 channels"),
    ("chw5", "5 channels"),
    ("one_pixel", "1x1 pixels is too small"),
    ("one_row", "1x300 pixels is too small"),
    ("one_column_png", "300x1 pixels is too small"),
])
def test_odd_shapes_and_types_are_named_for_what_they_are(tmp_path, case, words):
    img = _image(np.uint8, 1, 30, 30)
    path = tmp_path / f"{case}.tif"
    if case == "complex64":
        _tiff(path, img.astype(np.complex64))
    elif case == "imagej_z3":  # a z-stack of 3 planes (ImageJ axes ZYX): not 3 channels
        _tiff(path, np.stack([img] * 3), imagej=True, metadata={"axes": "ZYX"})
    elif case == "hwc5":
        _tiff(path, np.stack([img] * 5, axis=-1))
    elif case == "chw5":
        _tiff(path, np.stack([img] * 5))
    elif case == "one_pixel":
        _tiff(path, img[:1, :1])
    elif case == "one_row":
        _tiff(path, np.zeros((1, 300), np.uint16))
    elif case == "one_column_png":
        path = tmp_path / "col.png"
        cv2.imwrite(str(path), np.zeros((300, 1), np.uint8))
    with pytest.raises(InputError) as err:
        read_image(path)
    _one_line(err.value, path.name)
    assert words in str(err.value)
    assert "shape ()" not in str(err.value) and "(300,)" not in str(err.value)


def test_tiff_axes_metadata_decides_channels(tmp_path, caplog):
    img = _image(np.uint16, 3)
    chw = np.moveaxis(img, -1, 0)
    ij = _tiff(tmp_path / "ij.tif", chw, imagej=True, metadata={"axes": "CYX"})
    np.testing.assert_array_equal(read_image(ij), img)  # named channels: no warning
    assert not caplog.records
    pages = _tiff(tmp_path / "pages.tif", chw, photometric="minisblack")
    with caplog.at_level("WARNING"):
        np.testing.assert_array_equal(read_image(pages), img)
    assert "3 pages without axes metadata" in caplog.text  # not silent any more
    # a singleton spatial axis is not squeezed away: 2x2 is the smallest image
    assert read_image(_tiff(tmp_path / "two.tif", np.ones((2, 2), np.uint8))).shape == (2, 2, 1)


def test_select_channels_cellpose_convention():
    """chan/chan2 are 1-based (0 = grey mean); the pair keeps (cytoplasm, nucleus) in that order,
    and a channel the image lacks is a one-line InputError naming the file."""
    from utils.io import InputError, select_channels
    img = np.stack([np.full((4, 5), v, np.uint16) for v in (10, 20, 60)], axis=2)
    assert select_channels(img, 2).shape == (4, 5, 1) and (select_channels(img, 2) == 20).all()
    assert np.allclose(select_channels(img, 0), 30.0)
    pair = select_channels(img, 3, 1)
    assert pair.shape == (4, 5, 2) and (pair[..., 0] == 60).all() and (pair[..., 1] == 10).all()
    with pytest.raises(InputError, match="x.tif.*3 channel"):
        select_channels(img, 1, 4, source="x.tif")
