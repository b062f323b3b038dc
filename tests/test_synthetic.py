"""Tests for the synthetic retina generators (losam_peft.data.synthetic)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from losam_peft.data.synthetic import (
    OCT_LAYER_NAMES,
    SyntheticSample,
    derive_seed,
    fundus,
    id2label_from_dataset,
    make_samples,
    oct_bscan,
    octa,
    save_folder,
    to_dataset,
)


# ---------------------------------------------------------------------------------------------- helpers
def _shift_stack(m: np.ndarray) -> list[np.ndarray]:
    """The 3x3 neighbourhood of every pixel as 9 shifted copies (outside = 0)."""
    p = np.pad(m, 1)
    h, w = m.shape
    return [p[dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)]


def erode(m: np.ndarray, n: int = 1) -> np.ndarray:
    m = m.astype(bool)
    for _ in range(n):
        m = np.logical_and.reduce(_shift_stack(m))
    return m


def dilate(m: np.ndarray, n: int = 1) -> np.ndarray:
    m = m.astype(bool)
    for _ in range(n):
        m = np.logical_or.reduce(_shift_stack(m))
    return m


@pytest.fixture(scope="module")
def f256() -> SyntheticSample:
    return fundus(256, seed=0)


@pytest.fixture(scope="module")
def o256() -> SyntheticSample:
    return octa(256, seed=0)


# ---------------------------------------------------------------------------------------------- fundus
def test_fundus_shapes_dtypes(f256):
    s = f256
    assert s.modality == "fundus"
    assert s.image.shape == (256, 256, 3) and s.image.dtype == np.uint8
    assert s.mask.shape == (256, 256) and s.mask.dtype == np.uint8
    assert s.fov is not None and s.fov.shape == (256, 256) and s.fov.dtype == np.uint8
    assert set(np.unique(s.mask)) == {0, 1}
    assert set(np.unique(s.fov)) == {0, 1}
    assert s.id2label == {0: "background", 1: "vessel"}
    assert 0.02 < s.mask.mean() < 0.25
    assert s.to_pil().mode == "RGB" and s.to_pil().size == (256, 256)


@pytest.mark.parametrize("gen,size", [(fundus, 96), (octa, 96), (oct_bscan, 96)])
def test_deterministic_per_seed(gen, size):
    a, b, c = gen(size, seed=7), gen(size, seed=7), gen(size, seed=8)
    assert a.image.tobytes() == b.image.tobytes()
    assert a.mask.tobytes() == b.mask.tobytes()
    if a.fov is not None:
        assert a.fov.tobytes() == b.fov.tobytes()
    assert a.image.tobytes() != c.image.tobytes()
    assert a.mask.tobytes() != c.mask.tobytes()


def test_fundus_vessels_darker_than_surroundings(f256):
    s = f256
    vessel = s.mask.astype(bool)
    ring = dilate(vessel, 3) & ~dilate(vessel, 1) & s.fov.astype(bool)
    # leave the bright optic disc out of the comparison
    dx, dy = s.meta["disc_center"]
    yy, xx = np.mgrid[0:256, 0:256] + 0.5
    off_disc = (xx - dx) ** 2 + (yy - dy) ** 2 > (1.3 * s.meta["disc_radius"]) ** 2
    g = s.image[..., 1].astype(float)
    r = s.image[..., 0].astype(float)
    assert g[vessel & off_disc].mean() < g[ring & off_disc].mean() - 10
    assert r[vessel & off_disc].mean() < r[ring & off_disc].mean()
    # orange-red background: red > green > blue inside the FOV
    inside = s.fov.astype(bool) & ~vessel & off_disc
    m = s.image[inside].mean(axis=0)
    assert m[0] > m[1] > m[2]


def test_fundus_mask_matches_drawn_vessels():
    # the same seed with vessel_contrast=0 renders the identical background without vessels
    kw = dict(noise=0.0, blur=0.0)
    with_v = fundus(192, seed=3, **kw)
    without = fundus(192, seed=3, vessel_contrast=0.0, **kw)
    assert np.array_equal(with_v.mask, without.mask)  # geometry does not depend on contrast
    g1 = with_v.image[..., 1].astype(int)
    g0 = without.image[..., 1].astype(int)
    darkened = (g0 - g1) > 0
    vessel = with_v.mask.astype(bool)
    assert not (g1 > g0).any()  # vessels only ever darken
    # without blur and noise the darkened pixels are exactly the mask pixels
    assert np.array_equal(darkened, vessel)
    for c in (0, 2):
        assert (with_v.image[..., c] <= without.image[..., c]).all()
    # and with the default optics the mask still sits on the darkest pixels
    drop = (g0 - g1) / np.maximum(g0, 1)
    assert drop[vessel].min() > 0.02


def test_fundus_width_range_thin_and_thick():
    s = fundus(384, seed=1)
    v = s.mask.astype(bool)
    # thick trunks: survive two 3x3 erosions (width >= 5 px)
    assert erode(v, 2).sum() > 50
    # thin vessels: pixels that are not part of the 3x3 opening (structures < 3 px wide)
    thin = v & ~dilate(erode(v, 1), 1)
    assert thin.sum() > 0.15 * v.sum()
    # width range scales with the image size
    w_small = fundus(128, seed=1).meta["width_range"][1]
    w_big = s.meta["width_range"][1]
    assert w_big > 1.5 * w_small
    assert s.meta["width_range"][0] <= 2.0


def test_fundus_fov_circular_and_black_outside(f256):
    s = f256
    fov = s.fov.astype(bool)
    assert np.array_equal(fov, fov[::-1]) and np.array_equal(fov, fov[:, ::-1]) and np.array_equal(fov, fov.T)
    R = s.meta["fov_radius"]
    assert abs(fov.sum() - np.pi * R * R) < 0.01 * np.pi * R * R
    assert not s.image[~fov].any()
    assert not s.mask[~fov].any()
    assert s.image[fov].mean() > 40
    # vignetting: the rim is darker than the centre
    yy, xx = np.mgrid[0:256, 0:256] + 0.5
    rr = np.hypot(xx - 128, yy - 128) / R
    lum = s.image.astype(float).sum(axis=2)
    assert lum[(rr > 0.85) & (rr < 0.97)].mean() < lum[rr < 0.5].mean()


def test_fundus_disc_bright_and_difficulty_knobs():
    s = fundus(128, seed=2)
    dx, dy = s.meta["disc_center"]
    disc_px = s.image[int(dy), int(dx)].astype(int)
    assert disc_px.sum() > s.image[s.fov.astype(bool)].astype(int).sum(axis=1).mean()
    hard = fundus(128, seed=2, vessel_contrast=0.2, noise=0.08)
    assert np.array_equal(hard.mask, s.mask)
    v = s.mask.astype(bool)
    ring = dilate(v, 2) & ~v & s.fov.astype(bool)
    c_easy = s.image[..., 1][ring].mean() - s.image[..., 1][v].mean()
    c_hard = hard.image[..., 1][ring].mean() - hard.image[..., 1][v].mean()
    assert c_hard < c_easy


# ---------------------------------------------------------------------------------------------- OCTA
def test_octa_shapes_and_bright_vessels(o256):
    s = o256
    assert s.modality == "octa"
    assert s.image.shape == (256, 256) and s.image.dtype == np.uint8
    assert s.mask.shape == (256, 256) and s.mask.dtype == np.uint8
    assert set(np.unique(s.mask)) == {0, 1}
    assert s.fov is None
    assert s.to_pil().mode == "L"
    v = s.mask.astype(bool)
    ring = dilate(v, 3) & ~dilate(v, 1)
    img = s.image.astype(float)
    assert img[v].mean() > img[ring].mean() + 40
    clean = octa(256, seed=0, noise=0.0)
    assert np.array_equal(clean.mask, s.mask)
    assert clean.image[v].astype(float).mean() > 2 * clean.image[~dilate(v, 1)].astype(float).mean()
    # dark foveal avascular zone in the middle
    fx, fy = s.meta["faz_center"]
    yy, xx = np.mgrid[0:256, 0:256] + 0.5
    faz = np.hypot(xx - fx, yy - fy) < 0.6 * s.meta["faz_radius"]
    assert not v[faz].any()
    assert img[faz].mean() < img[~v].mean()


# ---------------------------------------------------------------------------------------------- OCT
def test_oct_layers_ordered_top_to_bottom():
    K = 7
    s = oct_bscan((128, 160), seed=4, num_layers=K)
    assert s.modality == "oct" and s.fov is None
    assert s.image.shape == (128, 160) and s.image.dtype == np.uint8
    assert s.mask.shape == (128, 160) and s.mask.dtype == np.uint8
    assert s.id2label == {0: "background", **{k: OCT_LAYER_NAMES[k - 1] for k in range(1, K + 1)}}
    assert set(np.unique(s.mask)) == set(range(K + 1))
    for col in s.mask.T:
        nz = np.flatnonzero(col)
        # one contiguous retina run per column, labels 1..K non-decreasing in steps of 1
        assert nz[-1] - nz[0] + 1 == len(nz)
        seq = col[nz]
        assert seq[0] == 1 and seq[-1] == K
        assert set(np.diff(seq.astype(int))) <= {0, 1}
        assert col[0] == 0  # vitreous at the top
    img = s.image.astype(float)
    mean = {k: img[s.mask == k].mean() for k in range(K + 1)}
    assert mean[0] < min(mean[k] for k in range(1, K + 1))  # vitreous darkest
    assert mean[7] > mean[5] and mean[1] > mean[3]  # RPE > ONL, RNFL > INL
    # foveal pit: the inner limiting membrane dips at the fovea
    ilm = s.meta["boundaries"][0]
    xf = int(s.meta["fovea_x"])
    assert ilm[xf] > ilm[5] and ilm[xf] > ilm[-5]


@pytest.mark.parametrize("K", [1, 3, 10])
def test_oct_num_layers(K):
    s = oct_bscan(80, seed=0, num_layers=K)
    assert s.image.shape == (80, 80)
    assert len(s.id2label) == K + 1
    assert s.mask.max() == K
    with pytest.raises(ValueError):
        oct_bscan(32, num_layers=0)


# ---------------------------------------------------------------------------------------------- collections
def test_make_samples_seeds_and_ids():
    a = make_samples("fundus", 3, 64, seed=5)
    b = make_samples("fundus", 3, 64, seed=5)
    assert [s.id for s in a] == ["fundus_5_0000", "fundus_5_0001", "fundus_5_0002"]
    assert [s.seed for s in a] == [derive_seed(5, i) for i in range(3)]
    assert len({s.seed for s in a}) == 3
    assert all(x.image.tobytes() == y.image.tobytes() for x, y in zip(a, b))
    assert len({s.image.tobytes() for s in a}) == 3
    assert make_samples("fundus", 1, 64, seed=6)[0].seed != a[0].seed
    oc = make_samples("oct_bscan", 2, (48, 64), seed=0, num_layers=4)
    assert oc[0].image.shape == (48, 64) and oc[0].modality == "oct" and len(oc[0].id2label) == 5
    assert make_samples("octa", 1, 48)[0].modality == "octa"
    with pytest.raises(ValueError):
        make_samples("mri", 1, 32)


def test_to_dataset_schema_binary():
    import datasets

    samples = make_samples("fundus", 2, 64, seed=0)
    ds = to_dataset(samples)
    assert isinstance(ds, datasets.Dataset)
    assert set(ds.column_names) == {"image", "label", "fov", "id"}
    for col in ("image", "label", "fov"):
        assert isinstance(ds.features[col], datasets.Image)
    assert ds.features["id"].dtype == "string"
    assert len(ds) == 2
    row = ds[1]
    assert row["id"] == samples[1].id
    assert row["image"].mode == "RGB" and row["image"].size == (64, 64)
    assert row["label"].mode == "L"
    assert np.array_equal(np.asarray(row["label"]), samples[1].mask)  # class ids, not 0/255
    assert np.array_equal(np.asarray(row["image"]), samples[1].image)
    assert np.array_equal(np.asarray(row["fov"]) > 0, samples[1].fov > 0)
    assert id2label_from_dataset(ds) == {0: "background", 1: "vessel"}
    assert json.loads(ds.info.description)["modality"] == "fundus"


def test_to_dataset_multiclass_without_fov():
    samples = make_samples("oct", 2, 48, seed=1, num_layers=5)
    ds = to_dataset(samples)
    row = ds[0]
    assert row["fov"] is None
    assert row["image"].mode == "L"
    assert np.array_equal(np.asarray(row["label"]), samples[0].mask)
    assert id2label_from_dataset(ds) == samples[0].id2label
    with pytest.raises(ValueError):
        to_dataset(samples + make_samples("fundus", 1, 48))


def test_save_folder(tmp_path):
    fs = make_samples("fundus", 2, 48, seed=0)
    names = save_folder(fs, tmp_path / "f", write_fov=True)
    assert names == [s.id for s in fs]
    for s in fs:
        img = np.asarray(Image.open(tmp_path / "f" / "images" / f"{s.id}.png"))
        m = np.asarray(Image.open(tmp_path / "f" / "masks" / f"{s.id}.png"))
        assert np.array_equal(img, s.image)
        assert set(np.unique(m)) <= {0, 255} and np.array_equal(m > 0, s.mask > 0)
        assert (tmp_path / "f" / "fov" / f"{s.id}.png").exists()
    oc = make_samples("oct", 1, 48, seed=0, num_layers=4)
    save_folder(oc, tmp_path / "o")
    m = np.asarray(Image.open(tmp_path / "o" / "masks" / f"{oc[0].id}.png"))
    assert np.array_equal(m, oc[0].mask) and m.max() == 4
    labels = json.loads((tmp_path / "o" / "id2label.json").read_text())
    assert labels == {str(k): v for k, v in oc[0].id2label.items()}


def test_overlay_and_pil_helpers(f256):
    ov = f256.overlay()
    assert ov.mode == "RGB" and ov.size == (256, 256)
    assert f256.mask_pil(binary_as_255=True).getextrema() == (0, 255)
    assert f256.fov_pil().getextrema() == (0, 255)
    oc = oct_bscan(48, seed=0)
    assert oc.overlay().mode == "RGB"
    assert oc.fov_pil() is None
