"""``losam predict`` at scale and trustworthy: DataLoader workers, datasets in and out, FOV masks, output-folder
rules (fingerprint, overwrite, lock), a summary appended as images finish, and two processes on CPU."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import REPO, tiny_model
from PIL import Image

from losam_peft import LoSamImageProcessor
from losam_peft.atomic import LOCK_NAME, OUTPUT_MARKER, output_lock
from losam_peft.cli import main
from losam_peft.errors import LoSamValueError, OutputExistsError
from losam_peft.pipeline import LoSamPipeline
from losam_peft.predict import SETTINGS_NAME, predict_dataset, predict_paths


def _rgb(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _pipe(seed=0):
    model = tiny_model(seed)
    with torch.no_grad():
        model.segmentation_head.classifier.bias.copy_(torch.tensor([0.0, 0.0]))
    return LoSamPipeline(model, LoSamImageProcessor(image_size=64), device="cpu", dtype="fp32",
                         id2label={0: "background", 1: "vessel"})  # fmt: skip


@pytest.fixture(scope="module")
def pipe():
    return _pipe()


@pytest.fixture
def images(tmp_path):
    root = tmp_path / "in"
    root.mkdir()
    for i in range(6):
        Image.fromarray(_rgb(32 + 4 * i, 40, i)).save(root / f"im{i}.png")
    return root


def _rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _masks(folder):
    return {p.name: p.read_bytes() for p in sorted((folder / "masks").rglob("*.png"))}


# -- DataLoader workers ------------------------------------------------------------------------------------------------
def test_workers_give_the_same_masks_and_count_bad_files_the_same(tmp_path, images, pipe):
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    one = predict_paths(pipe, images, tmp_path / "w0", num_workers=0, batch_size=2, progress=False)
    two = predict_paths(pipe, images, tmp_path / "w2", num_workers=2, batch_size=2, progress=False)
    assert one.processed == two.processed == 6
    assert (
        [os.path.basename(p) for p, _ in two.failed] == ["broken.png"] == [os.path.basename(p) for p, _ in one.failed]
    )
    assert _masks(tmp_path / "w0") == _masks(tmp_path / "w2")
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "w2" / "masks" / "im3.png")),
                                  pipe(images / "im3.png").label_map)  # fmt: skip
    rows = _rows(tmp_path / "w2" / "summary.csv")
    assert [r["name"] for r in rows] == ["broken", *[f"im{i}" for i in range(6)]]  # input order
    assert {r["process"] for r in rows} == {"0"}


# -- output folder rules -----------------------------------------------------------------------------------------------
def test_resume_refuses_another_adapter_or_other_settings(tmp_path, images, pipe):
    out = tmp_path / "out"
    predict_paths(pipe, images, out, num_workers=0, progress=False)
    settings = json.loads((out / SETTINGS_NAME).read_text())
    assert settings["adapter"] and settings["tile"] is None and settings["labels"] == {"0": "background", "1": "vessel"}
    before = _masks(out)
    with pytest.raises(OutputExistsError, match=r"cannot resume.*tile \(null then, 32 now\)"):
        predict_paths(pipe, images, out, resume=True, tile=32, num_workers=0, progress=False)
    with pytest.raises(OutputExistsError, match=r"cannot resume.*adapter file model_tensors"):
        predict_paths(_pipe(seed=1), images, out, resume=True, num_workers=0, progress=False)
    assert _masks(out) == before
    again = predict_paths(pipe, images, out, resume=True, num_workers=0, progress=False)
    assert again.resumed == 6 and again.processed == 0


def test_a_used_folder_needs_resume_or_overwrite_and_overwrite_clears_stale_masks(tmp_path, images, pipe):
    out = tmp_path / "out"
    predict_paths(pipe, images, out, num_workers=0, overlay=True, progress=False)
    with pytest.raises(OutputExistsError, match="pass --resume to continue it or --overwrite"):
        predict_paths(pipe, images / "im0.png", out, num_workers=0, progress=False)
    (out / "notes.txt").write_text("mine")
    summary = predict_paths(pipe, images / "im0.png", out, overwrite=True, num_workers=0, progress=False)
    assert summary.processed == 1
    assert sorted(_masks(out)) == ["im0.png"] and not (out / "overlays").exists()  # no stale outputs
    assert [r["name"] for r in _rows(out / "summary.csv")] == ["im0"]
    assert (out / "notes.txt").read_text() == "mine"  # not predict's: kept
    with pytest.raises(LoSamValueError, match="exclude each other"):
        predict_paths(pipe, images, out, overwrite=True, resume=True, progress=False)


def test_foreign_folders_and_inputs_are_never_written(tmp_path, images, pipe):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    for flags in ({}, {"overwrite": True}, {"resume": True}):
        with pytest.raises(OutputExistsError, match="not written by losam predict"):
            predict_paths(pipe, images, foreign, num_workers=0, progress=False, **flags)
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    other = tmp_path / "adapter"
    other.mkdir()
    (other / OUTPUT_MARKER).write_text(json.dumps({"written_by": "losam-peft", "what": "adapter"}))
    (other / "adapter_config.json").write_text("{}")
    with pytest.raises(OutputExistsError, match="holds a losam-peft adapter"):
        predict_paths(pipe, images, other, overwrite=True, num_workers=0, progress=False)
    with pytest.raises(OutputExistsError, match="lies inside the input"):
        predict_paths(pipe, images, images / "predictions", num_workers=0, progress=False)
    assert not (images / "predictions").exists()


def test_a_second_run_into_a_locked_folder_is_refused(tmp_path, images, pipe):
    out = tmp_path / "out"
    with output_lock(out):
        with pytest.raises(OutputExistsError, match=rf"{out} is being written by another run \(pid {os.getpid()}"):
            predict_paths(pipe, images, out, num_workers=0, progress=False)
    assert not (out / "masks").exists()
    assert predict_paths(pipe, images, out, num_workers=0, progress=False).processed == 6
    assert not (out / LOCK_NAME).exists()


# -- the summary as the run goes ---------------------------------------------------------------------------------------
def test_summary_is_appended_as_images_finish_and_resume_reads_it_back(tmp_path, images, pipe, monkeypatch):
    out = tmp_path / "out"
    seen = []
    original = pipe.forward_logits

    def forward(pixel_values):
        if len(seen) == 4:
            raise KeyboardInterrupt  # the run is stopped while the fifth image is being segmented
        csv_path = out / "summary.csv"
        seen.append(len([r for r in _rows(csv_path) if r["status"] == "ok"]) if csv_path.is_file() else 0)
        return original(pixel_values)

    monkeypatch.setattr(pipe, "forward_logits", forward)
    with pytest.raises(KeyboardInterrupt):
        predict_paths(pipe, images, out, num_workers=0, progress=False)
    assert seen[0] == 0 and seen[-1] >= 1  # rows were on disk while the run was going
    assert sorted(r["name"] for r in _rows(out / "summary.csv")) == ["im0", "im1", "im2", "im3"]
    monkeypatch.setattr(pipe, "forward_logits", original)
    again = predict_paths(pipe, images, out, resume=True, num_workers=0, progress=False)
    assert again.resumed == 4 and again.processed == 2
    assert [r["status"] for r in _rows(out / "summary.csv")] == ["resumed"] * 4 + ["ok"] * 2


def test_resume_reads_the_parts_a_killed_multi_process_run_left(tmp_path, images, pipe):
    out = tmp_path / "out"
    predict_paths(pipe, images, out, num_workers=0, progress=False)
    rows = _rows(out / "summary.csv")
    header = list(rows[0])
    # as a killed 2-process run leaves it: rank 0's rows in summary.csv, rank 1's in its part
    for path, part in ((out / "summary.csv", rows[:3]), (out / ".summary-part-00001.csv", rows[3:])):
        with open(path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=header, lineterminator="\n")
            writer.writeheader()
            writer.writerows([dict(r, note="from the part" if path.name.startswith(".") else r["note"]) for r in part])
    again = predict_paths(pipe, images, out, resume=True, num_workers=0, progress=False)
    assert again.resumed == 6 and again.processed == 0
    merged = _rows(out / "summary.csv")
    assert [r["name"] for r in merged] == [f"im{i}" for i in range(6)]
    assert [r["note"] for r in merged[3:]] == ["from the part"] * 3
    assert not list(out.glob(".summary-part-*"))


# -- field of view -----------------------------------------------------------------------------------------------------
def test_fov_masks_set_predictions_outside_to_background(tmp_path, images, pipe):
    fov = tmp_path / "fov"
    fov.mkdir()
    for i in range(5):
        h = 32 + 4 * i
        mask = np.zeros((h, 40), np.uint8)
        mask[4 : h - 4, 5:35] = 255
        Image.fromarray(mask).save(fov / (f"im{i}_mask.gif" if i % 2 else f"im{i}.png"))
    Image.fromarray(np.full((10, 10), 255, np.uint8)).save(fov / "im4.gif")  # a second mask of stem im4
    out = tmp_path / "out"
    summary = predict_paths(pipe, images, out, fov=fov, probabilities=True, num_workers=0, progress=False)
    assert summary.processed == 4
    reasons = {os.path.basename(p): r for p, r in summary.failed}
    assert "more than one FOV mask" in reasons["im4.png"] and "no FOV mask for it" in reasons["im5.png"]
    for i in range(4):
        mask = np.asarray(Image.open(out / "masks" / f"im{i}.png"))
        inside = np.asarray(Image.open(fov / (f"im{i}_mask.gif" if i % 2 else f"im{i}.png"))) > 0
        expected = pipe(images / f"im{i}.png").label_map * inside
        np.testing.assert_array_equal(mask, expected)
        probs = np.load(out / "probabilities" / f"im{i}.npz")["probabilities"]
        assert (probs[0][~inside] == 1).all() and (probs[1][~inside] == 0).all()
    assert expected.any() and (~inside).any()
    assert "outside the FOV" in _rows(out / "summary.csv")[0]["note"]
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(fov / "im5.png")  # the wrong size
    bad = predict_paths(pipe, images / "im5.png", tmp_path / "bad", fov=fov, num_workers=0, progress=False)
    assert "its FOV mask is 8x8 but the image is 40x52" in bad.failed[0][1]


# -- datasets in and out -----------------------------------------------------------------------------------------------
@pytest.fixture
def saved_dataset(tmp_path):
    import datasets

    arrays = [_rgb(30 + 6 * i, 36, 20 + i) for i in range(5)]
    fovs = []
    for a in arrays:
        f = np.zeros(a.shape[:2], np.uint8)
        f[3:-3, 3:-3] = 255
        fovs.append(Image.fromarray(f))
    ds = datasets.Dataset.from_dict(
        {"image": [Image.fromarray(a) for a in arrays], "id": [f"case/{i}" for i in range(5)], "fov": fovs},
        features=datasets.Features(
            {"image": datasets.Image(), "id": datasets.Value("string"), "fov": datasets.Image()}
        ),  # fmt: skip
    )
    ds.save_to_disk(tmp_path / "ds")
    return tmp_path / "ds", arrays, [np.asarray(f) > 0 for f in fovs]


def test_a_saved_dataset_in_and_files_out(tmp_path, saved_dataset, pipe):
    path, arrays, fovs = saved_dataset
    out = tmp_path / "out"
    summary = predict_dataset(pipe, path, out, num_workers=0, progress=False)
    assert summary.processed == 5 and not summary.failed
    for i, (array, fov) in enumerate(zip(arrays, fovs)):
        mask = np.asarray(Image.open(out / "masks" / f"case_{i}.png"))  # ids made safe for file names
        np.testing.assert_array_equal(mask, pipe(array).label_map * fov)  # the dataset's fov column is used
    rows = _rows(out / "summary.csv")
    assert [r["file"] for r in rows] == [f"case/{i}" for i in range(5)]
    plain = predict_dataset(pipe, path, tmp_path / "nofov", use_fov=False, num_workers=0, progress=False)
    assert plain.processed == 5
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "nofov" / "masks" / "case_2.png")),
                                  pipe(arrays[2]).label_map)  # fmt: skip
    streamed = predict_dataset(pipe, path, tmp_path / "stream", streaming=True, num_workers=0, progress=False)
    assert streamed.processed == 5 and _masks(tmp_path / "stream") == _masks(out)
    with pytest.raises(LoSamValueError, match="no column 'picture'"):
        predict_dataset(pipe, path, tmp_path / "x", image_column="picture", progress=False)


def test_dataset_output_is_a_loadable_parquet_dataset_with_the_ids(tmp_path, saved_dataset, pipe):
    import datasets

    path, arrays, fovs = saved_dataset
    out = tmp_path / "out"
    summary = predict_dataset(pipe, path, out, output_format="dataset", shard_size=2, probabilities=True,
                              overlay=True, num_workers=0, progress=False)  # fmt: skip
    assert summary.processed == 5 and not (out / "masks").exists()
    assert len(list((out / "data").glob("*.parquet"))) == 3
    loaded = datasets.load_dataset(str(out), split="train", cache_dir=str(tmp_path / "cache"))
    assert sorted(loaded["id"]) == [f"case/{i}" for i in range(5)]
    by_id = {row["id"]: row for row in loaded}
    for i, (array, fov) in enumerate(zip(arrays, fovs)):
        row = by_id[f"case/{i}"]
        np.testing.assert_array_equal(np.asarray(row["mask"]), pipe(array).label_map * fov)
        assert (row["width"], row["height"]) == (36, 30 + 6 * i) and row["overlay"].mode == "RGB"
        probs = np.asarray(row["probabilities"], dtype=np.float32)
        assert probs.shape == (2, 30 + 6 * i, 36)
        np.testing.assert_allclose(probs.sum(0), 1.0, atol=2e-3)
    again = predict_dataset(pipe, path, out, output_format="dataset", shard_size=2, probabilities=True, overlay=True,
                            resume=True, num_workers=0, progress=False)  # fmt: skip
    assert again.resumed == 5 and again.processed == 0


def test_files_in_and_dataset_out(tmp_path, images, pipe):
    import datasets

    out = tmp_path / "out"
    predict_paths(pipe, images, out, output_format="dataset", num_workers=0, progress=False)
    loaded = datasets.load_dataset(str(out), split="train", cache_dir=str(tmp_path / "cache"))
    assert sorted(loaded["id"]) == [f"im{i}" for i in range(6)]
    row = next(r for r in loaded if r["id"] == "im1")
    np.testing.assert_array_equal(np.asarray(row["mask"]), pipe(images / "im1.png").label_map)


# -- the command line --------------------------------------------------------------------------------------------------
def test_cli_refuses_options_of_the_other_input(tmp_path, images, capsys, saved_adapter):
    adapter, base = saved_adapter
    common = ["predict", "--adapter", str(adapter), "--base", str(base), "--output-dir", str(tmp_path / "o")]
    assert main([*common, "--input", str(images), "--split", "test"]) == 2
    assert "--split applies to --input-dataset only" in capsys.readouterr().err
    assert main([*common, "--input-dataset", str(images), "--recursive"]) == 2
    assert "--recursive applies to --input only" in capsys.readouterr().err
    assert main([*common, "--input", str(images), "--shard-size", "3"]) == 2
    assert "--shard-size applies to --output-format dataset only" in capsys.readouterr().err


def test_cli_dataset_in_and_dataset_out(tmp_path, saved_dataset, saved_adapter, capsys):
    import datasets

    adapter, base = saved_adapter
    path, arrays, _ = saved_dataset
    out = tmp_path / "out"
    argv = ["predict", "--adapter", str(adapter), "--base", str(base), "--input-dataset", str(path), "--output-dir",
            str(out), "--output-format", "dataset", "--no-fov", "--num-workers", "0", "--device", "cpu", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    assert "5 image(s) segmented" in capsys.readouterr().out
    loaded = datasets.load_dataset(str(out), split="train", cache_dir=str(tmp_path / "cache"))
    assert sorted(loaded["id"]) == [f"case/{i}" for i in range(5)]
    assert main(argv) == 2  # a second run needs --resume or --overwrite
    assert "pass --resume to continue it or --overwrite" in capsys.readouterr().err
    assert main([*argv, "--resume"]) == 0
    assert "5 already done (resume)" in capsys.readouterr().out


def test_two_processes_write_each_output_once_and_match_one_process(tmp_path, saved_adapter):
    adapter, base = saved_adapter
    root = tmp_path / "in"
    root.mkdir()
    for i in range(20):
        Image.fromarray(_rgb(32 + (i % 5) * 8, 64 - (i % 3) * 8, 100 + i)).save(root / f"img{i:02d}.png")
    (root / "bad.png").write_bytes(b"not a png")
    common = ["--adapter", str(adapter), "--base", str(base), "--device", "cpu", "--dtype", "fp32",
              "--num-workers", "0", "--quiet"]  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what each of the two processes uses on 2 cores: the same arithmetic
    try:
        assert main(["predict", *common, "--input", str(root), "--output-dir", str(tmp_path / "one")]) == 1
        # a run that covered 8 images, to be resumed by two processes
        assert main(["predict", *common, "--input", str(root / "img0[0-7].png"),
                     "--output-dir", str(tmp_path / "two")]) == 0  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "src"))
    result = subprocess.run(
        [sys.executable, "-m", "losam_peft.cli", "predict", *common, "--input", str(root), "--output-dir",
         str(tmp_path / "two"), "--resume", "--num-processes", "2"],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr  # one input failed: reported once, for the whole run
    assert "12 image(s) segmented" in result.stdout and "by 2 processes" in result.stdout
    assert "8 already done (resume)" in result.stdout and result.stdout.count("bad.png") == 1
    assert _masks(tmp_path / "one") == _masks(tmp_path / "two")  # byte-identical
    assert len(_masks(tmp_path / "two")) == 20
    rows = _rows(tmp_path / "two" / "summary.csv")
    ok = [r for r in rows if r["status"] == "ok"]
    assert sorted(r["name"] for r in rows if r["status"] in ("ok", "resumed")) == [f"img{i:02d}" for i in range(20)]
    assert len(ok) == 12 and {r["process"] for r in ok} == {"0", "1"}  # each written once, by one process
    assert sum(r["process"] == "1" for r in ok) == 6
    assert [r["name"] for r in rows if r["status"] == "failed"] == ["bad"]
    assert not list((tmp_path / "two").glob(".summary-part-*")) and not (tmp_path / "two" / LOCK_NAME).exists()


def test_output_lock_message_without_pid_is_clear(tmp_path):
    # a lock held but not yet described (its holder is between creating and writing it)
    import fcntl

    out = tmp_path / "out"
    out.mkdir()
    fd = os.open(out / LOCK_NAME, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        with pytest.raises(OutputExistsError, match="pid is not recorded yet"):
            with output_lock(out):
                pass
    finally:
        os.close(fd)
