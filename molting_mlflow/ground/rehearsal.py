"""The presets' real chat templates as data, and what can be built from them without the weights.

data/templates/real_templates.json holds, per preset model (phi3, tinyllama) and per template
revision a user may have cached, the chat template and special tokens (strings and ids) copied from
public sources (cited there), and the real model's architecture numbers. From them:
  - `model_config`: the real config (parameter counts and the memory plan need no weights);
  - `stand_in_tokenizer`: a byte-level BPE trained on the shipped data in a second, carrying exactly
    those special tokens at those ids and that template. Its token counts are approximate (the real
    vocabularies are not shipped, see the data file); everything about turns, end-of-turn tokens and
    system prompts is exact;
  - `stand_in`: what `molting preflight --model phi3` inspects when the weights are absent;
  - `build_tiny`: a tiny random model of the real architecture with the stand-in tokenizer, saved as a
    model folder (the tests train, evaluate and chat through each template with it).
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from molting_mlflow.ground.errors import MoltingError
from molting_mlflow.ground.models import Inspected, ModelSource, hf_snapshot, shipped_bpe
from molting_mlflow.ground.paths import DATA_DIR, TEMPLATES_DIR
from molting_mlflow.ground.presets import PRESETS

REAL_TEMPLATES = TEMPLATES_DIR / "real_templates.json"
# The stand-in's learned vocabulary (the ids up to the real first added token are filled with
# unreachable placeholders). 512 BPE tokens learned from the shipped data count its examples at
# 1.02× (Phi-3) and 1.13× (TinyLlama) the real vocabularies' tokens (1024: 0.72×, 0.82×; 400: 1.30×,
# 1.40×); measured once against llama.cpp's vocab GGUFs, recorded in the data file.
STAND_IN_LEARNED = 512
# The card a rehearsal plans for when gpu_memory_gib is not given: the user's 4 GB.
REHEARSAL_GPU_GIB = 4.0


class RehearsalError(MoltingError, ValueError):
    """No shipped template data for this model or revision; the message lists what there is."""


@lru_cache(maxsize=1)
def real_templates() -> dict:
    return json.loads(REAL_TEMPLATES.read_text(encoding="utf-8"))["models"]


def has_templates(model: str) -> bool:
    return model in real_templates()


def revision(model: str, name: str | None = None) -> tuple[str, dict]:
    """(name, entry) of a template revision; None: the model's default (what a download gets today)."""
    if model not in real_templates():
        raise RehearsalError(f"no shipped template data for model '{model}'; there is for: "
                             + ", ".join(real_templates()))
    entry = real_templates()[model]
    name = name or entry["default_revision"]
    if name not in entry["revisions"]:
        raise RehearsalError(f"model '{model}' has no template revision '{name}'; known: "
                             + ", ".join(entry["revisions"]))
    return name, entry["revisions"][name]


def model_config(model: str):
    """A transformers config with the real model's architecture numbers (no weights)."""
    from transformers import CONFIG_MAPPING

    numbers = dict(real_templates()[model]["config"])
    return CONFIG_MAPPING[numbers.pop("model_type")](**numbers)


def stand_in_tokenizer(model: str, rev: str | None = None, learned: int = STAND_IN_LEARNED):
    """A tokenizer with the real special tokens at the real ids, the real template and a BPE
    vocabulary trained on the shipped data (token counts approximate, turns exact)."""
    from tokenizers import AddedToken, Tokenizer
    from transformers import PreTrainedTokenizerFast

    _, r = revision(model, rev)
    toks = r["tokens"]
    base = real_templates()[model]["vocab_head"]   # ids 0, 1, 2: <unk>, <s>, </s>
    bpe = shipped_bpe(learned, base)
    # Pad the vocabulary to the real one's size with entries no merge can produce, so the added
    # tokens land on their real ids (Phi-3: <|endoftext|> 32000 … <|user|> 32010).
    spec = json.loads(bpe.to_str())
    vocab = spec["model"]["vocab"]
    first_added = min((i for _, i, _ in r["added"]), default=real_templates()[model]["config"]["vocab_size"])
    vocab.update({f"<stand_in_unused_{i}>": i for i in range(len(vocab), first_added)})
    bpe = Tokenizer.from_str(json.dumps(spec))
    named = {role: s for role, (s, _) in toks.items()}
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, unk_token=named["unk"], bos_token=named["bos"],
                                  eos_token=named["eos"], pad_token=named["pad"])
    tok.add_special_tokens({"additional_special_tokens": [
        AddedToken(s, rstrip=rstrip, lstrip=False, normalized=False, special=True) for s, _, rstrip in r["added"]]},
        replace_extra_special_tokens=False)
    got = {s: tok.convert_tokens_to_ids(s) for s, _ in toks.values()} | {
        s: tok.convert_tokens_to_ids(s) for s, _, _ in r["added"]}
    want = {s: i for s, i in toks.values()} | {s: i for s, i, _ in r["added"]}
    assert got == want, (got, want)
    tok.chat_template = r["chat_template"]
    return tok


def stand_in(model: str, rev: str | None = None) -> Inspected:
    """The model as pre-flight sees it without its weights, planned for a GPU (REHEARSAL_GPU_GIB unless the
    config gives a budget), with what the rehearsal used and what of it is approximate as its note."""
    source = _source(model, rev)
    return Inspected(source, _tokenizer(source, rev), _config(source), "cuda", _describe(source, rev))


def _source(model: str, rev: str | None = None):
    """A ModelSource for pre-flight without weights: the real tokenizer and config where the HF cache
    has those files (a few MB, no weights), else the shipped numbers and the stand-in tokenizer."""

    name, _ = revision(model, rev)
    preset = PRESETS[model]
    snap = hf_snapshot(preset.hub_id, "tokenizer_config.json")
    if snap is not None and (snap / "config.json").is_file():
        return ModelSource(model, preset, "rehearsal", str(snap), preset.hub_id,
                           f"rehearsal:{snap.name}" + (f"+template:{name}" if rev else ""))
    return ModelSource(model, preset, "rehearsal", "", preset.hub_id, f"rehearsal:template:{name}")


def _tokenizer(source, rev: str | None = None):
    """The cached real tokenizer (with `rev`'s template where one is named), else the stand-in."""
    if source.path:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(source.path, local_files_only=True)
        if rev:
            tok.chat_template = revision(source.name, rev)[1]["chat_template"]
        return tok
    return stand_in_tokenizer(source.name, rev)


def _config(source):
    if source.path:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(source.path, local_files_only=True)
    return model_config(source.name)


def _describe(source, rev: str | None) -> str:
    """What the rehearsal used and what of it is approximate, in one paragraph."""
    name, r = revision(source.name, rev)
    if source.path:
        return (f"rehearsal without weights: {source.model_id} from the Hugging Face cache (config and tokenizer "
                f"files, {Path(source.path).name[:12]}), template "
                f"{'the cached one' if not rev else repr(name)}; token counts exact")
    cal = real_templates()[source.name]["stand_in_calibration"]
    return (f"rehearsal without weights: {source.model_id}, template revision '{name}' ({r['what']}), its special "
            f"tokens and ids, and the real model's architecture numbers, from "
            f"{REAL_TEMPLATES.relative_to(DATA_DIR.parent)}. Token counts are APPROXIMATE: a stand-in BPE tokenizer "
            f"(the real vocabulary is not shipped); on the shipped dataset it counts {cal['stand_in_tokens']} tokens "
            f"where the real one counts {cal['real_tokens']} (longest example {cal['stand_in_longest']} vs "
            f"{cal['real_longest']}). For exact counts, download the tokenizer files only (no weights): "
            f"huggingface-cli download {source.model_id} config.json tokenizer.json tokenizer_config.json "
            f"special_tokens_map.json tokenizer.model")


def build_tiny(model: str, rev: str | None, folder: str | Path, seed: int = 0) -> Path:
    """A 2-layer random model of the real architecture with the stand-in tokenizer, saved with
    save_pretrained (generation_config carries the model's end tokens). Plumbing only."""
    import torch

    config = model_config(model)
    config.update(dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                       num_key_value_heads=1, max_position_embeddings=1024))
    if hasattr(config, "original_max_position_embeddings"):
        config.original_max_position_embeddings = 1024
    from transformers import AutoModelForCausalLM

    g = torch.random.get_rng_state()
    torch.manual_seed(seed)
    m = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    torch.random.set_rng_state(g)
    tok = stand_in_tokenizer(model, rev)
    m.generation_config.eos_token_id = real_templates()[model]["generation_eos_token_ids"]
    m.generation_config.pad_token_id = tok.pad_token_id
    folder = Path(folder)
    m.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
