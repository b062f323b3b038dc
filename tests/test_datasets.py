"""Dataset loaders: every official layout (fixture trees), tolerance, bad input, label names, K-shot
drawing, conversion, and the real copies under ../shared/data when present."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image

from losam_peft import data as ld
from losam_peft.data import (
    DATASET_GROUPS,
    DATASETS,
    DataError,
    DatasetLayoutError,
    ImageTooLargeError,
    SkippedFileWarning,
    attach_label_names,
    convert,
    folder,
    label_info,
    load,
    load_group,
    select_shots,
)
from losam_peft.errors import LabelMismatchError

try:  # tests/ as a package or as a plain folder on sys.path
    from . import fixtures_datasets as fx
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import fixtures_datasets as fx

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Each test gets its own datasets cache; no progress bars."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    datasets.disable_progress_bars()
    yield


def arr(img) -> np.ndarray:
    return np.asarray(img)


def messages(record) -> list[str]:
    return [str(w.message) for w in record]


def build(name, tmp_path):
    return fx.BUILDERS[name](tmp_path / "download")


# --------------------------------------------------------------------------------------------------
# Every dataset on its official layout
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(fx.BUILDERS))
def test_every_loader_reads_its_official_layout(name, tmp_path):
    expected = build(name, tmp_path)
    spec = DATASETS[name]
    out = load(name, expected["root"])
    if expected["splits"] is None:
        assert isinstance(out, datasets.Dataset)
        assert len(out) == expected["count"]
        parts = {"all": out}
    else:
        assert isinstance(out, datasets.DatasetDict)
        assert {k: len(v) for k, v in out.items()} == expected["splits"]
        parts = dict(out)
    assert label_info(out) == dict(enumerate(expected["labels"]))
    for ds in parts.values():
        assert {"image", "label", "fov", "id"} <= set(ds.column_names)
        assert isinstance(ds.features["label"], datasets.Image)
        assert len(set(ds["id"])) == len(ds)
        for row in ds:
            label = arr(row["label"])
            assert label.ndim == 2 and label.dtype == np.uint8
            assert row["image"].size == row["label"].size == (fx.W, fx.H)
            assert set(np.unique(label)) <= set(range(len(spec.labels)))
            if spec.fov is not None or spec.derive_fov:
                assert row["fov"] is not None and row["fov"].size == (fx.W, fx.H)
                assert set(np.unique(arr(row["fov"]))) <= {0, 255}
            else:
                assert row["fov"] is None
    # the vessel datasets must carry vessels, not an all-background label
    if spec.labels == ("background", "vessel"):
        first = next(iter(parts.values()))[0]
        assert set(np.unique(arr(first["label"]))) == {0, 1}


def test_split_argument(tmp_path):
    root = build("drive", tmp_path)["root"]
    train = load("drive", root, split="train")
    assert isinstance(train, datasets.Dataset) and len(train) == 2
    assert len(load("drive", root, split="training")) == 2  # alias
    assert len(load("drive", root, split="all")) == 5
    with pytest.raises(ValueError, match="unknown split"):
        load("drive", root, split="validation")
    hrf = build("hrf", tmp_path)["root"]
    with pytest.raises(ValueError, match="no official splits"):
        load("hrf", hrf, split="test")
    assert len(load("hrf", hrf, split="all")) == 4


def test_fives_metadata_extra_folder_and_ids(tmp_path):
    dd = load("fives", build("fives", tmp_path)["root"])
    train = dd["train"]
    assert train["disease"] == ["AMD", "diabetic retinopathy", "normal"]
    # "1_A" exists in both splits: ids are qualified by split to stay unique
    assert train["id"][0] == "train_1_A" and dd["test"]["id"][0] == "test_1_A"
    fov = arr(train[0]["fov"])
    assert fov.any() and not fov.all()  # derived from the dark border


def test_hrf_upper_case_extension_fov_and_disease(tmp_path):
    ds = load("hrf", build("hrf", tmp_path)["root"])
    assert sorted(ds["disease"]) == ["diabetic retinopathy", "glaucoma", "healthy", "healthy"]
    row = ds[ds["id"].index("01_dr")]  # 01_dr.JPG
    assert row["image"].mode == "RGB"
    expected_fov = fx.fundus(1).max(axis=2) > 0
    np.testing.assert_array_equal(arr(row["fov"]).astype(bool), expected_fov)


def test_chase_db1_observers_and_eye(tmp_path):
    ds = load("chase_db1", build("chase_db1", tmp_path)["root"])
    assert ds["eye"] == ["left", "right", "left"] and ds["subject"] == ["01", "01", "02"]
    row = ds[0]
    np.testing.assert_array_equal(arr(row["label"]), (fx.vessels(0) > 0).astype(np.uint8))
    np.testing.assert_array_equal(arr(row["label_observer2"]), (fx.vessels(7) > 0).astype(np.uint8))


def test_drive_fixture_palette_second_observer(tmp_path):
    dd = load("drive", build("drive", tmp_path)["root"])
    assert all(v is None for v in dd["train"]["label_observer2"])
    row = dd["test"][0]
    np.testing.assert_array_equal(arr(row["label_observer2"]), (fx.vessels(51) > 0).astype(np.uint8))
    np.testing.assert_array_equal(arr(row["label"]), (fx.vessels(1) > 0).astype(np.uint8))


def test_stare_gz_ppm_and_hoover_labels(tmp_path):
    ds = load("stare", build("stare", tmp_path)["root"])
    assert ds["id"] == ["im0001", "im0002", "im0044"]  # im0010 (unlabelled) is not a vessel image
    np.testing.assert_array_equal(arr(ds[2]["label"]), (fx.vessels(2) > 0).astype(np.uint8))
    np.testing.assert_array_equal(arr(ds[2]["label_observer2"]), (fx.vessels(5) > 0).astype(np.uint8))
    np.testing.assert_array_equal(arr(ds[0]["image"]), fx.fundus(0))


def test_rose1_subsets_and_thick_thin(tmp_path):
    root = build("rose1", tmp_path)["root"]
    svc = load("rose1", root, split="test")
    assert svc["plexus"] == ["SVC", "SVC"] and svc[0]["label_thick"] is not None
    dvc = load("rose1", root, split="train", subset="DVC")
    assert dvc["plexus"] == ["DVC"] * 3 and dvc[0]["label_thick"] is None
    assert len(load("rose1", root, split="train", subset="svc_dvc")) == 3
    with pytest.raises(ValueError, match="subset"):
        load("rose1", root, subset="XYZ")


def test_rose2_zero_one_masks(tmp_path):
    ds = load("rose2", build("rose2", tmp_path)["root"], split="train")
    np.testing.assert_array_equal(arr(ds[0]["label"]), fx.vessels(1, value=1))


def test_octa500_splits_by_id_and_label_variants(tmp_path):
    root = build("octa500_3m", tmp_path)["root"]
    dd = load("octa500_3m", root)
    assert {k: v["id"] for k, v in dd.items()} == {"train": ["10301"], "validation": ["10441"], "test": ["10451"]}
    av = load("octa500_3m", root, split="train", label="artery_vein")
    assert label_info(av) == {0: "background", 1: "artery", 2: "vein"}
    lab = arr(av[0]["label"])
    artery = fx.vessels(0) > 0
    assert (lab[artery] == 1).all()  # crossings go to the artery
    assert (lab[~artery][:, None] >= 0).all() and (lab[:, 1][~artery[:, 1]] == 2).all()
    faz = load("octa500_3m", root, split="test", label="faz", projection="ILM_OPL")
    assert label_info(faz) == {0: "background", 1: "FAZ"}
    np.testing.assert_array_equal(arr(faz[0]["image"]), fx.grey(2 + len("ILM_OPL")))
    with pytest.raises(ValueError, match="label"):
        load("octa500_3m", root, label="nerves")
    # the 3M loader does not pick up 6M subjects and vice versa
    fx.make_octa500_6m(tmp_path / "download")
    assert len(load("octa500_3m", root, split="all")) == 3
    assert load("octa500_6m", root)["train"]["id"] == ["10001"]


def test_idrid_merge_priority_missing_lesions_and_optic_disc(tmp_path):
    root = build("idrid", tmp_path)["root"]
    dd = load("idrid", root)
    row = dd["train"][0]
    lab = arr(row["label"])
    assert lab[5, 5] == 1 and lab[5, 6] == 1  # MA wins over the overlapping HE
    assert lab[4, 4] == 2 and lab[12, 15] == 3 and lab[15, 3] == 4
    assert row["optic_disc"] is not None and arr(row["optic_disc"])[10, 14] == 1
    second = arr(dd["train"][1]["label"])  # no HE/SE files: simply no such lesion
    assert set(np.unique(second)) == {0, 1, 3}
    assert set(np.unique(arr(dd["test"][0]["label"]))) == {0, 2}
    with_od = load("idrid", root, split="train", include_optic_disc=True)
    assert label_info(with_od)[5] == "optic disc"
    lab = arr(with_od[0]["label"])
    assert lab[12, 15] == 3 and lab[10, 19] == 5  # lesions win over the optic disc
    assert "optic_disc" not in with_od.column_names


def test_idrid_image_without_any_ground_truth_is_an_error(tmp_path):
    root = build("idrid", tmp_path)["root"]
    fx.write(root / "A. Segmentation" / "1. Original Images" / "a. Training Set" / "IDRiD_03.jpg", fx.fundus(3))
    with pytest.raises(DataError, match="IDRiD_03"):
        load("idrid", root)


def test_aroi_classes_as_numbered_and_out_of_map_value(tmp_path):
    root = build("aroi", tmp_path)["root"]
    ds = load("aroi", root)
    assert ds["patient"] == ["1", "1", "2", "2"] and ds["bscan"][:2] == ["0040", "0041"]
    np.testing.assert_array_equal(arr(ds[0]["label"]), fx.aroi_mask(40))
    bad = next((root / "AROI - online").rglob("patient2_raw0041.png"))
    bad = [p for p in (root / "AROI - online").rglob("patient2_raw0041.png") if "number" in p.parts][0]
    mask = fx.aroi_mask(41)
    mask[0, 0] = 9
    fx.write(bad, mask)
    with pytest.raises(DataError, match=r"patient2_raw0041.*value\(s\) 9 outside"):
        load("aroi", root)


# --------------------------------------------------------------------------------------------------
# Generic folder loader
# --------------------------------------------------------------------------------------------------


def test_folder_loader_pairing_rule_16bit_and_label_map(tmp_path):
    root = tmp_path / "mine"
    img16 = np.arange(fx.H * fx.W, dtype=np.uint16).reshape(fx.H, fx.W) * 8  # 12-bit data in 16 bits
    fx.write(root / "imgs" / "a.tif", Image.fromarray(img16))
    fx.write(root / "imgs" / "B.PNG", fx.fundus(1))
    mask = np.zeros((fx.H, fx.W), np.uint8)
    mask[:5], mask[5:10] = 1, 2
    pal = Image.fromarray(mask).convert("P")  # palette mask: values are palette indices
    pal.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    fx.write(root / "labels" / "a_mask.png", pal)
    fx.write(root / "labels" / "B_mask.png", mask)
    fx.strays(root / "imgs")
    ds = folder(
        root,
        images="imgs",
        masks="labels",
        mask_name="{stem}_mask",
        label_map={0: 0, 1: 1, 2: 2},
        label_names=["background", "disc", "cup"],
    )
    assert ds["id"] == ["a", "B"]
    assert label_info(ds) == {0: "background", 1: "disc", 2: "cup"}
    for row in ds:
        np.testing.assert_array_equal(arr(row["label"]), mask)
    stored = ds[0]["image"]  # 16-bit data is stored losslessly, so the processor decodes it as the original file
    assert stored.mode == "I;16"
    np.testing.assert_array_equal(arr(stored), img16)
    same = load(
        "folder",
        root,
        images=str(root / "imgs"),
        masks=str(root / "labels"),
        mask_name="{stem}_mask",
        label_map={0: 0, 1: 1, 2: 2},
    )
    assert len(same) == 2 and label_info(same)[2] == "class_2"


def test_folder_loader_split_subfolders_and_binary_default(tmp_path):
    root = tmp_path / "mine"
    for split in ("train", "test"):
        for i in range(2):
            fx.write(root / split / "images" / f"{split}{i}.jpg", fx.fundus(i), quality=95)
            fx.write(root / split / "masks" / f"{split}{i}.png", fx.vessels(i))
    dd = folder(root)
    assert sorted(dd) == ["test", "train"] and len(dd["train"]) == 2
    assert label_info(dd) == {0: "background", 1: "foreground"}
    assert len(load("folder", root, split="test")) == 2
    with pytest.raises(DatasetLayoutError):
        folder(tmp_path / "mine" / "train", images="nothing-here")


# --------------------------------------------------------------------------------------------------
# Bad input: clear errors naming the file, or skip_bad warnings and a count
# --------------------------------------------------------------------------------------------------


def test_root_that_is_not_the_dataset(tmp_path):
    fives = build("fives", tmp_path)["root"]
    with pytest.raises(DatasetLayoutError, match="does not look like DRIVE"):
        load("drive", fives)
    with pytest.raises(DatasetLayoutError, match="no such directory"):
        load("drive", tmp_path / "missing")
    with pytest.raises(ValueError, match="unknown dataset"):
        load("messidor", fives)
    with pytest.raises(TypeError, match="unknown option"):
        load("drive", fives, label="faz")


def test_missing_mask_error_and_skip_bad(tmp_path):
    root = build("drive", tmp_path)["root"]
    (root / "training" / "1st_manual" / "22_manual1.gif").unlink()
    with pytest.raises(DataError, match=r"22_training.*missing mask.*22_manual1"):
        load("drive", root)
    with pytest.warns(SkippedFileWarning) as record:
        dd = load("drive", root, skip_bad=True)
    assert dd["train"]["id"] == ["21_training"] and len(dd["test"]) == 3
    messages = [str(w.message) for w in record]
    assert any("22_training" in m for m in messages) and any("skipped 1 bad sample" in m for m in messages)


def test_size_mismatch_truncated_and_non_binary(tmp_path):
    root = build("drive", tmp_path)["root"]
    label = root / "test" / "1st_manual" / "02_manual1.gif"
    fx.write(label, fx.vessels(2, h=fx.H + 1))
    with pytest.raises(DataError, match=r"02_manual1.gif: size 24x21 does not match image .*02_test"):
        load("drive", root)
    fx.write(label, fx.vessels(2))
    image = root / "test" / "images" / "03_test.tif"
    image.write_bytes(image.read_bytes()[: len(image.read_bytes()) // 2])
    with pytest.raises(DataError, match="03_test.tif: unreadable or truncated"):
        load("drive", root)
    image.unlink()
    grey = fx.vessels(1)
    grey[0, :3] = [7, 8, 9]
    fx.write(root / "test" / "1st_manual" / "01_manual1.gif", grey)
    with pytest.raises(DataError, match=r"01_manual1.gif: mask values .* not binary"):
        load("drive", root)
    dd = load("drive", root, mask_threshold=128)  # opt in for lossy masks
    assert len(dd["test"]) == 2
    with pytest.warns(SkippedFileWarning) as record:
        assert load("drive", root, split="test", skip_bad=True)["id"] == ["02_test"]
    assert any("01_test" in m for m in messages(record)) and "skipped 1 bad sample" in messages(record)[-1]


def test_skip_bad_warnings_repeat_when_cached(tmp_path):
    root = build("rose2", tmp_path)["root"]
    (root / "train" / "gt" / "2.png").write_bytes(b"not a png")
    for _ in range(2):  # the second call is served from the cache and still reports the skip
        with pytest.warns(SkippedFileWarning) as record:
            assert load("rose2", root, split="train", skip_bad=True)["id"] == ["1"]
        assert any("gt/2.png" in m for m in messages(record)) and "skipped 1" in messages(record)[-1]


def test_decompression_bomb(tmp_path):
    root = build("rose2", tmp_path)["root"]
    fx.bomb_png(root / "test" / "original" / "91.png")
    with pytest.raises(ImageTooLargeError, match="91.png"):
        load("rose2", root, split="test")
    with pytest.raises(ImageTooLargeError, match=r"1.png: 24x20 = 480 pixels exceeds the limit of 100"):
        load("rose2", root, split="train", max_pixels=100)
    with pytest.warns(SkippedFileWarning) as record:
        dd = load("rose2", root, skip_bad=True)
    assert any("91.png" in m for m in messages(record))
    assert len(dd["train"]) == 2 and len(dd["test"]) == 0


def test_open_image_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="nope.png"):
        ld.open_image(tmp_path / "nope.png")
    (tmp_path / "x.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(DataError, match="x.png"):
        ld.open_image(tmp_path / "x.png")


# --------------------------------------------------------------------------------------------------
# Label names survive round trips; K-shot drawing; groups
# --------------------------------------------------------------------------------------------------


def test_label_names_round_trip(tmp_path):
    ds = load("octa500_3m", build("octa500_3m", tmp_path)["root"], split="all", label="artery_vein")
    names = {0: "background", 1: "artery", 2: "vein"}
    ds.save_to_disk(str(tmp_path / "disk"))
    back = datasets.load_from_disk(str(tmp_path / "disk"))
    assert label_info(back) == names
    assert json.loads(back.info.description)["losam_peft"]["options"]["label"] == "artery_vein"
    ds.to_parquet(str(tmp_path / "x.parquet"))
    assert label_info(datasets.Dataset.from_parquet(str(tmp_path / "x.parquet"))) == names
    assert label_info(ds.map(lambda e: e)) == names
    assert label_info(ds.filter(lambda e: True).select([0])) == names
    assert label_info(ds.cast_column("label", datasets.Image(decode=False))) == names  # via info.description


def test_attach_label_names_for_other_datasets():
    plain = datasets.Dataset.from_dict(
        {"label": [np.zeros((4, 4), np.uint8)], "id": ["x"]},
        features=datasets.Features({"label": datasets.Image(), "id": datasets.Value("string")}),
    )
    with pytest.raises(ValueError, match="no label names"):
        label_info(plain)
    named = attach_label_names(plain, ["background", "vessel"], dataset="synthetic")
    assert label_info(named) == {0: "background", 1: "vessel"}
    assert json.loads(named.info.description)["losam_peft"]["dataset"] == "synthetic"
    with pytest.raises(ValueError):
        label_info(plain)  # the original is untouched
    dd = attach_label_names(datasets.DatasetDict({"train": plain}), {0: "bg", 1: "fg"})
    assert label_info(dd["train"]) == {0: "bg", 1: "fg"}


def test_select_shots_is_deterministic_and_nested(tmp_path):
    ds = load("drive", build("drive", tmp_path)["root"], split="all")
    sub1, ids1 = select_shots(ds, 1, seed=3)
    sub1b, ids1b = select_shots(ds.shuffle(seed=0), 1, seed=3)  # independent of row order
    assert ids1 == ids1b == sub1["id"] == sub1b["id"]
    sub3, ids3 = select_shots(ds, 3, seed=3)
    assert ids3[:1] == ids1 and len(set(ids3)) == 3 and sub3["id"] == ids3
    assert json.loads(sub3.info.description)["losam_peft"]["shots"] == {"k": 3, "seed": 3, "ids": ids3}
    assert {tuple(select_shots(ds, 2, seed=s)[1]) for s in range(8)} != {tuple(ids3[:2])}
    assert label_info(sub3) == {0: "background", 1: "vessel"}
    with pytest.raises(ValueError):
        select_shots(ds, 6, seed=0)
    with pytest.raises(ValueError):
        select_shots(ds, 0, seed=0)
    with pytest.raises(TypeError):
        select_shots(datasets.DatasetDict({"train": ds}), 1, 0)


def test_dataset_groups_and_load_group(tmp_path):
    assert DATASET_GROUPS["fundus_vessels"].train.name == "fives"
    assert [m.name for m in DATASET_GROUPS["fundus_vessels"].test] == ["hrf", "chase_db1", "drive", "stare"]
    assert DATASET_GROUPS["octa_vessels"].train.name == "rose1"
    assert [m.name for m in DATASET_GROUPS["octa_vessels"].test] == ["rose2", "octa500_3m", "octa500_6m"]
    for group in DATASET_GROUPS.values():
        for member in group.members:
            assert member.name in DATASETS
            assert member.split is None or member.split in DATASETS[member.name].split_names
    roots = {}
    for name in ("rose1", "rose2", "octa500_3m", "octa500_6m"):
        roots[name] = fx.BUILDERS[name](tmp_path / name)["root"]
    loaded = load_group("octa_vessels", roots)
    assert len(loaded["train"]) == 3 and loaded["train"]["plexus"][0] == "SVC"
    assert {k: len(v) for k, v in loaded["test"].items()} == {"rose2": 1, "octa500_3m": 1, "octa500_6m": 1}
    with pytest.raises(ValueError, match="no root"):
        load_group("fundus_vessels", roots)


def test_registry_metadata():
    assert set(DATASETS) == {"fives", "hrf", "chase_db1", "drive", "stare", "rose1", "rose2",
                             "octa500_3m", "octa500_6m", "idrid", "aroi"}  # fmt: skip
    for spec in DATASETS.values():
        assert spec.url.startswith("https://") and "@article" in spec.citation and spec.license
        assert spec.labels[0].startswith("background") and spec.modality and spec.task and spec.layout


def test_synthetic_is_imported_lazily():
    with pytest.raises(AttributeError):
        ld.no_such_thing  # noqa: B018
    try:
        import losam_peft.data.synthetic  # noqa: F401
    except ModuleNotFoundError:
        with pytest.raises(AttributeError):
            ld.synthetic  # noqa: B018
    else:
        assert ld.synthetic is sys.modules["losam_peft.data.synthetic"]


# --------------------------------------------------------------------------------------------------
# convert: atomic write, dataset card, Hub (mocked)
# --------------------------------------------------------------------------------------------------


def test_convert_arrow_and_card(tmp_path):
    root = build("drive", tmp_path)["root"]
    out = convert("drive", root, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp dirs left
    back = datasets.load_from_disk(str(out))
    assert {k: len(v) for k, v in back.items()} == {"train": 2, "test": 3}
    assert label_info(back) == {0: "background", 1: "vessel"}
    (root / "training" / "images" / "21_training.tif").unlink()  # bytes are embedded: root not needed
    assert back["train"][0]["image"].size == (fx.W, fx.H)
    card = (out / "README.md").read_text()
    assert "Staal" in card and "https://drive.grand-challenge.org/" in card and "license: other" in card
    assert "| 1 | vessel |" in card
    with pytest.raises(FileExistsError):
        convert("drive", root, out)


def test_convert_parquet_overwrite_and_push(tmp_path, monkeypatch):
    from huggingface_hub import DatasetCard

    calls = {}
    root = build("rose2", tmp_path)["root"]
    out = tmp_path / "rose2-parquet"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    from losam_peft.atomic import mark_output

    mark_output(out, "dataset")  # an earlier conversion: only such a folder may be replaced
    with monkeypatch.context() as hub:  # the Hub is unreachable: record what would be sent
        hub.setattr(
            datasets.DatasetDict,
            "push_to_hub",
            lambda self, repo_id, **kw: calls.setdefault("data", (repo_id, list(self), kw)),
        )
        hub.setattr(
            DatasetCard,
            "load",
            classmethod(lambda cls, repo_id, **kw: DatasetCard("---\ndataset_info:\n  dataset_size: 1\n---\nold")),
        )
        hub.setattr(
            DatasetCard, "push_to_hub", lambda self, repo_id, **kw: calls.setdefault("card", (repo_id, str(self), kw))
        )
        convert("rose2", root, out, format="parquet", overwrite=True, push_to_hub="me/rose2", private=True)
    assert not (out / "stale.txt").exists()
    files = sorted(p.name for p in (out / "data").iterdir())
    assert files == ["test-00000-of-00001.parquet", "train-00000-of-00001.parquet"]
    back = datasets.load_dataset(str(out))
    assert {k: len(v) for k, v in back.items()} == {"train": 2, "test": 1}
    assert label_info(back["train"]) == {0: "background", 1: "vessel"}
    assert calls["data"][0] == "me/rose2" and calls["data"][2]["private"] is True
    repo, card, kw = calls["card"]
    assert repo == "me/rose2" and kw["repo_type"] == "dataset"
    assert "ma2021rose" in card and "imed.nimte.ac.cn" in card
    assert "dataset_size: 1" in card and "license_name: rose2-terms-of-use" in card  # merged with the Hub's card


# --------------------------------------------------------------------------------------------------
# Real copies under ../shared/data (skipped when absent)
# --------------------------------------------------------------------------------------------------


@pytest.mark.skipif(not (SHARED / "DRIVE").is_dir(), reason="../shared/data/DRIVE not present")
def test_real_drive_published_facts():
    dd = load("drive", SHARED / "DRIVE")
    assert {k: len(v) for k, v in dd.items()} == {"train": 20, "test": 20}
    assert dd["train"]["id"][0] == "21_training" and dd["test"]["id"][-1] == "20_test"
    assert label_info(dd) == {0: "background", 1: "vessel"}
    for split in ("train", "test"):
        for i in (0, 19):
            row = dd[split][i]
            assert row["image"].size == (565, 584) and row["image"].mode == "RGB"
            assert set(np.unique(arr(row["label"]))) == {0, 1}
            fov = arr(row["fov"])
            assert set(np.unique(fov)) == {0, 255} and 0.6 < (fov > 0).mean() < 0.8  # ~540-pixel circle
            if split == "test":
                assert set(np.unique(arr(row["label_observer2"]))) == {0, 1}
            else:
                assert row["label_observer2"] is None
    assert all(v is not None for v in dd["test"]["label_observer2"])
    # the FOV derivation used for FIVES/CHASE_DB1/STARE/IDRiD agrees with DRIVE's shipped FOV masks
    for row in dd["test"].select([0, 7, 14]):
        shipped, derived = arr(row["fov"]).astype(bool), ld.io.derive_fov(row["image"])
        assert (shipped & derived).sum() / (shipped | derived).sum() > 0.95


@pytest.mark.skipif(not (SHARED / "OCTA-500-sample" / "OCTA_3M").is_dir(), reason="OCTA-500 sample not present")
@pytest.mark.parametrize("sub", ["", "OCTA_3M"])
def test_real_octa500_sample(sub):
    root = SHARED / "OCTA-500-sample" / sub
    dd = load("octa500_3m", root)
    assert list(dd) == ["train"] and dd["train"]["id"] == ["10301"]
    row = dd["train"][0]
    assert row["image"].size == row["label"].size == (304, 304)
    assert set(np.unique(arr(row["label"]))) == {0, 1} and row["fov"] is None
    av = load("octa500_3m", root, split="train", label="artery_vein")
    assert set(np.unique(arr(av[0]["label"]))) == {0, 1, 2}
    with pytest.raises(DatasetLayoutError, match="split 'test'"):
        load("octa500_3m", root, split="test")


def test_convert_single_split_records_skips_and_pushes_that_split(tmp_path, monkeypatch):
    root = build("rose2", tmp_path)["root"]
    (root / "train" / "gt" / "2.png").unlink()
    calls = {}
    with monkeypatch.context() as hub, pytest.warns(SkippedFileWarning):
        hub.setattr(datasets.Dataset, "push_to_hub", lambda self, repo_id, **kw: calls.setdefault("data", kw))
        from huggingface_hub import DatasetCard

        hub.setattr(DatasetCard, "load", classmethod(lambda cls, *a, **kw: (_ for _ in ()).throw(OSError("offline"))))
        hub.setattr(DatasetCard, "push_to_hub", lambda self, repo_id, **kw: calls.setdefault("card", str(self)))
        out = convert("rose2", root, tmp_path / "out", split="train", skip_bad=True, push_to_hub="me/x")
    back = datasets.load_from_disk(str(out))
    assert back["id"] == ["1"] and json.loads(back.info.description)["losam_peft"]["skipped"] == ["2"]
    assert "Skipped (unusable) samples: 1: 2" in (out / "README.md").read_text()
    assert calls["data"]["split"] == "train" and "license_name: rose2-terms-of-use" in calls["card"]


def test_interop_with_the_synthetic_module(tmp_path):
    synthetic = pytest.importorskip("losam_peft.data.synthetic")
    if not all(hasattr(synthetic, n) for n in ("make_samples", "to_dataset", "save_folder")):
        pytest.skip("synthetic module API differs")
    try:
        samples = synthetic.make_samples("oct", 2, size=32, seed=0)
    except TypeError:
        pytest.skip("synthetic.make_samples signature differs")
    names = dict(samples[0].id2label)
    assert label_info(synthetic.to_dataset(samples)) == names  # top-level id2label in the description
    synthetic.save_folder(samples, tmp_path / "syn")
    ds = folder(tmp_path / "syn")  # id2label.json + class-id masks
    assert label_info(ds) == names and len(ds) == 2
    for row, sample in zip(ds, samples):
        np.testing.assert_array_equal(arr(row["label"]), sample.mask)


# --------------------------------------------------------------------------------------------------
# Data trust (issue #11 item 13, #15 item 4): split-local loading, every missing file named, files closed,
# saved datasets and Hub ids wherever a named dataset is, options and labels checked
# --------------------------------------------------------------------------------------------------


def test_one_split_loads_when_another_split_lacks_files(tmp_path):
    root = build("drive", tmp_path)["root"]
    complete = load("drive", root, split="test")["id"]
    (root / "training" / "images" / "22_training.tif").unlink()  # its mask and FOV are left dangling
    (root / "training" / "1st_manual" / "21_manual1.gif").unlink()  # an image without its mask
    test = load("drive", root, split="test")
    assert test["id"] == complete == ["01_test", "02_test", "03_test"]
    from losam_peft.data.sources import load_dataset_split

    assert len(load_dataset_split("drive", str(root), None, default="test")) == 3
    with pytest.raises(DatasetLayoutError, match=r"21_training.*missing mask"):
        load("drive", root, split="train")
    with pytest.raises(DatasetLayoutError, match=r"21_training.*missing mask"):
        load("drive", root)  # all splits: the problem of the training split is reported
    # OCTA-500 assigns splits by subject id: the test subject loads without the training subject's labels
    octa = build("octa500_3m", tmp_path)["root"]
    (octa / "OCTA_3M" / "GT_LargeVessel" / "10301.bmp").unlink()
    assert load("octa500_3m", octa, split="test")["id"] == ["10451"]
    with pytest.raises(DatasetLayoutError, match="10301"):
        load("octa500_3m", octa, split="train")


def test_ids_do_not_depend_on_the_split_asked_for(tmp_path):
    root = build("fives", tmp_path)["root"]  # stems repeat across splits: ids are qualified by split
    whole = load("fives", root)
    assert load("fives", root, split="test")["id"] == whole["test"]["id"] == ["test_1_A", "test_2_G"]
    assert load("fives", root, split="train")["id"] == whole["train"]["id"]


def test_every_missing_file_is_named_in_one_layout_error(tmp_path):
    root = build("drive", tmp_path)["root"]
    gone = [
        root / "training" / "1st_manual" / "21_manual1.gif",
        root / "training" / "mask" / "22_training_mask.gif",
        root / "test" / "1st_manual" / "01_manual1.gif",
        root / "test" / "mask" / "01_test_mask.gif",
        root / "test" / "1st_manual" / "03_manual1.gif",
    ]
    for path in gone:
        path.unlink()
    with pytest.raises(DatasetLayoutError) as info:
        load("drive", root)
    error = info.value
    text = str(error)
    assert error.path == root.resolve() and text.startswith(str(root.resolve()))
    assert "4 DRIVE image(s) cannot be used" in text
    for stem in ("21_manual1", "22_training_mask", "01_manual1", "01_test_mask", "03_manual1"):
        assert stem in text, stem
    assert "missing mask" in text and "missing FOV mask" in text
    assert sorted(sample for sample, _ in error.problems) == ["01_test", "03_test", "21_training", "22_training"]
    with pytest.raises(DatasetLayoutError) as only_test:
        load("drive", root, split="test")
    assert "(split 'test')" in str(only_test.value) and "21_manual1" not in str(only_test.value)
    with pytest.warns(SkippedFileWarning):  # skip_bad still skips them one by one
        assert load("drive", root, split="test", skip_bad=True)["id"] == ["02_test"]


def test_a_long_list_of_missing_files_is_capped(tmp_path):
    from losam_peft.data.loaders import MAX_LISTED_PROBLEMS

    root = tmp_path / "many"
    for i in range(MAX_LISTED_PROBLEMS + 5):
        fx.write(root / "images" / f"img{i:02d}.png", fx.fundus(i))
    fx.write(root / "masks" / "img00.png", fx.vessels(0))
    with pytest.raises(DatasetLayoutError) as info:
        folder(root)
    text = str(info.value)
    missing = MAX_LISTED_PROBLEMS + 4
    assert f"{missing} folder many image(s) cannot be used" in text and "and 4 more" in text
    assert "img01.png" in text and f"img{MAX_LISTED_PROBLEMS:02d}.png" in text
    assert f"img{MAX_LISTED_PROBLEMS + 1:02d}.png" not in text  # beyond the cap: counted, not listed
    assert len(info.value.problems) == missing


def _resource_warnings(action):
    """Run ``action`` and return the ResourceWarnings it causes (also those raised while collecting garbage)."""
    import gc
    import warnings

    unraisable = []
    old_hook = sys.unraisablehook
    sys.unraisablehook = unraisable.append
    try:
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always", ResourceWarning)
            result = action()
            gc.collect()
    finally:
        sys.unraisablehook = old_hook
    found = [str(w.message) for w in record if issubclass(w.category, ResourceWarning)]
    found += [repr(u.exc_value) for u in unraisable if isinstance(u.exc_value, ResourceWarning)]
    return result, found


@pytest.mark.filterwarnings("error::ResourceWarning")
def test_image_files_are_closed_after_reading(tmp_path):
    from losam_peft.data.samples import read_mask, samples_from_dataset

    root = build("drive", tmp_path)["root"]
    gifs = sorted(root.rglob("*.gif"))
    assert gifs and any(ld.open_image(p).format == "GIF" for p in gifs)

    def read_all():
        images = [ld.open_image(p) for p in gifs]
        masks = [read_mask(p) for p in gifs]
        samples = samples_from_dataset(load("drive", root, split="test"))
        return len(images), len(masks), len(samples)

    counts, leaks = _resource_warnings(read_all)
    assert counts == (len(gifs), len(gifs), 3)
    assert leaks == []


@pytest.mark.skipif(not (SHARED / "DRIVE").is_dir(), reason="../shared/data/DRIVE not present")
@pytest.mark.filterwarnings("error::ResourceWarning")
def test_real_drive_gifs_are_closed_after_reading():
    from losam_peft.data.samples import samples_from_dataset

    gifs = sorted((SHARED / "DRIVE").rglob("*.gif"))
    assert len(gifs) >= 60  # 1st_manual, 2nd_manual and mask GIFs

    def read_all():
        opened = [ld.open_image(p).size for p in gifs]
        return opened, samples_from_dataset(load("drive", SHARED / "DRIVE", split="test"))

    (sizes, samples), leaks = _resource_warnings(read_all)
    assert set(sizes) == {(565, 584)} and len(samples) == 20 and samples[0].fov is not None
    assert leaks == []


def test_convert_writes_a_label_description_that_train_and_evaluate_read_back(tmp_path):
    from huggingface_hub import DatasetCard

    from losam_peft.data.sources import load_training_data
    from losam_peft.evaluation import load_evaluation_data

    root = build("octa500_3m", tmp_path)["root"]
    names = {0: "background", 1: "artery", 2: "vein"}
    out = convert("octa500_3m", root, tmp_path / "av", label="artery_vein")
    assert json.loads((out / "id2label.json").read_text()) == {"0": "background", "1": "artery", "2": "vein"}
    assert DatasetCard.load(out / "README.md").data.to_dict()["id2label"] == {"0": "background", "1": "artery",
                                                                               "2": "vein"}  # fmt: skip
    data = load_training_data(dataset=str(out), eval_dataset=str(out), eval_split="test")
    assert data.id2label == names and [s.id for s in data.train] == ["10301"] and [s.id for s in data.eval] == ["10451"]
    assert (data.modality, data.task, data.datasets) == ("octa", "vessels", ["octa500_3m"])
    assert set(np.unique(data.train[0].label)) <= {0, 1, 2}
    dataset, id2label, _ = load_evaluation_data(dataset=str(out), options={})
    assert id2label == names and dataset["id"] == ["10451"]  # the default evaluation split is test
    # the same from the parquet layout (a folder of data files)
    parquet = convert("octa500_3m", root, tmp_path / "av-parquet", label="artery_vein", format="parquet")
    assert load_evaluation_data(dataset=str(parquet), split="validation")[1] == names
    # --labels that agree are fine; that disagree are a LabelMismatchError naming both
    assert load_training_data(dataset=str(out), labels=["background", "Artery", "vein"]).id2label[1] == "Artery"
    with pytest.raises(LabelMismatchError, match=r"background, vessel\).*\(background, artery, vein\)"):
        load_training_data(dataset=str(out), labels=["background", "vessel"])
    with pytest.raises(LabelMismatchError, match="disagree"):
        convert("octa500_3m", root, tmp_path / "bad", labels=["background", "capillary"])
    assert not (tmp_path / "bad").exists()


def test_any_save_to_disk_folder_with_image_and_mask_columns(tmp_path):
    from losam_peft.data.sources import load_training_data

    images = [fx.fundus(i) for i in range(3)]
    masks = [fx.vessels(i) // 255 for i in range(3)]
    features = datasets.Features({"image": datasets.Image(), "mask": datasets.Image(),
                                  "label": datasets.ClassLabel(names=["healthy", "sick"])})  # fmt: skip
    plain = datasets.Dataset.from_dict({"image": images, "mask": masks, "label": [0, 1, 0]}, features=features)
    datasets.DatasetDict({"train": plain, "test": plain.select([2])}).save_to_disk(str(tmp_path / "plain"))
    data = load_training_data(dataset=str(tmp_path / "plain"), eval_dataset=str(tmp_path / "plain"))
    assert [s.id for s in data.train] == ["train-00000", "train-00001", "train-00002"]
    assert [s.id for s in data.eval] == ["test-00000"] and data.datasets == ["plain"]
    np.testing.assert_array_equal(data.train[1].label, masks[1])  # the mask column, not the image-level label
    assert data.id2label is None  # no names anywhere: the caller decides (--labels / --num-labels)
    assert load_training_data(dataset=str(tmp_path / "plain"), labels=["bg", "lesion"]).id2label == {0: "bg",
                                                                                                    1: "lesion"}  # fmt: skip
    (tmp_path / "plain" / "id2label.json").write_text('{"0": "background", "1": "lesion"}')
    assert load_training_data(dataset=str(tmp_path / "plain")).id2label == {0: "background", 1: "lesion"}
    with pytest.raises(LabelMismatchError):
        load_training_data(dataset=str(tmp_path / "plain"), labels=["background", "vessel"])
    with pytest.raises(ValueError, match="takes no dataset options"):
        load_training_data(dataset=str(tmp_path / "plain"), dataset_options={"mask_threshold": 128})
    with pytest.raises(DatasetLayoutError, match=r"no split 'validation'; its splits are \['train', 'test'\]"):
        load_training_data(dataset=str(tmp_path / "plain"), split="validation")
    # a training split never stands in for the evaluation data asked for by default
    datasets.DatasetDict({"train": plain}).save_to_disk(str(tmp_path / "train-only"))
    with pytest.raises(DatasetLayoutError, match="only the split 'train', no 'test' split"):
        load_training_data(dataset=str(tmp_path / "plain"), eval_dataset=str(tmp_path / "train-only"))
    # folders that are not saved datasets, and masks that are not images
    fx.write(tmp_path / "raw" / "images" / "a.png", fx.fundus(0))
    with pytest.raises(DatasetLayoutError, match="not a saved dataset.*--train-dir"):
        load_training_data(dataset=str(tmp_path / "raw"))
    no_masks = datasets.Dataset.from_dict({"image": images[:1], "label": [1]},
                                          features=datasets.Features({"image": datasets.Image(),
                                                                      "label": datasets.Value("int64")}))  # fmt: skip
    no_masks.save_to_disk(str(tmp_path / "classification"))
    with pytest.raises(DataError, match=r"no mask column.*label \(Value\)"):
        load_training_data(dataset=str(tmp_path / "classification"))
    with pytest.raises(DataError, match="unknown dataset 'drvie'.*Hub dataset id"):
        load_training_data(dataset="drvie", data_root=str(tmp_path))


def test_a_hub_dataset_id_is_accepted_and_offline_is_a_clear_error(tmp_path, monkeypatch):
    import huggingface_hub
    import huggingface_hub.constants
    from huggingface_hub import DatasetCard

    from losam_peft.data.sources import load_training_data
    from losam_peft.errors import HubError

    local = tmp_path / "files" / "data"  # a "data files" folder standing in for the Hub repository
    local.mkdir(parents=True)
    features = datasets.Features({"image": datasets.Image(), "annotation": datasets.Image()})
    rows = {"image": [fx.fundus(i) for i in range(2)], "annotation": [fx.vessels(i) // 255 for i in range(2)]}
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(local / "train-00000-of-00001.parquet"))
    real_load = datasets.load_dataset
    asked = []

    def fake_load(path, *args, **kwargs):
        asked.append(path)
        return real_load(str(tmp_path / "files")) if path == "someone/retina-vessels" else real_load(path, *args, **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: (_ for _ in ()).throw(OSError("404")))
    card = DatasetCard("---\nlicense: cc-by-4.0\nid2label:\n  '0': background\n  '1': vessel\n---\ncard")
    monkeypatch.setattr(DatasetCard, "load", classmethod(lambda cls, repo_id, **k: card))
    data = load_training_data(dataset="someone/retina-vessels")
    assert asked == ["someone/retina-vessels"] and data.datasets == ["someone/retina-vessels"]
    assert data.id2label == {0: "background", 1: "vessel"} and len(data.train) == 2  # names from the card
    with pytest.raises(LabelMismatchError):
        load_training_data(dataset="someone/retina-vessels", labels=["background", "artery"])
    # offline (as here): one clear error naming the id and what to do
    monkeypatch.setattr(datasets, "load_dataset", real_load)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubError, match=r"nobody/no-such-data: could not load this Hub dataset.*local copy"):
        load_training_data(dataset="nobody/no-such-data")


def test_unknown_dataset_options_are_refused_naming_the_known_ones(tmp_path):
    from losam_peft.data.sources import load_training_data
    from losam_peft.errors import LoSamError

    drive = build("drive", tmp_path)["root"]
    with pytest.raises(TypeError, match=r"drive: unknown option\(s\) \['foo'\]; known options: DRIVE has none of its own; "
                       r"every dataset's: mask_threshold, derive_fov, max_pixels, cache_dir"):  # fmt: skip
        load("drive", drive, foo=1)
    with pytest.raises(LoSamError, match=r"unknown option\(s\) \['plexus'\]; known options: ROSE-1's own: subset"):
        load_training_data(dataset="rose1", data_root=str(drive), dataset_options={"plexus": "DVC"})
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['mask'\]; .*label_map, label_names, mask_name"):
        folder(drive / "training", mask="x")
    for option, value, message in (("max_pixels", "lots", "max_pixels must be a number"),
                                   ("max_pixels", 0.5, "positive whole number"),
                                   ("mask_threshold", "half", "mask_threshold must be a number"),
                                   ("derive_fov", "maybe", "derive_fov must be true or false")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            load("drive", drive, split="test", **{option: value})
    assert len(load("drive", drive, split="test", max_pixels=10_000.0, derive_fov="false")) == 3


def test_cli_dataset_options_and_labels_are_checked(tmp_path, capsys):
    from losam_peft.cli import main

    drive = build("drive", tmp_path)["root"]
    out = tmp_path / "out"
    base = ["data", "convert", "--dataset", "drive", "--data-root", str(drive), "--output-dir", str(out)]
    assert main([*base, "--dataset-option", "foo=1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: drive: unknown option(s) ['foo']; known options:") and "mask_threshold" in err
    for labels, message in (("background", "at least two"), ("background,vessel,Vessel", "must be unique")):
        assert main([*base, "--labels", labels]) == 2
        assert message in capsys.readouterr().err
    assert main([*base, "--labels", "background,artery"]) == 2
    assert "disagree" in capsys.readouterr().err and not out.exists()
    assert main([*base, "--split", "test", "--labels", "background,vessel"]) == 0
    saved = str(out)
    assert main(["train", "--dataset", saved, "--labels", "background,artery", "--output-dir", str(tmp_path / "a")]) == 2
    assert "disagree with the labels" in capsys.readouterr().err and not (tmp_path / "a").exists()


def test_label_names_must_be_unique_and_at_least_two():
    from losam_peft.labels import normalise_id2label, parse_label_names

    assert parse_label_names("background, vessel,") == {0: "background", 1: "vessel"}
    assert normalise_id2label({"1": "vessel", "0": "background"}) == {0: "background", 1: "vessel"}
    for bad, message in (
        (["background"], "at least two"),
        ({}, "at least two"),
        (["background", "vessel", "vessel"], "must be unique"),
        ({0: "background", "00": "x"}, "ids must be unique"),
        (["background", " "], "must not be empty"),
        ({-1: "ignore", 0: "background"}, "non-negative"),
        ({"a": "x"}, "must be integers"),
    ):
        with pytest.raises(ValueError, match=message):
            normalise_id2label(bad)
    with pytest.raises(ValueError, match="must be unique"):
        parse_label_names("background,a,b,a")


def test_more_than_255_labels_are_refused_for_8_bit_label_masks(tmp_path):
    root = tmp_path / "many-classes"
    fx.write(root / "images" / "a.png", fx.fundus(0))
    fx.write(root / "masks" / "a.png", fx.vessels(0))
    names = ["background", *(f"class {i}" for i in range(1, 256))]  # 256 classes: ids 0..255
    with pytest.raises(ValueError, match="256 classes, but label masks are stored as 8-bit PNGs.*at most 255"):
        folder(root, label_names=names)
    with pytest.raises(ValueError, match="at most 255"):
        convert("folder", root, tmp_path / "out", labels=names)
    assert not (tmp_path / "out").exists()
    (root / "id2label.json").write_text(json.dumps({str(i): n for i, n in enumerate(names)}))
    with pytest.raises(ValueError, match=r"id2label.json.*256 classes"):
        folder(root)
    (root / "id2label.json").unlink()
    with pytest.raises(ValueError, match=r"class id 300 .* not an integer in 0..254"):
        folder(root, label_map={255: 300})
    assert label_info(folder(root, label_names=names[:255], label_map={0: 0, 255: 254}))[254] == "class 254"
