"""Cached models are found by huggingface_hub itself: its cache folder (HF_HUB_CACHE, HF_HOME), refs,
pinned revisions and symlinked blobs, checked on a fake cache laid out as the library lays it out
(scan_cache_dir, the library's own reader, accepts it)."""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from molting_mlflow.ground.models import ModelError, WeightsNotFound, resolve_model

REPO = "acme/tiny-chat"
MAIN, OLD = "a" * 40, "b" * 40
CONFIG = json.dumps({"model_type": "llama", "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 64})


def fake_cache(root: Path, repo: str, snapshots: dict[str, dict[str, bytes]], refs: dict[str, str]) -> Path:
    """models--org--name/{blobs/<sha256>, snapshots/<commit>/<file> -> ../../blobs/<sha256>, refs/<ref>}."""
    folder = root / ("models--" + repo.replace("/", "--"))
    (folder / "blobs").mkdir(parents=True, exist_ok=True)
    for commit, files in snapshots.items():
        for name, data in files.items():
            blob = folder / "blobs" / hashlib.sha256(data).hexdigest()
            blob.write_bytes(data)
            link = folder / "snapshots" / commit / name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(blob, link.parent))
    for ref, commit in refs.items():
        (folder / "refs").mkdir(exist_ok=True)
        (folder / "refs" / ref).write_text(commit)
    return root


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty hub cache that huggingface_hub reads (its HF_HUB_CACHE constant, read at each call)."""
    from huggingface_hub import constants

    root = tmp_path / "hub"
    root.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(root))
    return root


def full(config=CONFIG) -> dict:
    return {"config.json": config.encode(), "model.safetensors": b"weights"}


def test_the_fake_cache_is_the_librarys_own_layout(hub):
    from huggingface_hub import scan_cache_dir

    fake_cache(hub, REPO, {MAIN: full(), OLD: full()}, {"main": MAIN})
    info = scan_cache_dir(hub)
    assert not info.warnings
    (repo,) = info.repos
    assert repo.repo_id == REPO and {r.commit_hash for r in repo.revisions} == {MAIN, OLD}


def test_a_hub_id_resolves_to_the_snapshot_refs_main_names(hub):
    from transformers import AutoConfig

    fake_cache(hub, REPO, {MAIN: full(), OLD: full()}, {"main": MAIN})
    src = resolve_model(REPO)
    assert Path(src.path) == hub / "models--acme--tiny-chat" / "snapshots" / MAIN and src.revision == MAIN
    assert (Path(src.path) / "config.json").is_symlink()
    assert AutoConfig.from_pretrained(src.path, local_files_only=True).hidden_size == 16   # through the symlink


def test_a_pinned_revision_resolves_to_its_own_snapshot(hub):
    fake_cache(hub, REPO, {MAIN: full(), OLD: full()}, {"main": MAIN})
    src = resolve_model(f"{REPO}@{OLD}")
    assert Path(src.path).name == OLD and src.model_id == REPO
    with pytest.raises(WeightsNotFound, match=f"revision {'c' * 40}"):
        resolve_model(f"{REPO}@{'c' * 40}")


def test_without_a_ref_the_library_finds_nothing_and_so_do_we(hub):
    """As from_pretrained offline: a snapshot no ref names is not 'the model' (the old hand-written
    lookup took any snapshot with a config.json)."""
    fake_cache(hub, REPO, {OLD: full()}, {})
    with pytest.raises(ModelError, match=r"it is not in the Hugging Face cache \(.*hub\).*huggingface-cli download"):
        resolve_model(REPO)


def test_config_and_tokenizer_alone_are_not_weights(hub):
    fake_cache(hub, REPO, {MAIN: {"config.json": CONFIG.encode(), "tokenizer.json": b"{}"}}, {"main": MAIN})
    with pytest.raises(WeightsNotFound, match="its weights are not in the Hugging Face cache"):
        resolve_model(REPO)


def test_a_preset_names_its_hub_id_and_the_rehearsal(hub, monkeypatch):
    monkeypatch.delenv("MOLTING_PHI3_PATH", raising=False)
    fake_cache(hub, "microsoft/Phi-3-mini-4k-instruct", {MAIN: {"config.json": CONFIG.encode()}}, {"main": MAIN})
    with pytest.raises(WeightsNotFound, match="only its config/tokenizer files are there.*molting preflight"):
        resolve_model("phi3")
    fake_cache(hub, "microsoft/Phi-3-mini-4k-instruct", {MAIN: {"model.safetensors": b"w"}}, {})
    assert Path(resolve_model("phi3").path).name == MAIN


def test_hf_home_is_honoured_in_a_fresh_process(tmp_path):
    """HF_HOME (without HF_HUB_CACHE) moves the cache to $HF_HOME/hub, read by huggingface_hub at import."""
    fake_cache(tmp_path / "home" / "hub", REPO, {MAIN: full()}, {"main": MAIN})
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE")}
    env.update(HF_HOME=str(tmp_path / "home"), PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    out = subprocess.run([sys.executable, "-c", f"from molting_mlflow.ground.models import resolve_model; "
                          f"print(resolve_model({REPO!r}).path)"], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()) == tmp_path / "home" / "hub" / "models--acme--tiny-chat" / "snapshots" / MAIN
