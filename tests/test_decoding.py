"""One image decoder for every entry path: the same file gives the same pixels through the dataset loaders, ``losam
data convert``, one-shot ``--train-image`` (``read_pair``), the processor and the pipeline; formats; storage."""

import ast
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import tiny_model
from PIL import Image

import losam_peft
from losam_peft import LoSamImageProcessor, data
from losam_peft.data.io import encode_png, to_storable
from losam_peft.data.samples import read_pair, samples_from_dataset
from losam_peft.errors import DataError, LoSamValueError
from losam_peft.image_processing_losam import (
    BIT_DEPTH_KEY,
    decode_array,
    decode_image,
    open_image,
    storable_image,
    to_float_rgb,
    to_rgb8,
)
from losam_peft.pipeline import LoSamPipeline
from losam_peft.tiling import count_tiles, tiled_probabilities
from losam_peft.visualization import comparison_panel, overlay, palette

H, W = 24, 32
SRC = Path(losam_peft.__file__).parent


@pytest.fixture(scope="module")
def processor():
    return LoSamImageProcessor(image_size=64)


@pytest.fixture(scope="module")
def pipe():
    model = tiny_model()
    with torch.no_grad():
        model.segmentation_head.classifier.bias.copy_(torch.tensor([0.0, 0.0]))
    return LoSamPipeline(model, LoSamImageProcessor(image_size=64), device="cpu", dtype="fp32")


def _mask():
    mask = np.zeros((H, W), np.uint8)
    mask[4:12, 6:20] = 255
    return mask


def _integers(top: int, seed: int) -> np.ndarray:
    values = np.random.default_rng(seed).integers(0, top + 1, (H, W)).astype(np.uint16)
    values[0, 0] = top
    return values


def _dark_float(seed: int = 3) -> np.ndarray:
    # dark on purpose: stored as round(v * 65535) its maximum is below 4096, where the 12-bit rule would misread it
    values = (np.random.default_rng(seed).random((H, W)) * 0.05).astype(np.float32)
    values[1, 1] = np.nan
    return values


SOURCES = {
    "sixteen_max1000": ("png", lambda: _integers(1000, 1), 1000 / 4095),
    "twelve_in_16_max4000": ("png", lambda: _integers(4000, 2), 4000 / 4095),
    "float32": ("tif", _dark_float, None),
}


def _folder(tmp_path: Path, name: str):
    ext, make, _ = SOURCES[name]
    root = tmp_path / name
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    image_path = root / "images" / f"x.{ext}"
    Image.fromarray(make()).save(image_path)
    Image.fromarray(_mask()).save(root / "masks" / "x.png")
    return root, image_path, root / "masks" / "x.png"


def _same(a: torch.Tensor, b: torch.Tensor, exact: bool):
    if exact:
        assert torch.equal(a, b), float((a - b).abs().max())
    else:
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4)


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_every_entry_path_gives_the_same_pixel_values(tmp_path, name, processor, pipe):
    import datasets

    root, image_path, mask_path = _folder(tmp_path, name)
    exact = SOURCES[name][2] is not None
    reference = processor(str(image_path))["pixel_values"]  # (b) the file path

    pixels, note = decode_image(image_path)
    if exact:  # the processor's bit-depth rule: 12-bit when no value exceeds 4095
        assert float(pixels.max()) == pytest.approx(SOURCES[name][2], abs=1e-7)
        assert note == "16-bit image scaled by its bit depth (12-bit)"
    else:
        original = np.asarray(Image.open(image_path), dtype=np.float32)
        np.testing.assert_allclose(pixels[0].numpy(), np.nan_to_num(original, nan=0.0), atol=1e-7)
        assert "1 non-finite pixel set to 0" in note

    ds = data.load("folder", root)  # (a) the dataset loader
    _same(processor(ds[0]["image"])["pixel_values"], reference, exact)
    _same(processor(samples_from_dataset(ds)[0].image)["pixel_values"], reference, exact)

    sample = read_pair(image_path, mask_path)  # (c) one-shot --train-image
    _same(processor(sample.image)["pixel_values"], reference, exact)
    assert sample.label.max() == 1

    out = data.convert("folder", root, tmp_path / f"{name}_converted")  # (d) losam data convert
    converted = datasets.load_from_disk(str(out))
    _same(processor(converted[0]["image"])["pixel_values"], reference, exact)

    # and the pipeline: the file and the stored row give the same probabilities
    by_path = pipe(image_path, return_probabilities=True).probabilities
    by_row = pipe(converted[0]["image"], return_probabilities=True).probabilities
    by_shot = pipe(sample.image, return_probabilities=True).probabilities
    if exact:
        np.testing.assert_array_equal(by_row, by_path)
        np.testing.assert_array_equal(by_shot, by_path)
    else:
        np.testing.assert_allclose(by_row, by_path, atol=1e-3)
        np.testing.assert_allclose(by_shot, by_path, atol=1e-5)


# -- formats -----------------------------------------------------------------------------------------------------------
def _rgb(seed=0):
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def _write(tmp_path: Path, name: str, image: Image.Image, **save) -> Path:
    path = tmp_path / name
    image.save(path, **save)
    Image.fromarray(_mask()).save(tmp_path / f"{path.stem}_mask.png")
    return path


def _through_pair_and_pipeline(path: Path, processor, pipe) -> torch.Tensor:
    """The decoded pixels; asserts read_pair and the pipeline see exactly them."""
    pixels, _ = decode_image(path)
    sample = read_pair(path, path.with_name(f"{path.stem}_mask.png"))
    assert torch.equal(to_float_rgb(sample.image), pixels)
    assert torch.equal(processor(sample.image)["pixel_values"], processor(path)["pixel_values"])
    np.testing.assert_array_equal(
        pipe(path, return_probabilities=True).probabilities,
        pipe(sample.image, return_probabilities=True).probabilities,
    )
    return pixels


def _hwc(pixels: torch.Tensor) -> np.ndarray:
    return pixels.permute(1, 2, 0).numpy()


def test_cmyk_jpeg_is_not_inverted(tmp_path, processor, pipe):
    rgb = _rgb(1)
    path = _write(tmp_path, "cmyk.jpg", Image.fromarray(rgb).convert("CMYK"), quality=95)
    pixels = _through_pair_and_pipeline(path, processor, pipe)
    expected = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0  # PIL's own conversion
    np.testing.assert_array_equal(_hwc(pixels), expected)
    assert np.abs(_hwc(pixels) - rgb / 255.0).mean() < 0.08  # close to the colours it was made from
    assert decode_image(path)[1] == "CMYK converted to RGB"


def test_palette_png_is_read_through_its_palette(tmp_path, processor, pipe):
    indices = np.random.default_rng(2).integers(0, 4, (H, W)).astype(np.uint8)
    image = Image.fromarray(indices, mode="P")
    colours = [(200, 10, 10), (10, 200, 10), (10, 10, 200), (250, 250, 250)]
    image.putpalette([c for colour in colours for c in colour] + [0] * (256 - 4) * 3)
    path = _write(tmp_path, "palette.png", image)
    pixels = _through_pair_and_pipeline(path, processor, pipe)
    np.testing.assert_array_equal(_hwc(pixels), np.asarray(colours, np.float32)[indices] / 255.0)
    assert decode_image(path)[1] == "palette converted to RGB"


def test_alpha_grey_and_one_bit_images(tmp_path, processor, pipe):
    rgb = _rgb(3)
    rgba = np.dstack([rgb, np.full((H, W), 9, np.uint8)])
    pixels = _through_pair_and_pipeline(_write(tmp_path, "rgba.png", Image.fromarray(rgba, "RGBA")), processor, pipe)
    np.testing.assert_array_equal(_hwc(pixels), rgb.astype(np.float32) / 255.0)
    assert decode_image(tmp_path / "rgba.png")[1] == "alpha channel ignored"

    grey = rgb[..., 0]
    la = Image.fromarray(np.dstack([grey, np.zeros_like(grey)]), "LA")
    pixels = _through_pair_and_pipeline(_write(tmp_path, "la.png", la), processor, pipe)
    for channel in range(3):
        np.testing.assert_array_equal(pixels[channel].numpy(), grey.astype(np.float32) / 255.0)

    bits = np.random.default_rng(4).random((H, W)) > 0.5
    pixels = _through_pair_and_pipeline(_write(tmp_path, "bits.png", Image.fromarray(bits)), processor, pipe)
    np.testing.assert_array_equal(pixels[0].numpy(), bits.astype(np.float32))


def test_sixteen_bit_full_range(tmp_path, processor, pipe):
    values = _integers(65535, 5)
    path = _write(tmp_path, "sixteen.png", Image.fromarray(values))
    assert Image.open(path).mode == "I;16"
    pixels = _through_pair_and_pipeline(path, processor, pipe)
    np.testing.assert_array_equal(pixels[0].numpy(), values.astype(np.float32) / 65535.0)
    assert decode_image(path)[1] == "16-bit image scaled by its bit depth (16-bit)"


def test_float_tiff_with_non_finite_values_and_an_outlier(tmp_path, processor, pipe):
    base = np.random.default_rng(6).random((H, W)).astype(np.float32)
    values = base.copy()
    values[0, 0], values[0, 1], values[0, 2], values[5, 5] = np.inf, -np.inf, np.nan, 1e6
    path = _write(tmp_path, "float.tif", Image.fromarray(values))
    pixels = _through_pair_and_pipeline(path, processor, pipe)[0].numpy()
    assert pixels[0, 0] == pixels[0, 1] == pixels[0, 2] == 0  # non-finite: 0
    assert pixels[5, 5] == 1  # the outlier is clipped, not allowed to crush the image
    keep = np.ones((H, W), bool)
    keep[0, :3] = keep[5, 5] = False
    np.testing.assert_allclose(pixels[keep], base[keep], atol=1e-7)
    note = decode_image(path)[1]
    assert "3 non-finite pixels set to 0" in note and "1 outlier pixel clipped" in note

    ds_root = tmp_path / "ds"
    (ds_root / "images").mkdir(parents=True)
    (ds_root / "masks").mkdir()
    Image.fromarray(values).save(ds_root / "images" / "f.tif")
    Image.fromarray(_mask()).save(ds_root / "masks" / "f.png")
    row = data.load("folder", ds_root)[0]
    torch.testing.assert_close(processor(row["image"])["pixel_values"], processor(path)["pixel_values"], rtol=0,
                               atol=1e-4)  # fmt: skip


def test_float_scaling_rules():
    assert torch.equal(to_float_rgb(np.full((4, 4), 0.5, np.float32)), torch.full((3, 4, 4), 0.5))
    pixels, note = decode_image(np.full((4, 4), 127.5, np.float32))  # larger values: [0, 255]
    assert torch.allclose(pixels, torch.full((3, 4, 4), 0.5)) and note == "floating-point image read as [0, 255]"
    ramp = np.linspace(-50.0, 3000.0, 400, dtype=np.float32).reshape(20, 20)
    pixels, note = decode_image(ramp)  # neither: min-max scaled
    assert float(pixels.min()) == 0.0 and float(pixels.max()) == 1.0 and note.startswith("floating-point image min-max")
    assert torch.all(pixels[0].reshape(-1)[1:] >= pixels[0].reshape(-1)[:-1])
    pixels, note = decode_image(np.full((3, 3), np.nan, np.float32))
    assert torch.equal(pixels, torch.zeros(3, 3, 3)) and note == "9 non-finite pixels set to 0"
    assert decode_image(np.full((4, 4), 0.5, np.float32))[1] == ""  # already-decoded arrays need no note
    assert decode_image(Image.fromarray(np.full((4, 4), 0.5, np.float32)))[1] == "floating-point image read as [0, 1]"


def test_other_inputs_and_errors(tmp_path):
    rgb = _rgb(7)
    expected = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255.0
    for image in (rgb, Image.fromarray(rgb), torch.from_numpy(rgb).permute(2, 0, 1), np.moveaxis(rgb, -1, 0)):
        assert torch.equal(to_float_rgb(image), expected)
    assert torch.equal(to_float_rgb(expected), expected)  # decoding decoded pixels changes nothing
    for mode in ("YCbCr", "LAB", "HSV"):
        converted = Image.fromarray(rgb).convert(mode)
        pixels, note = decode_image(converted)
        assert note == f"{mode} converted to RGB"
        np.testing.assert_array_equal(_hwc(pixels), np.asarray(converted.convert("RGB"), np.float32) / 255.0)
    assert decode_image(np.zeros((4, 4), np.int32) + 70000)[1] == "32-bit integer image scaled by its maximum (70000)"
    assert to_rgb8(np.full((2, 2), 4095, np.uint16)).tolist() == [[[255] * 3] * 2] * 2
    with pytest.raises(LoSamValueError, match="negative"):
        decode_image(np.full((3, 3), -1, np.int16))
    negative = tmp_path / "negative.tif"
    Image.fromarray(np.full((3, 3), -5, np.int32)).save(negative)
    with pytest.raises(DataError, match="negative.tif: integer images with negative values"):
        decode_image(negative)
    with pytest.raises(DataError, match="is a folder"):
        decode_image(tmp_path)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    with pytest.raises(DataError, match="broken.png: unreadable or truncated"):
        open_image(tmp_path / "broken.png")
    frames = [Image.fromarray(_rgb(i)[..., 0]) for i in range(3)]
    frames[0].save(tmp_path / "stack.tif", save_all=True, append_images=frames[1:])
    assert decode_image(tmp_path / "stack.tif")[1] == "first of 3 frames used"


# -- storage -----------------------------------------------------------------------------------------------------------
def _stored_roundtrip(image: Image.Image, name: str = "x.png") -> torch.Tensor:
    as_is, storable = to_storable(image, name)
    if as_is:
        return decode_image(image)[0]
    stored = Image.open(io.BytesIO(encode_png(storable)))
    stored.load()
    return decode_image(stored)[0]


@pytest.mark.parametrize(
    "make, exact",
    [
        (lambda: Image.fromarray(_integers(1000, 8)), True),
        (lambda: Image.fromarray(_integers(4000, 9)), True),
        (lambda: Image.fromarray(_integers(65535, 10)), True),
        (lambda: Image.fromarray(_integers(300, 11).astype(np.int32)), True),  # mode I
        (lambda: Image.fromarray(_integers(65535, 12).astype(np.int32) * 3), False),  # beyond 16 bits
        (lambda: Image.fromarray(_dark_float()), False),
        (lambda: Image.fromarray(_rgb(13)).convert("CMYK"), True),
        (lambda: Image.fromarray(_rgb(14)).convert("P", palette=Image.Palette.ADAPTIVE), True),
        (lambda: Image.fromarray(np.dstack([_rgb(15), _rgb(16)[..., 0]]), "RGBA"), True),
        (lambda: Image.fromarray(_rgb(17)[..., :2], "LA"), True),
        (lambda: Image.fromarray(_rgb(18)[..., 0] > 100), True),
    ],
)
def test_stored_images_decode_like_the_original(make, exact):
    image = make()
    original = decode_image(image)[0]
    _same(_stored_roundtrip(image), original, exact)
    if image.mode in ("I;16", "I", "F"):
        assert storable_image(image).mode == "I;16" and BIT_DEPTH_KEY in storable_image(image).info
    if image.mode == "I;16":  # integer data is kept untouched
        np.testing.assert_array_equal(np.asarray(storable_image(image)), np.asarray(image))


def test_exif_rotated_jpeg_is_re_encoded(tmp_path):
    image = Image.fromarray(_rgb(19))
    exif = image.getexif()
    exif[0x0112] = 6  # rotated: datasets would turn it, the masks would not
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif.tobytes())
    opened = open_image(path)
    as_is, storable = to_storable(opened, path)
    assert not as_is
    assert torch.equal(decode_image(Image.open(io.BytesIO(encode_png(storable))))[0], decode_image(path)[0])
    assert to_storable(open_image(_write(tmp_path, "plain.png", image)), tmp_path / "plain.png")[0]


def test_decode_array_is_compact_and_exact():
    rgb = _rgb(20)
    array, _ = decode_array(Image.fromarray(rgb).convert("CMYK"))
    assert array.dtype == np.uint8 and array.shape == (H, W, 3)
    array, note = decode_array(_integers(1000, 21))
    assert array.dtype == np.float32 and array.shape == (H, W) and "12-bit" in note
    assert torch.equal(to_float_rgb(array), decode_image(_integers(1000, 21))[0])


# -- visualisation and tiling ------------------------------------------------------------------------------------------
def test_overlay_and_comparison_panel():
    rgb = _rgb(22)
    labels = np.zeros((H, W), np.uint8)
    labels[2:6, 2:6] = 1
    drawn = np.asarray(overlay(rgb, labels, alpha=1.0))
    assert drawn[3, 3].tolist() == palette(2)[1].tolist() and drawn[10, 10].tolist() == rgb[10, 10].tolist()
    with pytest.raises(LoSamValueError, match="to_rgb8"):
        overlay(_integers(1000, 0), labels)
    truth = labels.copy()
    truth[0, 0] = 255  # ignored: drawn as background
    fov = np.ones((H, W), bool)
    fov[:, :4] = False
    panel = comparison_panel(rgb, truth, labels, title="best 1", num_labels=2, fov=fov, min_side=64)
    assert panel.mode == "RGB" and panel.size[0] == 3 * W * 2 + 20 and panel.size[1] > H * 2
    mask_panel = comparison_panel(Image.fromarray(rgb), labels, labels, style="mask")
    assert mask_panel.size == (3 * W + 20, H + 18)
    picture = np.asarray(mask_panel)[18:, W + 10 : 2 * W + 10]
    assert picture[3, 3].tolist() == [255, 255, 255] and picture[10, 10].tolist() == [0, 0, 0]
    with pytest.raises(LoSamValueError, match="ground truth"):
        comparison_panel(rgb, labels[:5], labels)


def test_tiled_probabilities_over_a_plain_callable():
    calls = []

    def forward(crops):
        calls.append(len(crops))
        return [torch.stack([crop[0], 1 - crop[0]]) for crop in crops]

    image = np.random.default_rng(23).random((40, 50)).astype(np.float32)
    probs, windows = tiled_probabilities(forward, image, tile=16, overlap=0.25, batch_size=4)
    assert windows == count_tiles(40, 50, 16, 0.25) == sum(calls) and max(calls) <= 4
    torch.testing.assert_close(probs[0], torch.from_numpy(image), rtol=0, atol=1e-6)  # a per-pixel "model": exact
    with pytest.raises(LoSamValueError, match="forward_probabilities must be a callable"):
        tiled_probabilities(object(), image, tile=16)


# -- module boundaries -------------------------------------------------------------------------------------------------
def _imports(module: str) -> set[str]:
    tree = ast.parse((SRC / f"{module}.py").read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            names.add("." * node.level + (node.module or ""))
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_module_boundaries():
    own = {name for name in _imports("image_processing_losam") if name.startswith(".") or "losam" in name}
    assert own == {".errors", ".constants"}  # leaves only: the processor is the bottom of the image path
    visualization = _imports("visualization")
    assert {name for name in visualization if name.startswith(".")} == {".errors"}
    assert not any(name.split(".")[0] == "torch" for name in visualization)
    pipeline = _imports("pipeline")
    assert not any(name.startswith((".predict", ".data", "losam_peft.predict", "losam_peft.data")) for name in pipeline)
    samples = _imports("data/samples")
    assert "..pipeline" not in samples


def test_a_small_gzip_that_inflates_hugely_is_refused_while_streaming(tmp_path):
    """A 16x16 PNG followed by 512 MiB of zeros, in a file of about 2 MB: refused after about a megabyte is inflated
    (the bound comes from the header's 16x16 pixels, so a gigabyte bomb stops at the same point)."""
    import gzip
    import io
    import tracemalloc

    from PIL import Image

    from losam_peft.errors import ImageTooLargeError
    from losam_peft.image_processing_losam import open_image

    png = io.BytesIO()
    Image.new("RGB", (16, 16), (10, 20, 30)).save(png, format="PNG")
    path = tmp_path / "bomb.png.gz"
    zeros = bytes(1 << 24)
    with gzip.open(path, "wb", compresslevel=1) as fh:
        fh.write(png.getvalue())
        for _ in range(32):  # 512 MiB
            fh.write(zeros)
    assert path.stat().st_size < 4 << 20
    tracemalloc.start()
    with pytest.raises(ImageTooLargeError, match=r"bomb.png.gz: inflates to more than \d+ bytes"):
        open_image(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 32 << 20  # never held: far below the 512 MiB it inflates to
    genuine = tmp_path / "genuine.png.gz"
    genuine.write_bytes(gzip.compress(png.getvalue()))
    assert open_image(genuine).size == (16, 16)
