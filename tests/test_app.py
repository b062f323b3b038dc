"""The web app's functions without a browser: labels, painted masks, training from one painted shot (steps, stop,
resume, continuing an adapter), segmentation, zips, the working folder's rules, the Hub switch and the CLI."""

import json
import sys
import zipfile

import numpy as np
import pytest
from PIL import Image

from losam_peft import app
from losam_peft.errors import DataError, LoSamError, LoSamValueError, TrainingError
from losam_peft.pipeline import LoSamPipeline
from losam_peft.visualization import palette

STEPS = 3


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return app.Workspace(tmp_path_factory.mktemp("app"))


@pytest.fixture(scope="module")
def shot(workspace):
    """A 64×80 synthetic fundus photograph saved as an upload would be, and its painted two-class mask."""
    from losam_peft.data.synthetic import fundus

    sample = fundus(64, 3)
    image = np.asarray(Image.fromarray(sample.image).resize((80, 64)))
    path = workspace.uploads / "abc123" / "eye.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    mask = np.zeros((64, 80), np.uint8)
    mask[10:30, 10:40] = 1
    mask[40:50, 50:70] = 2
    return path, mask


@pytest.fixture(scope="module")
def trained(workspace, shot):
    """An adapter trained for a few steps on the bundled tiny encoder, with the steps it reported."""
    path, mask = shot
    seen = []
    out = workspace.new_folder("runs")
    result = app.train_from_painted_mask(
        path, mask, {0: "background", 1: "vessel", 2: "lesion"}, out, workspace=workspace, base="tiny", steps=STEPS,
        on_step=lambda step, loss: seen.append((step, loss)),
    )  # fmt: skip
    return result, seen


# -- labels and masks ---------------------------------------------------------------------------------------------------
def test_parse_labels_names_the_classes_after_background():
    assert app.parse_labels("vessel") == {0: "background", 1: "vessel"}
    assert app.parse_labels(" background , MA, HE ,EX") == {0: "background", 1: "MA", 2: "HE", 3: "EX"}
    assert app.parse_labels(["vessel", ""]) == {0: "background", 1: "vessel"}
    with pytest.raises(LoSamValueError, match="at least one class"):
        app.parse_labels(" , ")
    with pytest.raises(LoSamValueError, match="twice"):
        app.parse_labels("vessel, Vessel")
    with pytest.raises(LoSamValueError, match="twice"):
        app.parse_labels("vessel, background")


def test_brush_colours_are_the_mask_palette():
    colours = app.class_colours(4)
    assert colours == ["#%02x%02x%02x" % tuple(c) for c in palette(4)]
    assert colours[0] == "#000000" and len(colours) == 4


def _stroke(shape, box, colour, alpha=255):
    layer = np.zeros(shape + (4,), np.uint8)
    y0, y1, x0, x1 = box
    layer[y0:y1, x0:x1, :3] = colour
    layer[y0:y1, x0:x1, 3] = alpha
    return layer


def test_mask_from_editor_reads_classes_by_colour_and_ignores_faint_and_erased_pixels():
    colours = palette(3)
    first = _stroke((20, 30), (0, 10, 0, 10), colours[1])
    first[5, 5, 3] = 0  # erased
    first[0, 0, :3] = np.clip(colours[1].astype(int) + 9, 0, 255)  # anti-aliased edge: nearest colour wins
    first[19, 29] = (*colours[2], app.PAINTED_ALPHA - 1)  # too faint to count
    second = _stroke((20, 30), (5, 15, 5, 15), colours[2], alpha=150)  # semi-transparent, covers the first
    mask = app.mask_from_editor({"background": np.zeros((20, 30, 4), np.uint8), "layers": [first, second]}, 3)
    assert mask.shape == (20, 30) and mask.dtype == np.uint8
    assert mask[0, 0] == 1 and mask[2, 2] == 1 and mask[5, 5] == 2 and mask[12, 12] == 2
    assert mask[19, 29] == 0 and mask[16, 20] == 0
    assert set(np.unique(mask)) == {0, 1, 2}


def test_mask_from_editor_without_strokes_is_background_of_the_image_size():
    mask = app.mask_from_editor({"background": np.zeros((7, 9, 4), np.uint8), "layers": []}, 2)
    assert mask.shape == (7, 9) and not mask.any()
    with pytest.raises(LoSamValueError, match="no image"):
        app.mask_from_editor({"background": None, "layers": []}, 2)


def test_mask_from_editor_resizes_a_scaled_canvas_and_refuses_another_shape():
    layer = _stroke((20, 30), (0, 10, 0, 15), palette(2)[1])
    mask = app.mask_from_editor({"layers": [layer]}, 2, size=(40, 60))
    assert mask.shape == (40, 60) and mask[:20, :30].all() and not mask[20:, :].any()
    with pytest.raises(LoSamValueError, match="paint on the image"):
        app.mask_from_editor({"layers": [layer]}, 2, size=(40, 40))


def test_painting_corrects_an_uploaded_mask_and_black_paints_background():
    uploaded = np.zeros((10, 12), np.uint8)
    uploaded[:, :6] = 1
    colours = palette(3)
    erase = _stroke((10, 12), (0, 5, 0, 3), colours[0], alpha=153)  # the background brush over class 1
    add = _stroke((10, 12), (0, 2, 8, 12), colours[2])
    mask = app.mask_from_editor({"layers": [erase, add]}, 3, base=uploaded)
    assert (mask[:5, :3] == 0).all() and (mask[5:, :3] == 1).all() and (mask[:5, 3:6] == 1).all()
    assert (mask[:2, 8:] == 2).all() and (mask[2:, 6:] == 0).all()
    assert uploaded[:5, :3].all()  # the uploaded mask itself is not changed
    with pytest.raises(LoSamValueError, match="being corrected"):
        app.mask_from_editor({"layers": []}, 3, size=(4, 4), base=uploaded)


def test_read_mask_file_checks_size_and_classes(tmp_path):
    binary = np.zeros((8, 10), np.uint8)
    binary[2:4, 2:6] = 255
    Image.fromarray(binary).save(tmp_path / "m.png")
    mask = app.read_mask_file(tmp_path / "m.png", 2, size=(8, 10))
    assert mask.max() == 1 and mask.sum() == 8
    with pytest.raises(DataError, match="m.png: the mask is 10×8 pixels but the image is 12×8"):
        app.read_mask_file(tmp_path / "m.png", 2, size=(8, 12))
    ids = np.zeros((8, 10), np.uint8)
    ids[0, :3] = [1, 2, 3]
    Image.fromarray(ids).save(tmp_path / "ids.png")
    with pytest.raises(DataError, match=r"ids.png: mask values \[3\] are outside the label set 0..2"):
        app.read_mask_file(tmp_path / "ids.png", 3)


def test_label_preview_and_saved_shot(workspace, shot):
    path, mask = shot
    preview = app.label_preview(path, mask, 3)
    assert preview.size == (80, 64)
    assert tuple(np.asarray(preview)[20, 20]) != tuple(np.asarray(Image.open(path))[20, 20])
    saved = app.save_shot(workspace, path, mask, {0: "background", 1: "vessel", 2: "lesion"})
    assert saved.is_relative_to(workspace.root / "shots")
    np.testing.assert_array_equal(np.asarray(Image.open(saved.parent / "mask.png")), mask)
    assert json.loads((saved.parent / "labels.json").read_text()) == {"0": "background", "1": "vessel", "2": "lesion"}
    assert app.class_fractions(mask, {0: "background", 1: "vessel", 2: "lesion"}) == {
        "vessel": 600 / 5120, "lesion": 200 / 5120,
    }  # fmt: skip


# -- the working folder ---------------------------------------------------------------------------------------------------
def test_only_paths_inside_the_working_folder_are_trusted(workspace, shot, tmp_path_factory):
    path, _ = shot
    assert workspace.check_inside(path) == path.resolve()
    outside = tmp_path_factory.mktemp("outside") / "x.png"
    outside.write_bytes(b"x")
    with pytest.raises(LoSamValueError, match="not inside the app's working folder"):
        workspace.check_inside(outside)
    with pytest.raises(LoSamValueError, match="not inside"):
        workspace.check_inside(workspace.root / ".." / outside.parent.name / "x.png")
    with pytest.raises(DataError, match="does not exist"):
        workspace.check_inside(workspace.root / "nothing.png")
    first, second = workspace.new_folder("results"), workspace.new_folder("results")
    assert first != second and first.parent == second.parent == workspace.root / "results"


def test_a_working_folder_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(LoSamError, match="existing file"):
        app.Workspace(tmp_path / "file")


def test_bases_resolve_bundled_adapters_and_checkpoints(workspace, trained, tmp_path):
    folder = app.bundled_base("tiny", workspace)
    assert (folder / "model.safetensors").is_file() and folder.is_relative_to(workspace.root)
    assert app.bundled_base("tiny", workspace) == folder  # built once
    assert app.resolve_base("tiny", workspace) == (str(folder), None)
    result, _ = trained
    assert app.resolve_base(str(result.output_dir), workspace) == (str(folder), str(result.output_dir))
    assert app.resolve_base("facebook/sam-vit-base", workspace) == ("facebook/sam-vit-base", None)
    (tmp_path / "f").write_text("x")
    with pytest.raises(LoSamValueError, match="not a file"):
        app.resolve_base(str(tmp_path / "f"), workspace)
    with pytest.raises(LoSamValueError, match="unknown bundled encoder"):
        app.bundled_base("huge", workspace)


# -- training ---------------------------------------------------------------------------------------------------------------
def test_train_from_a_painted_mask_reports_each_step_and_writes_the_adapter(trained):
    result, seen = trained
    assert result.steps == STEPS and not result.interrupted
    assert [step for step, _ in seen] == list(range(1, STEPS + 1))
    assert all(np.isfinite(loss) for _, loss in seen)
    history = json.loads((result.output_dir / "history.json").read_text())
    np.testing.assert_allclose([r["loss"] for r in history], [loss for _, loss in seen], rtol=1e-6)
    for name in ("adapter_model.safetensors", "adapter_config.json", "preprocessor_config.json", "README.md"):
        assert (result.output_dir / name).is_file()
    pipe = LoSamPipeline.from_pretrained(result.output_dir, device="cpu")
    assert pipe.id2label == {0: "background", 1: "vessel", 2: "lesion"}


def test_an_empty_mask_or_a_wrong_size_is_refused_before_training(workspace, shot):
    path, mask = shot
    out = workspace.new_folder("runs")
    with pytest.raises(LoSamValueError, match="the mask is empty"):
        app.train_from_painted_mask(path, np.zeros_like(mask), {0: "b", 1: "v"}, out, workspace=workspace, base="tiny")
    with pytest.raises(DataError, match="the mask is"):
        app.train_from_painted_mask(path, mask[:10], {0: "b", 1: "v", 2: "l"}, out, workspace=workspace, base="tiny")
    with pytest.raises(LoSamValueError, match="unknown preset"):
        app.train_from_painted_mask(path, mask, ["b", "v", "l"], out, workspace=workspace, base="tiny", preset="x")
    with pytest.raises(TrainingError, match="no checkpoint to resume"):
        app.train_from_painted_mask(path, mask, ["b", "v", "l"], out, workspace=workspace, base="tiny", resume=True)
    assert not (out / "adapter_model.safetensors").exists()


def test_a_stopped_training_keeps_its_checkpoint_and_resumes_to_the_end(workspace, shot):
    path, mask = shot
    labels = {0: "background", 1: "vessel", 2: "lesion"}
    out = workspace.new_folder("runs")
    seen = []
    stopped = app.train_from_painted_mask(
        path, mask, labels, out, workspace=workspace, base="tiny", steps=4,
        on_step=lambda step, loss: seen.append(step), should_stop=lambda: len(seen) >= 2,
    )  # fmt: skip
    assert stopped.interrupted and stopped.steps == 2 and seen == [1, 2]
    assert json.loads((out / "checkpoint" / "state.json").read_text())["step"] == 2
    assert not (out / "adapter_model.safetensors").exists()
    resumed = app.train_from_painted_mask(
        path, mask, labels, out, workspace=workspace, base="tiny", steps=4, resume=True,
        on_step=lambda step, loss: seen.append(step),
    )  # fmt: skip
    assert resumed.steps == 4 and not resumed.interrupted and seen == [1, 2, 3, 4]
    assert (out / "adapter_model.safetensors").is_file()


def test_training_continues_an_adapter_with_the_same_classes(workspace, shot, trained):
    path, mask = shot
    result, _ = trained
    out = workspace.new_folder("runs")
    seen = []
    again = app.train_from_painted_mask(
        path, mask, {0: "background", 1: "vessel", 2: "lesion"}, out, workspace=workspace,
        base=str(result.output_dir), steps=1, on_step=lambda step, loss: seen.append(loss),
    )  # fmt: skip
    assert again.steps == 1 and (out / "adapter_model.safetensors").is_file()
    with pytest.raises(LoSamValueError, match="same classes"):
        app.train_from_painted_mask(
            path, (mask > 0).astype(np.uint8), {0: "background", 1: "other"}, workspace.new_folder("runs"),
            workspace=workspace, base=str(result.output_dir), steps=1,
        )  # fmt: skip


def test_a_training_job_runs_in_a_child_process_and_refuses_a_second(workspace, shot):
    path, mask = shot
    job = app.TrainingJob()
    out = workspace.new_folder("runs")
    request = dict(image=str(path), mask=mask, id2label={0: "background", 1: "vessel", 2: "lesion"}, output_dir=out,
                   workspace=workspace, base="tiny", steps=2)  # fmt: skip
    job.start(request)
    try:
        with pytest.raises(TrainingError, match="already running"):
            job.start(request)
        outcome = job.wait(timeout=300)
    finally:
        job.close()
    assert outcome == {"kind": "done", "steps": 2, "interrupted": False, "seconds": outcome["seconds"],
                       "output_dir": str(out)}  # fmt: skip
    assert [step for step, _ in job.history] == [1, 2]
    assert (out / "adapter_model.safetensors").is_file() and not job.running
    # a failure in the child comes back as one line, not a traceback
    job.start(dict(request, output_dir=workspace.new_folder("runs"), mask=np.zeros_like(mask)))
    try:
        outcome = job.wait(timeout=300)
    finally:
        job.close()
    assert outcome["kind"] == "error" and "the mask is empty" in outcome["message"] and "\n" not in outcome["message"]


# -- segmentation and zips ----------------------------------------------------------------------------------------------------
def test_segment_images_writes_masks_overlays_previews_and_a_summary(workspace, trained, shot, tmp_path):
    result, _ = trained
    path, _ = shot
    pipe = app.load_pipeline(str(result.output_dir))
    grey16 = tmp_path / "scan.tif"
    Image.fromarray((np.arange(48 * 40, dtype=np.uint16).reshape(48, 40) * 20)).save(grey16)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    out = workspace.new_folder("results")
    run = app.segment_images(pipe, [path, grey16, broken], out)
    assert [item["name"] for item in run.items] == ["eye", "scan"]
    assert len(run.failed) == 1 and "broken.png" in run.failed[0][0]
    for item in run.items:
        mask = np.asarray(Image.open(item["mask"]))
        image = Image.open(item["image"])
        assert image.mode == "RGB" and image.size == mask.shape[::-1] == Image.open(item["overlay"]).size
        assert item["fractions"] == app.class_fractions(mask, pipe.id2label)
    rows = run.table(pipe.id2label)
    assert rows[0][0] == "eye" and len(rows[0]) == 3
    tiled = app.segment_images(pipe, [path], workspace.new_folder("results"), tile=32, overlap=0.25)
    assert tiled.summary.rows[0]["tiles"] > 1
    archive = zipfile.ZipFile(app.zip_results(run))
    assert sorted(archive.namelist()) == [
        "masks/eye.png", "masks/scan.png", "overlays/eye.png", "overlays/scan.png", "summary.csv",
    ]  # fmt: skip
    assert "eye" in archive.read("summary.csv").decode()
    with pytest.raises(LoSamValueError, match="at least one image"):
        app.segment_images(pipe, [], out)


def test_server_folder_images_reads_a_folder_and_respects_the_root(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("x")
    assert app.server_folder_images(str(tmp_path)) == [tmp_path / "a.png"]
    assert app.server_folder_images(str(tmp_path), root=tmp_path.parent) == [tmp_path / "a.png"]
    with pytest.raises(LoSamValueError, match="only folders inside"):
        app.server_folder_images(str(tmp_path), root=tmp_path / "sub")
    with pytest.raises(DataError, match="no such folder"):
        app.server_folder_images(str(tmp_path / "missing"))
    with pytest.raises(LoSamValueError, match="name a folder"):
        app.server_folder_images("  ")


def test_adapter_zip_carries_the_bundled_encoder_and_loads_back(workspace, trained, shot):
    result, _ = trained
    path, _ = shot
    target = workspace.folder("exports") / "adapter.zip"
    app.zip_adapter(result.output_dir, target, workspace)
    names = set(zipfile.ZipFile(target).namelist())
    assert {"adapter_config.json", "adapter_model.safetensors", "preprocessor_config.json", "README.md",
            "base-encoder/config.json", "base-encoder/model.safetensors"} <= names  # fmt: skip
    assert not any(n.startswith("checkpoint") for n in names)
    folder, base = app.load_adapter_zip(target, workspace)
    assert folder.is_relative_to(workspace.root) and base == str(folder / "base-encoder")
    before = LoSamPipeline.from_pretrained(result.output_dir, device="cpu")(str(path)).label_map
    after = app.load_pipeline(str(folder), base)(str(path)).label_map
    np.testing.assert_array_equal(before, after)
    with pytest.raises(LoSamError, match="no trained adapter"):
        app.zip_adapter(workspace.new_folder("runs"), workspace.folder("exports") / "x.zip")


def test_an_adapter_zip_with_strange_members_writes_nothing_outside(workspace, trained, tmp_path):
    result, _ = trained
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as archive:
        archive.write(result.output_dir / "adapter_config.json", "adapter_config.json")
        archive.write(result.output_dir / "adapter_model.safetensors", "adapter_model.safetensors")
        archive.writestr("../../escaped.txt", "x")
        archive.writestr("/abs.txt", "x")
    folder, base = app.load_adapter_zip(evil, workspace)
    assert base is None and sorted(p.name for p in folder.iterdir()) == ["adapter_config.json",
                                                                         "adapter_model.safetensors"]
    assert not (workspace.root.parent / "escaped.txt").exists()
    (tmp_path / "junk.zip").write_bytes(b"junk")
    with pytest.raises(LoSamError, match="not a readable zip"):
        app.load_adapter_zip(tmp_path / "junk.zip", workspace)
    with zipfile.ZipFile(tmp_path / "empty.zip", "w") as archive:
        archive.writestr("hello.txt", "x")
    with pytest.raises(LoSamError, match="not an adapter zip"):
        app.load_adapter_zip(tmp_path / "empty.zip", workspace)


def test_zip_folder_names_members_relative_to_the_folder(tmp_path):
    (tmp_path / "in" / "sub").mkdir(parents=True)
    (tmp_path / "in" / "a.txt").write_text("a")
    (tmp_path / "in" / "sub" / "b.txt").write_text("b")
    (tmp_path / "in" / ".hidden").write_text("h")
    out = app.zip_folder(tmp_path / "in", tmp_path / "out.zip")
    assert sorted(zipfile.ZipFile(out).namelist()) == ["a.txt", "sub/b.txt"]
    assert not list(tmp_path.glob(".out.*"))  # no temporary file left
    with pytest.raises(DataError, match="does not exist"):
        app.zip_folder(tmp_path / "missing", tmp_path / "x.zip")


# -- the Hub switch and the command line ---------------------------------------------------------------------------------------
def test_hub_push_is_off_without_a_token_or_offline(monkeypatch, trained):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    allowed, note = app.hub_status()
    assert not allowed and "offline" in note
    with pytest.raises(LoSamValueError, match="offline"):
        app.push(trained[0].output_dir, "me/adapter")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    allowed, note = app.hub_status()
    assert not allowed and "no Hugging Face token" in note
    monkeypatch.setattr("huggingface_hub.get_token", lambda: "hf_x")
    assert app.hub_status()[0]


def test_the_app_command_names_the_extra_when_gradio_is_missing(monkeypatch, capsys, tmp_path):
    from losam_peft.cli import main

    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio now raises ImportError
    assert main(["app", "--workdir", str(tmp_path / "work")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "pip install 'losam-peft[app]'" in err and err.count("\n") == 1
    assert not (tmp_path / "work").exists()  # refused before anything was written


def test_the_app_command_line_options():
    from losam_peft.cli import build_parser

    args = build_parser().parse_args(["app"])
    assert (args.host, args.port, args.share, args.base) == ("127.0.0.1", 7860, False, "demo")
    args = build_parser().parse_args(["app", "--host", "0.0.0.0", "--port", "8000", "--share", "--base", "tiny"])
    assert (args.host, args.port, args.share, args.base) == ("0.0.0.0", 8000, True, "tiny")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["app", "--port", "70000"])


def test_a_base_or_adapter_named_in_the_page_respects_the_folder_root(workspace, tmp_path):
    inside, outside = tmp_path / "models" / "sam", tmp_path / "elsewhere"
    inside.mkdir(parents=True)
    outside.mkdir()
    assert app.check_server_path(str(outside), None, workspace, "base") == str(outside)  # no root: any folder
    assert app.check_server_path(str(inside), tmp_path / "models", workspace, "base") == str(inside)
    assert app.check_server_path("facebook/sam-vit-base", tmp_path / "models", workspace, "base")
    assert app.check_server_path("tiny", tmp_path / "models", workspace, "base") == "tiny"
    assert app.check_server_path(" ", tmp_path / "models", workspace, "base") is None
    with pytest.raises(LoSamValueError, match="only adapters inside"):
        app.check_server_path(str(outside), tmp_path / "models", workspace, "adapter")
