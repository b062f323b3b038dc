"""The page of ``losam app``: Gradio components wired to :mod:`losam_peft.app` (the only module that imports Gradio).

Four tabs follow the clinician's path: **Label** (upload an image, paint the classes with brush and eraser or upload
a mask, see the overlay), **Train** (base, preset, steps; progress, live loss, cancel and resume), **Segment**
(uploads or a server-side folder; image / overlay / mask side by side with the class area fractions; tiled mode; a
zip of masks, overlays and ``summary.csv``) and **Take it home** (the adapter as a zip, the Hub push when a token is
present). Long steps run on Gradio's queue; one training at a time per app (:class:`losam_peft.app.TrainingJob`).

Gradio is told, before it is imported, to keep its uploads and cache in the app's working folder
(``GRADIO_TEMP_DIR``) and to send no analytics; the page uses the browser's own fonts, so nothing needs a network.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
import traceback
from collections import OrderedDict
from pathlib import Path

import numpy as np

from . import app
from .errors import LoSamError, LoSamValueError, TrainingError
from .image_processing_losam import to_rgb8
from .training import PRESETS

__all__ = ["build_app", "launch", "require_gradio"]

logger = logging.getLogger(__name__)

CSS = """
#losam-status-label p, #losam-train-status p, #losam-segment-status p, #losam-home-status p { margin: 0.2em 0; }
"""
#: pipelines kept loaded (the latest few adapters segmented with)
PIPELINES_KEPT = 2


def require_gradio() -> None:
    """Refuse early (before anything is written) when the ``[app]`` extra is not installed."""
    try:
        found = importlib.util.find_spec("gradio") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise LoSamError(f"losam app needs Gradio, which is not installed; {app.EXTRA_HINT}")


def _gradio(workspace: app.Workspace):
    """Gradio, imported after its environment points into the working folder and turns analytics off."""
    os.environ["GRADIO_TEMP_DIR"] = str(workspace.uploads)
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    try:
        import gradio as gr
    except ImportError as err:
        raise LoSamError(f"losam app needs Gradio, which cannot be imported ({err}); {app.EXTRA_HINT}") from None
    return gr


def _message(err: BaseException) -> str:
    """One line for the page; a traceback only in the server's log, and only for what is not a LoSamError."""
    if isinstance(err, LoSamError):
        return "**Error:** " + " ".join(str(err).split())
    logger.error("unexpected error in the app:\n%s", "".join(traceback.format_exception(err)))
    return f"**Error:** {type(err).__name__}: {' '.join(str(err).split())}"


class _Pages:
    """The app's shared state: the working folder, the one training job and the loaded pipelines."""

    def __init__(self, workspace: app.Workspace, base: str, folder_root: str | None):
        self.workspace = workspace
        self.base = base
        self.folder_root = folder_root
        self.job = app.TrainingJob()
        self.pipelines: OrderedDict = OrderedDict()
        self.lock = threading.Lock()

    def pipeline(self, adapter: str, base: str | None):
        key = (str(adapter), base or None)
        with self.lock:
            if key in self.pipelines:
                self.pipelines.move_to_end(key)
                return self.pipelines[key]
        pipe = app.load_pipeline(str(adapter), base)
        with self.lock:
            self.pipelines[key] = pipe
            while len(self.pipelines) > PIPELINES_KEPT:
                self.pipelines.popitem(last=False)
        return pipe


def _uploaded(pages: _Pages, file) -> Path:
    """The server path of an upload, trusted only inside the working folder."""
    path = file if isinstance(file, (str, os.PathLike)) else getattr(file, "name", None) or getattr(file, "path", None)
    if path is None:
        raise LoSamValueError("no file was uploaded")
    return pages.workspace.check_inside(path)


def _class_names(id2label: dict) -> list[str]:
    """The class picker's choices: background first (it paints over an uploaded mask), then the user's classes."""
    return [id2label[i] for i in range(len(id2label))]


def _brush(gr, id2label: dict, chosen: str | None = None, size: int | str = "auto"):
    colours = app.class_colours(len(id2label))
    names = _class_names(id2label)
    index = names.index(chosen) if chosen in names else 1
    return gr.Brush(
        colors=[(c, app.STROKE_OPACITY) for c in colours],
        default_color=(colours[index], app.STROKE_OPACITY),
        color_mode="fixed",
        default_size=size,
    )


def _brush_size(shape) -> int:
    """A brush about 1/60 of the image's longer side (thin structures: vessels, lesions)."""
    return max(2, round(max(shape[:2]) / 60))


def _legend(id2label: dict) -> str:
    colours = app.class_colours(len(id2label))
    items = [f'<span style="color:{c}">&#9632;</span> {id2label[i]}' for i, c in enumerate(colours) if i]
    return ("Brush colours: " + " · ".join(items) + ". Unpainted pixels are background; the eraser removes paint; "
            "the black background brush paints over an uploaded mask.")  # fmt: skip


def build_app(workspace: app.Workspace, *, base: str = app.DEFAULT_BASE, folder_root: str | None = None):
    """The page as a ``gr.Blocks`` (not launched)."""
    gr = _gradio(workspace)
    import pandas as pd

    pages = _Pages(workspace, base, folder_root)
    default_labels = app.parse_labels("vessel")
    push_allowed, push_note = app.hub_status()

    def new_session() -> dict:
        return {"image": None, "size": None, "base_mask": None, "adapter": None, "adapter_base": None, "last": None}

    with gr.Blocks(title="LoSAM: label, train, segment", analytics_enabled=False) as page:
        session = gr.State(new_session())
        gr.Markdown(
            "## LoSAM — one labelled image to a segmentation adapter\n"
            "1 · label one image → 2 · train → 3 · segment → 4 · take the adapter home. Everything runs on this "
            f"machine; files stay in `{workspace.root}`."
        )
        with gr.Tabs():
            # -- 1 label ------------------------------------------------------------------------------------------
            with gr.Tab("1 · Label", id="label"):
                with gr.Row():
                    with gr.Column(scale=1):
                        image_file = gr.File(label="Image (fundus, OCTA, OCT: PNG, JPEG, TIFF…)", elem_id="losam-image")
                        labels = gr.Textbox(value="vessel", label="Classes (comma-separated; background is class 0)",
                                            elem_id="losam-labels")  # fmt: skip
                        picker = gr.Radio(choices=_class_names(default_labels), value="vessel",
                                          label="Class to paint", elem_id="losam-class")  # fmt: skip
                        legend = gr.Markdown(_legend(default_labels))
                        mask_file = gr.File(label="…or upload a mask file (0/255, class ids, or losam's palette)",
                                            elem_id="losam-mask")  # fmt: skip
                    with gr.Column(scale=2):
                        editor = gr.ImageEditor(
                            label="Paint the mask (brush, eraser)", type="numpy", format="png", image_mode="RGBA",
                            sources=[], layers=False, transforms=[], brush=_brush(gr, default_labels),
                            eraser=gr.Eraser(), elem_id="losam-editor", height=520,
                        )  # fmt: skip
                    with gr.Column(scale=2):
                        preview = gr.Image(label="Overlay", type="pil", interactive=False, elem_id="losam-preview",
                                           height=520)  # fmt: skip
                label_status = gr.Markdown("Upload an image to start.", elem_id="losam-status-label")

            # -- 2 train ------------------------------------------------------------------------------------------
            with gr.Tab("2 · Train", id="train"):
                with gr.Row():
                    base_box = gr.Dropdown(
                        choices=[*app.BUNDLED_BASES, "facebook/sam-vit-base"], value=base, allow_custom_value=True,
                        label="Base: a bundled encoder (random weights, no download), a SAM checkpoint (folder or "
                              "Hub id), or an adapter folder to continue", elem_id="losam-base",
                    )  # fmt: skip
                    preset = gr.Dropdown(choices=list(PRESETS), value="default", label="Preset", elem_id="losam-preset")
                    steps = gr.Number(value=app.DEFAULT_STEPS, precision=0, minimum=1, maximum=100000, label="Steps",
                                      elem_id="losam-steps")  # fmt: skip
                with gr.Row():
                    train_button = gr.Button("Train", variant="primary", elem_id="losam-train")
                    cancel_button = gr.Button("Cancel (keeps the last checkpoint)", elem_id="losam-cancel")
                    resume_button = gr.Button("Resume the last run", elem_id="losam-resume")
                train_status = gr.Markdown("Label an image, then train.", elem_id="losam-train-status")
                loss_plot = gr.LinePlot(
                    pd.DataFrame({"step": [], "loss": []}), x="step", y="loss", title="training loss",
                    elem_id="losam-loss", height=260,
                )  # fmt: skip

            # -- 3 segment ----------------------------------------------------------------------------------------
            with gr.Tab("3 · Segment", id="segment"):
                with gr.Row():
                    with gr.Column():
                        adapter_box = gr.Textbox(label="Adapter (blank: the one trained or loaded here; or a folder "
                                                       "on the server / a Hub id)", elem_id="losam-adapter")  # fmt: skip
                        adapter_base = gr.Textbox(label="Its base, if not the one it names (optional)",
                                                  elem_id="losam-adapter-base")  # fmt: skip
                        adapter_zip = gr.File(label="…or upload an adapter zip", elem_id="losam-adapter-zip")
                    with gr.Column():
                        images = gr.File(label="Images to segment", file_count="multiple", elem_id="losam-images")
                        folder = gr.Textbox(label="…or a folder on the server (read only)", elem_id="losam-folder")
                        with gr.Row():
                            tiled = gr.Checkbox(label="Tiled (large images at native resolution)", value=False,
                                                elem_id="losam-tiled")  # fmt: skip
                            tile = gr.Number(value=512, precision=0, minimum=16, label="Tile (px)", elem_id="losam-tile")
                            overlap = gr.Slider(0.0, 0.9, value=0.25, step=0.05, label="Overlap")
                segment_button = gr.Button("Segment", variant="primary", elem_id="losam-segment")
                segment_status = gr.Markdown("", elem_id="losam-segment-status")
                gallery = gr.Gallery(label="image · overlay · mask", columns=3, height="auto", elem_id="losam-gallery",
                                     object_fit="contain")  # fmt: skip
                fractions = gr.Dataframe(label="Area of each class (percent of the image)", interactive=False,
                                         elem_id="losam-fractions")  # fmt: skip
                results_zip = gr.File(label="Masks (PNG), overlays and summary.csv", interactive=False,
                                      elem_id="losam-results-zip")  # fmt: skip

            # -- 4 take it home -----------------------------------------------------------------------------------
            with gr.Tab("4 · Take it home", id="home"):
                adapter_zip_button = gr.Button("Zip the adapter", variant="primary", elem_id="losam-zip-adapter")
                adapter_download = gr.File(label="Adapter (config, weights, image processor, model card)",
                                           interactive=False, elem_id="losam-adapter-download")  # fmt: skip
                gr.Markdown(
                    "Load it later with `LoSamPipeline.from_pretrained(folder)` or `losam predict --adapter folder`. "
                    "An adapter trained on a bundled encoder carries that encoder in `base-encoder/` (pass "
                    "`base=folder/base-encoder`); it has random weights: real use starts from a SAM checkpoint."
                )
                gr.Markdown(push_note, elem_id="losam-hub-note")
                with gr.Row():
                    repo_id = gr.Textbox(label="Hub repository (ORG/NAME)", interactive=push_allowed)
                    base_repo = gr.Textbox(label="Hub repository of the base (for a local base)",
                                           interactive=push_allowed)  # fmt: skip
                    private = gr.Checkbox(label="private", value=True, interactive=push_allowed)
                push_button = gr.Button("Push to the Hub", interactive=push_allowed, elem_id="losam-push")
                home_status = gr.Markdown("", elem_id="losam-home-status")

        # -- handlers -----------------------------------------------------------------------------------------------
        def current_labels(text):
            return app.parse_labels(text)

        def on_labels(text, chosen):
            try:
                id2label = current_labels(text)
            except LoSamError as err:
                return gr.update(), gr.update(), gr.update(), _message(err)
            names = _class_names(id2label)
            chosen = chosen if chosen in names else names[1]
            return (gr.update(choices=names, value=chosen), gr.ImageEditor(brush=_brush(gr, id2label, chosen)),
                    _legend(id2label), "")  # fmt: skip

        def on_class(text, chosen, state):
            try:
                size = _brush_size(state["size"]) if state.get("size") else "auto"
                return gr.ImageEditor(brush=_brush(gr, current_labels(text), chosen, size))
            except LoSamError:
                return gr.update()

        def on_image(file, text, chosen, state):
            state = dict(state)
            try:
                path = _uploaded(pages, file)
                rgb = to_rgb8(path)
                id2label = current_labels(text)
            except Exception as err:
                return gr.update(), gr.update(), state, _message(err)
            state.update(image=str(path), size=rgb.shape[:2], base_mask=None)
            height, width = rgb.shape[:2]
            editor_value = gr.ImageEditor(value={"background": rgb, "layers": [], "composite": rgb},
                                          brush=_brush(gr, id2label, chosen, _brush_size(rgb.shape)))  # fmt: skip
            return (editor_value, rgb, state,
                    f"{path.name}: {width}×{height} pixels. Paint each class with its colour, or upload a mask.")  # fmt: skip

        def on_mask(file, text, state):
            state = dict(state)
            if file is None:
                return gr.update(), gr.update(), state, ""
            try:
                if not state.get("image"):
                    raise LoSamValueError("upload the image first, then its mask")
                id2label = current_labels(text)
                mask = app.read_mask_file(_uploaded(pages, file), len(id2label), size=state["size"])
                shown = np.asarray(app.label_preview(state["image"], mask, len(id2label)))
            except Exception as err:
                return gr.update(), gr.update(), state, _message(err)
            state["base_mask"] = mask
            value = {"background": shown, "layers": [], "composite": shown}
            return (value, shown, state,
                    _describe(mask, id2label) + " (uploaded; paint to correct it)")  # fmt: skip

        def painted(value, text, state) -> tuple[np.ndarray, dict]:
            if not state.get("image"):
                raise LoSamValueError("upload an image in 1 · Label first")
            id2label = current_labels(text)
            mask = app.mask_from_editor(value or {}, len(id2label), size=state["size"], base=state.get("base_mask"))
            return mask, id2label

        def on_paint(value, text, state):
            if not state.get("image"):
                return gr.update(), gr.update()
            try:
                mask, id2label = painted(value, text, state)
                return app.label_preview(state["image"], mask, len(id2label)), _describe(mask, id2label)
            except Exception as err:
                return gr.update(), _message(err)

        def _describe(mask, id2label) -> str:
            parts = [f"{name} {100 * share:.2f}%" for name, share in app.class_fractions(mask, id2label).items()]
            return "Painted: " + ", ".join(parts)

        def plot(history):
            return pd.DataFrame({"step": [s for s, _ in history], "loss": [v for _, v in history]})

        def follow(state, request, progress):
            """Yield (status, plot, state) while the job runs."""
            total = int(request["steps"])
            job = pages.job
            while True:
                events = job.poll(timeout=1.0)
                step = job.history[-1][0] if job.history else 0
                if job.outcome is None:
                    progress((min(step, total), total), desc="training", unit="steps")
                    if events:
                        loss = job.history[-1][1] if job.history else float("nan")
                        yield f"Training: step {step} of {total}, loss {loss:.4f}", plot(job.history), state
                    continue
                outcome = job.outcome
                if outcome["kind"] == "error":
                    yield _message(LoSamError(outcome["message"])), plot(job.history), state
                elif outcome["interrupted"]:
                    yield (f"Cancelled after step {outcome['steps']} of {total}: its checkpoint is kept in "
                           f"`{outcome['output_dir']}/checkpoint`. **Resume the last run** continues it.",
                           plot(job.history), state)  # fmt: skip
                else:
                    state = dict(state, adapter=outcome["output_dir"], adapter_base=None)
                    yield (f"Done: {outcome['steps']} steps in {outcome['seconds']:.0f} s. The adapter is in "
                           f"`{outcome['output_dir']}`; segment with it in 3 · Segment.",
                           plot(job.history), state)  # fmt: skip
                return

        def on_train(value, text, base_name, preset_name, step_count, state, progress=gr.Progress()):
            state = dict(state)
            try:
                mask, id2label = painted(value, text, state)
                if not (mask > 0).any():
                    raise LoSamValueError("the mask is empty: paint at least one stroke of a class first")
                if pages.job.running:
                    raise TrainingError("a training is already running in this app; wait for it or cancel it")
                if step_count is None or int(step_count) < 1:
                    raise LoSamValueError("steps must be a positive whole number")
                chosen_base = app.check_server_path(base_name, pages.folder_root, pages.workspace, "base")
                image = app.save_shot(pages.workspace, state["image"], mask, id2label)
                request = dict(image=str(image), mask=mask, id2label=id2label,
                               output_dir=str(pages.workspace.new_folder("runs")), workspace=pages.workspace,
                               base=(chosen_base or app.DEFAULT_BASE), preset=preset_name or "default",
                               steps=int(step_count))  # fmt: skip
                pages.job.start(request)
            except Exception as err:
                yield _message(err), gr.update(), state
                return
            state["last"] = request
            yield f"Training started on `{request['base']}` ({request['steps']} steps)…", plot([]), state
            yield from follow(state, request, progress)

        def on_resume(state, progress=gr.Progress()):
            state = dict(state)
            request = state.get("last")
            try:
                if not request:
                    raise LoSamValueError("no training to resume in this session: train first")
                request = dict(request, resume=True)
                pages.job.start(request)
            except Exception as err:
                yield _message(err), gr.update(), state
                return
            yield "Resuming from the last checkpoint…", gr.update(), state
            yield from follow(state, request, progress)

        def on_cancel():
            if pages.job.cancel():
                return "Stopping after the current step; the checkpoint is kept…"
            return "No training is running."

        def on_adapter_zip(file, state):
            state = dict(state)
            if file is None:
                return state, ""
            try:
                folder_path, zipped_base = app.load_adapter_zip(_uploaded(pages, file), pages.workspace)
            except Exception as err:
                return state, _message(err)
            state.update(adapter=str(folder_path), adapter_base=zipped_base)
            return state, f"Adapter loaded from {Path(str(file)).name}; segment with it below."

        def on_segment(adapter_text, base_text, files, folder_text, use_tiles, tile_size, overlap_value, state):
            try:
                adapter = (adapter_text or "").strip() or state.get("adapter")
                base_name = (base_text or "").strip() or (None if (adapter_text or "").strip() else
                                                          state.get("adapter_base"))  # fmt: skip
                if not adapter:
                    raise LoSamValueError("train an adapter first, upload its zip, or name one")
                root = pages.folder_root
                adapter = app.check_server_path(adapter, root, pages.workspace, "adapter")
                base_name = app.check_server_path(base_name, root, pages.workspace, "base")
                inputs = [_uploaded(pages, f) for f in (files or [])]
                if (folder_text or "").strip():
                    inputs += app.server_folder_images(folder_text, pages.folder_root)
                pipe = pages.pipeline(adapter, base_name)
                tile_px = int(tile_size) if use_tiles else None
                run = app.segment_images(pipe, inputs, pages.workspace.new_folder("results"), tile=tile_px,
                                         overlap=float(overlap_value))  # fmt: skip
                archive = app.zip_results(run)
            except Exception as err:
                return gr.update(value=None), gr.update(value=None), gr.update(value=None), _message(err)
            shown = []
            for item in run.items:
                shown += [(str(item["image"]), f"{item['name']}: image"), (str(item["overlay"]), "overlay"),
                          (str(item["mask"]), "mask")]  # fmt: skip
            names = [pipe.id2label[i] for i in range(1, pipe.num_labels)]
            table = pd.DataFrame(run.table(pipe.id2label), columns=["image", *[f"{n} %" for n in names]])
            note = f"{len(run.items)} image(s) segmented"
            if run.failed:
                note += "; skipped: " + "; ".join(f"{Path(p).name}: {why}" for p, why in run.failed)
            return shown, table, str(archive), note + "."

        def on_zip_adapter(state):
            try:
                if not state.get("adapter"):
                    raise LoSamValueError("train an adapter (2 · Train) or load one first")
                target = pages.workspace.folder("exports") / f"{Path(state['adapter']).name}-adapter.zip"
                return str(app.zip_adapter(state["adapter"], target, pages.workspace)), "Adapter zipped."
            except Exception as err:
                return gr.update(value=None), _message(err)

        def on_push(state, repo, base_repo_id, is_private):
            try:
                if not state.get("adapter"):
                    raise LoSamValueError("train an adapter (2 · Train) or load one first")
                url = app.push(state["adapter"], repo, private=bool(is_private), base_repo_id=base_repo_id or None)
            except Exception as err:
                return _message(err)
            return f"Pushed to {url}"

        labels.change(on_labels, [labels, picker], [picker, editor, legend, label_status])
        picker.change(on_class, [labels, picker, session], editor)
        image_file.upload(on_image, [image_file, labels, picker, session], [editor, preview, session, label_status])
        mask_file.upload(on_mask, [mask_file, labels, session], [editor, preview, session, label_status])
        editor.change(on_paint, [editor, labels, session], [preview, label_status], trigger_mode="always_last",
                      concurrency_limit=None)  # fmt: skip
        train_button.click(on_train, [editor, labels, base_box, preset, steps, session],
                           [train_status, loss_plot, session], concurrency_limit=1, concurrency_id="train")  # fmt: skip
        resume_button.click(on_resume, session, [train_status, loss_plot, session], concurrency_limit=1,
                            concurrency_id="train")  # fmt: skip
        cancel_button.click(on_cancel, None, train_status, concurrency_limit=None)
        adapter_zip.upload(on_adapter_zip, [adapter_zip, session], [session, segment_status])
        segment_button.click(
            on_segment, [adapter_box, adapter_base, images, folder, tiled, tile, overlap, session],
            [gallery, fractions, results_zip, segment_status], concurrency_limit=1, concurrency_id="segment",
        )  # fmt: skip
        adapter_zip_button.click(on_zip_adapter, session, [adapter_download, home_status])
        push_button.click(on_push, [session, repo_id, base_repo, private], home_status)
    page._losam_pages = pages
    return page


def launch(
    workdir: str | os.PathLike = "losam-app",
    *,
    host: str = "127.0.0.1",
    port: int = 7860,
    share: bool = False,
    base: str = app.DEFAULT_BASE,
    folder_root: str | None = None,
    block: bool = True,
):
    """Build the page and serve it (``http://host:port``); returns the ``gr.Blocks`` when ``block`` is False."""
    require_gradio()
    workspace = app.Workspace(workdir)
    gr = _gradio(workspace)
    page = build_app(workspace, base=base, folder_root=folder_root)
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "monospace"])  # fmt: skip
    print(f"losam app: working folder {workspace.root}", flush=True)
    try:
        page.queue(default_concurrency_limit=1).launch(
            server_name=host, server_port=int(port), share=share, prevent_thread_lock=not block, theme=theme,
            css=CSS, footer_links=[], quiet=False,
            # what the page shows or offers for download: segmentations and zips (uploads are Gradio's own cache)
            allowed_paths=[str(workspace.folder("results")), str(workspace.folder("exports"))],
        )  # fmt: skip
    except OSError as err:
        raise LoSamError(f"cannot serve the app on {host}:{port} ({err}); choose another --port or --host") from None
    finally:
        if block:
            page._losam_pages.job.close()
    return page
