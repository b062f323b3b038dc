"""Sharing LoSAM adapters on the Hugging Face Hub: ``push_adapter`` and ``find_adapters``.

Both use huggingface_hub's own API (``HfApi.create_repo``/``upload_folder`` and ``HfApi.list_models`` filtered by
the ``losam`` tag that every card written by :mod:`losam_peft.model_card` carries, plus the modality and task tags).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from .adapters import read_adapter_config
from .constants import ADAPTER_CONFIG_NAME, ADAPTER_PICKLE_NAME, ADAPTER_WEIGHTS_NAME, CARD_NAME, IMAGE_PROCESSOR_NAME
from .data.tags import normalise_modality, normalise_task
from .errors import AdapterFolderError, HubError, LoSamValueError
from .loading import CheckpointError
from .model_card import ADAPTER_PLACEHOLDER, is_hub_id

logger = logging.getLogger(__name__)

LOSAM_TAG = "losam"
REQUIRED_FILES = (ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, CARD_NAME)
OPTIONAL_FILES = (IMAGE_PROCESSOR_NAME,)
KNOWN_MODALITIES = ("fundus", "octa", "oct")
KNOWN_TASKS = ("vessels", "lesions", "layers")


def is_connection_error(err: BaseException) -> bool:
    """A failure to reach the Hub: OS-level socket errors and the HTTP client's own transport errors (httpx's
    ``ConnectError``, ``TimeoutException``… are not ``OSError``)."""
    if isinstance(err, OSError):
        return True
    for cls in type(err).__mro__:
        module = cls.__module__ or ""
        if module.split(".")[0].startswith(("httpx", "httpcore", "requests", "urllib3")) and cls.__name__.endswith(
            ("ConnectError", "ConnectionError", "TimeoutException", "Timeout", "NetworkError", "TransportError")
        ):
            return True
    return False


def check_adapter_folder(folder: str | os.PathLike) -> Path:
    """Make sure ``folder`` holds a LoSAM adapter with weights and a model card; a clear error per problem."""

    folder = Path(folder).expanduser()
    if not folder.exists():
        raise AdapterFolderError(f"{folder}: no such folder")
    if not folder.is_dir():
        raise AdapterFolderError(f"{folder} is a file; pass the adapter folder written by save_pretrained")
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        hints = []
        if ADAPTER_WEIGHTS_NAME in missing and (folder / ADAPTER_PICKLE_NAME).is_file():
            hints.append(
                "it has adapter_model.bin, which losam-peft neither loads nor uploads; re-save with safetensors"
            )
        if CARD_NAME in missing and len(missing) == 1:
            hints.append(
                "write a model card first: losam_peft.model_card.write_model_card(folder, "
                "losam_peft.adapters.read_adapter_config(folder), metrics=..., training=...)"
            )
        raise AdapterFolderError(
            f"{folder} is not a complete LoSAM adapter: missing {', '.join(missing)}"
            + (f" ({'; '.join(hints)})" if hints else "")
        )
    try:
        read_adapter_config(str(folder))
    except CheckpointError as err:
        raise AdapterFolderError(str(err)) from None
    from huggingface_hub import ModelCard

    try:
        card = ModelCard.load(folder / CARD_NAME)
    except Exception as err:
        raise AdapterFolderError(
            f"{folder / CARD_NAME}: the model card's YAML header cannot be parsed ({err})"
        ) from None
    if LOSAM_TAG not in (card.data.tags or []):
        logger.warning("%s has no %r tag: find_adapters() will not list it", folder / CARD_NAME, LOSAM_TAG)
    return folder


def push_adapter(
    folder: str | os.PathLike,
    repo_id: str,
    private: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
    revision: str | None = None,
    base_repo_id: str | None = None,
    license: str | None = None,
) -> str:
    """Upload an adapter folder (config, safetensors weights, model card, image processor) to ``repo_id``.

    The repository is created if needed (``private`` applies only then). The card's loading snippets, written with a
    placeholder before the repository was known, are filled in with ``repo_id`` in the uploaded copy; the local
    folder is not changed. Returns the repository's URL.

    An adapter whose base is a local folder would not load for anyone else: it is refused unless ``base_repo_id``
    names that base's Hub repository, which then goes into the uploaded ``adapter_config.json`` and card.
    ``license`` sets the uploaded card's licence (the local card keeps its own).
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import (
        HfHubHTTPError,
        HFValidationError,
        OfflineModeIsEnabled,
    )
    from huggingface_hub.utils import validate_repo_id

    folder = check_adapter_folder(folder)
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise LoSamValueError(f"{repo_id!r} is not a valid Hub repository id (expected ORG/NAME): {err}") from None
    if "/" not in repo_id:
        raise LoSamValueError(f"repo_id must be ORG/NAME (or USER/NAME), got {repo_id!r}")

    base = read_adapter_config(str(folder)).base_model_name_or_path
    local_base = bool(base) and (os.path.isabs(str(base)) or Path(str(base)).expanduser().exists())
    if base_repo_id is not None and not is_hub_id(base_repo_id):
        raise LoSamValueError(f"base_repo_id must be a Hub repository id (ORG/NAME), got {base_repo_id!r}")
    if local_base and base_repo_id is None:
        raise LoSamValueError(
            f"{folder}: the adapter's base is the local folder {base}, which nobody else has; say which Hub "
            "repository holds that base with base_repo_id (--base-repo-id), e.g. facebook/sam-vit-base"
        )
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="losam-push-") as staging:
        staging_path = Path(staging)
        for name in REQUIRED_FILES + OPTIONAL_FILES:
            source = folder / name
            if source.is_file():
                shutil.copy2(source, staging_path / name)
        if base_repo_id is not None:
            _rebase(staging_path, str(base) if base else None, base_repo_id)
        card_path = staging_path / CARD_NAME
        text = card_path.read_text(encoding="utf-8")
        if ADAPTER_PLACEHOLDER in text:
            card_path.write_text(text.replace(ADAPTER_PLACEHOLDER, repo_id), encoding="utf-8")
        if license:
            _relicense(card_path, license)
        try:
            repo_url = api.create_repo(repo_id, private=private, repo_type="model", exist_ok=True)
            commit = api.upload_folder(
                repo_id=repo_id,
                folder_path=staging_path,
                repo_type="model",
                revision=revision,
                commit_message=commit_message or "Upload LoSAM adapter",
            )
        except OfflineModeIsEnabled:
            raise HubError("cannot push: offline mode is on (HF_HUB_OFFLINE=1); unset it to upload") from None
        except HfHubHTTPError as err:
            status = getattr(getattr(err, "response", None), "status_code", None)
            if status in (401, 403):
                raise HubError(
                    f"the Hub refused the upload to {repo_id} (HTTP {status}): log in with `hf auth login` or pass a "
                    "token with write access to that namespace"
                ) from None
            raise HubError(f"the upload to {repo_id} failed: {err}") from None
        except Exception as err:
            if not is_connection_error(err):
                raise
            raise HubError(f"cannot reach the Hub to upload {repo_id} ({type(err).__name__}: {err})") from None
    logger.info("uploaded %s to %s (%s)", folder, repo_url, getattr(commit, "commit_url", commit))
    return str(repo_url)


def _relicense(card_path: Path, license: str) -> None:
    """Set the staged card's YAML ``license`` and its licence line."""
    import re

    from huggingface_hub import ModelCard

    card = ModelCard.load(card_path)
    card.data.license = license
    text = re.sub(r"Licence of this adapter: [^\n]*", f"Licence of this adapter: `{license}`.", card.text)
    ModelCard(f"---\n{card.data.to_yaml()}\n---\n{text}").save(card_path)


def _rebase(staging: Path, old: str | None, repo_id: str) -> None:
    """Name the Hub base in the staged copy's adapter config and card (the local folder stays as it is)."""
    import json

    from huggingface_hub import ModelCard

    config_path = staging / ADAPTER_CONFIG_NAME
    data = json.loads(config_path.read_text())
    data["base_model_name_or_path"] = repo_id
    config_path.write_text(json.dumps(data, indent=2))
    card = ModelCard.load(staging / CARD_NAME)
    card.data.base_model = repo_id
    text = card.text.replace(old, repo_id) if old else card.text
    ModelCard(f"---\n{card.data.to_yaml()}\n---\n{text}").save(staging / CARD_NAME)


def find_adapters(
    modality: str | None = None,
    task: str | None = None,
    search: str | None = None,
    limit: int = 50,
    token: str | None = None,
    sort: str = "downloads",
) -> list[dict]:
    """LoSAM adapters on the Hub: models tagged ``losam`` (and the modality/task tags, when given).

    Returns one dict per repository: ``id``, ``modality``, ``task``, ``base_model``, ``downloads``, ``likes``,
    ``last_modified`` (ISO 8601 or ``None``), ``tags`` and ``url``; most downloaded first.
    """
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if not isinstance(limit, int) or limit < 1:
        raise LoSamValueError(f"limit must be a positive integer, got {limit!r}")
    tags = [LOSAM_TAG]
    for value in (normalise_modality(modality), normalise_task(task)):
        if value:
            tags.append(value)
    try:
        models = list(
            HfApi(token=token).list_models(filter=tags, search=search or None, sort=sort, limit=limit, token=token)
        )
    except OfflineModeIsEnabled:
        raise HubError("cannot list adapters: offline mode is on (HF_HUB_OFFLINE=1)") from None
    except HfHubHTTPError as err:
        raise HubError(f"the Hub refused the listing: {err}") from None
    except Exception as err:
        if not is_connection_error(err):
            raise
        raise HubError(f"cannot reach the Hub to list adapters ({type(err).__name__}: {err})") from None
    endpoint = constants.ENDPOINT.rstrip("/")
    return [_describe(model, endpoint) for model in models]


def _describe(model, endpoint: str) -> dict:
    tags = list(getattr(model, "tags", None) or [])
    base = None
    for tag in tags:
        if tag.startswith("base_model:"):
            base = tag.split(":")[-1]
            if tag.startswith("base_model:adapter:"):
                break
    if base is None:
        card = getattr(model, "card_data", None)
        base = getattr(card, "base_model", None) if card is not None else None
    modality = next((t for t in tags if t in KNOWN_MODALITIES), None)
    task = next((t for t in tags if t in KNOWN_TASKS), None)
    modified = getattr(model, "last_modified", None) or getattr(model, "created_at", None)
    return {
        "id": model.id,
        "modality": modality,
        "task": task,
        "base_model": base,
        "downloads": getattr(model, "downloads", None),
        "likes": getattr(model, "likes", None),
        "last_modified": modified.isoformat() if hasattr(modified, "isoformat") else modified,
        "tags": tags,
        "url": f"{endpoint}/{model.id}",
    }


def format_adapters(rows: list[dict]) -> str:
    """A plain-text table of :func:`find_adapters` results (for ``losam list-adapters``)."""
    if not rows:
        return "no LoSAM adapters found"
    header = ("id", "modality", "task", "base_model", "downloads")
    table = [header] + [tuple("" if row.get(k) is None else str(row.get(k)) for k in header) for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in table)
