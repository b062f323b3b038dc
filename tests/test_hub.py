"""push_adapter and find_adapters against monkeypatched HfApi methods (the Hub itself is never contacted)."""

import shutil

import pytest
from helpers import tiny_model
from huggingface_hub import HfApi, ModelCard, RepoUrl
from huggingface_hub.errors import OfflineModeIsEnabled
from huggingface_hub.hf_api import ModelInfo
from peft import get_peft_model

from losam_peft import LoSamConfig
from losam_peft.hub import (
    AdapterFolderError,
    HubError,
    check_adapter_folder,
    find_adapters,
    format_adapters,
    push_adapter,
)
from losam_peft.model_card import ADAPTER_PLACEHOLDER, write_model_card


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hub") / "adapter"
    model = get_peft_model(tiny_model(), LoSamConfig(modality="octa", task="vessels"))
    model.save_pretrained(folder)
    write_model_card(folder, model.peft_config["default"], base_model="facebook/sam-vit-base")
    (folder / "notes.txt").write_text("not uploaded")
    return folder


def test_push_uploads_adapter_and_card_with_the_repo_id_filled_in(adapter, monkeypatch):
    calls = {}

    def create_repo(self, repo_id, **kwargs):
        calls["create"] = dict(repo_id=repo_id, **kwargs)
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, **kwargs):
        folder = kwargs["folder_path"]
        calls["upload"] = kwargs
        calls["files"] = sorted(p.name for p in folder.iterdir())
        calls["card"] = (folder / "README.md").read_text()
        return None

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    url = push_adapter(adapter, "someone/losam-octa", private=True, commit_message="first")
    assert url == "https://huggingface.co/someone/losam-octa"
    assert calls["create"]["private"] is True and calls["create"]["exist_ok"] is True
    assert calls["upload"]["repo_id"] == "someone/losam-octa" and calls["upload"]["commit_message"] == "first"
    assert calls["files"] == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    assert 'LoSamPipeline.from_pretrained("someone/losam-octa")' in calls["card"]
    assert ADAPTER_PLACEHOLDER not in calls["card"]
    assert ModelCard(calls["card"]).data.library_name == "peft"
    assert ADAPTER_PLACEHOLDER in (adapter / "README.md").read_text()  # the local folder is left as it was


def test_push_refuses_incomplete_folders(tmp_path, adapter):
    with pytest.raises(AdapterFolderError, match="no such folder"):
        check_adapter_folder(tmp_path / "missing")
    cardless = tmp_path / "cardless"
    shutil.copytree(adapter, cardless)
    (cardless / "README.md").unlink()
    with pytest.raises(AdapterFolderError, match="missing README.md.*write_model_card"):
        push_adapter(cardless, "someone/x")
    weightless = tmp_path / "weightless"
    shutil.copytree(adapter, weightless)
    (weightless / "adapter_model.safetensors").rename(weightless / "adapter_model.bin")
    with pytest.raises(AdapterFolderError, match="missing adapter_model.safetensors.*adapter_model.bin"):
        push_adapter(weightless, "someone/x")
    with pytest.raises(ValueError, match="not a valid Hub repository id"):
        push_adapter(adapter, "bad id with spaces")
    with pytest.raises(ValueError, match="ORG/NAME"):
        push_adapter(adapter, "just-a-name")


def test_push_offline_is_a_clear_error(adapter, monkeypatch):
    def offline(self, *args, **kwargs):
        raise OfflineModeIsEnabled("offline")

    monkeypatch.setattr(HfApi, "create_repo", offline)
    with pytest.raises(HubError, match="offline mode is on"):
        push_adapter(adapter, "someone/x")


def test_find_adapters_filters_by_tag_modality_and_task(monkeypatch):
    seen = {}
    listed = [
        ModelInfo(
            id="someone/octa-vessels",
            tags=["peft", "losam", "octa", "vessels", "base_model:adapter:facebook/sam-vit-base"],
            downloads=12,
            likes=2,
            lastModified="2025-01-02T03:04:05.000Z",
        ),  # fmt: skip
        ModelInfo(id="someone/other", tags=["losam"], downloads=0, likes=0),
    ]

    def list_models(self, **kwargs):
        seen.update(kwargs)
        return iter(listed)

    monkeypatch.setattr(HfApi, "list_models", list_models)
    rows = find_adapters(modality="OCT-A", task="vessel", search="rose", limit=5)
    assert seen["filter"] == ["losam", "octa", "vessels"]
    assert seen["search"] == "rose" and seen["limit"] == 5
    assert rows[0] == {
        "id": "someone/octa-vessels",
        "modality": "octa",
        "task": "vessels",
        "base_model": "facebook/sam-vit-base",
        "downloads": 12,
        "likes": 2,
        "last_modified": "2025-01-02T03:04:05+00:00",
        "tags": listed[0].tags,
        "url": "https://huggingface.co/someone/octa-vessels",
    }
    assert rows[1]["modality"] is None and rows[1]["base_model"] is None
    table = format_adapters(rows)
    assert "someone/octa-vessels" in table and table.splitlines()[0].startswith("id")
    find_adapters()
    assert seen["filter"] == ["losam"] and seen["search"] is None
    assert format_adapters([]) == "no LoSAM adapters found"
    with pytest.raises(ValueError, match="limit"):
        find_adapters(limit=0)


def test_find_adapters_offline(monkeypatch):
    def offline(self, **kwargs):
        raise OfflineModeIsEnabled("offline")

    monkeypatch.setattr(HfApi, "list_models", offline)
    with pytest.raises(HubError, match="offline mode is on"):
        find_adapters()


def test_push_refuses_a_local_base_unless_its_hub_id_is_given(tmp_path, monkeypatch):
    base = tmp_path / "my-sam"
    base.mkdir()
    folder = tmp_path / "adapter"
    model = get_peft_model(tiny_model(), LoSamConfig(base_model_name_or_path=str(base)))
    model.peft_config["default"].base_model_name_or_path = str(base)
    model.save_pretrained(folder)
    write_model_card(folder, model.peft_config["default"], base_model=str(base))
    with pytest.raises(ValueError, match="base_repo_id"):
        push_adapter(folder, "someone/x")
    seen = {}

    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: RepoUrl(f"https://huggingface.co/{repo_id}"))

    def upload_folder(self, **kwargs):
        import json

        staged = kwargs["folder_path"]
        seen["config"] = json.loads((staged / "adapter_config.json").read_text())
        seen["card"] = ModelCard((staged / "README.md").read_text())

    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    push_adapter(folder, "someone/x", base_repo_id="facebook/sam-vit-base")
    assert seen["config"]["base_model_name_or_path"] == "facebook/sam-vit-base"
    assert seen["card"].data.base_model == "facebook/sam-vit-base"
    assert str(base) not in seen["card"].text


def test_push_license_sets_the_uploaded_card_s_licence(adapter, monkeypatch):
    seen = {}
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: RepoUrl(f"https://huggingface.co/{repo_id}"))

    def upload_folder(self, **kwargs):
        seen["card"] = (kwargs["folder_path"] / "README.md").read_text()

    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    push_adapter(adapter, "someone/losam-octa", license="cc-by-4.0")
    card = ModelCard(seen["card"])
    assert card.data.license == "cc-by-4.0" and "Licence of this adapter: `cc-by-4.0`." in card.text
    assert ModelCard.load(adapter / "README.md").data.license is None  # the local card keeps its own
