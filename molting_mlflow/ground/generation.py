"""What a model says and how well it predicts what it should say: greedy answers to the evaluation
questions, and the mean loss (NLL per token) on their reference answers. Ground for the train and
evaluate stages, the registry and chat.

Generation follows the rubric's contract: the model's own chat template, the run's system prompt,
greedy and batched, stopping at the model's end-of-turn token (or its other end tokens); the new
tokens are decoded WITHOUT dropping special tokens (only the final end token is cut), so a leaked
`<|endoftext|>` stays visible to D4/D5; `finish_reason` is `stop` when an end token came, `length`
otherwise.
"""
from __future__ import annotations

import time
from contextlib import contextmanager

from molting_mlflow.ground.config import DEFAULT_SEED
from molting_mlflow.ground.data import common_prefix, fold_system
from molting_mlflow.ground.questions import Question
from molting_mlflow.ground.templates import end_of_turn_token, folds


def messages(system_prompt: str | None, user: str, fold: bool = False) -> list[dict]:
    """The prompt's turns. fold: the system prompt goes into the first user turn (data.fold_system),
    as training folded it, for templates that drop the system turn."""
    if not system_prompt:
        return [{"role": "user", "content": user}]
    turns = [{"role": "system", "content": system_prompt}, {"role": "user", "content": user}]
    return fold_system(turns) if fold else turns


def adapter_prompt(meta: dict, tok) -> tuple[str | None, bool]:
    """The system prompt an adapter trained with and whether it is folded into the first user turn, as
    its molting.json recorded; adapters written before the decision was recorded decide as training
    does (templates.folds). Evaluation, chat and the registered model all ask here."""
    sp, fold = meta.get("system_prompt"), meta.get("system_prompt_fold")
    return sp, bool(fold) if fold is not None else folds(sp, "persona", tok, tok.chat_template)


def stop_ids(tok, model=None) -> list[int]:
    """The end-of-turn token of the tokenizer's template first (Phi-3: <|end|>), then the tokenizer's
    eos and the model's generation_config end tokens (Phi-3: <|endoftext|>, <|assistant|>, <|end|>)."""
    ids: list[int] = []
    eot = end_of_turn_token(tok, tok.chat_template)
    if eot:
        ids.append(tok.convert_tokens_to_ids(eot))
    gen = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for eos in (tok.eos_token_id, gen):
        for i in (eos if isinstance(eos, list) else [eos]):
            if i is not None and i not in ids:
                ids.append(i)
    return ids


def generate(model, tok, questions: list[Question], system_prompt: str | None, max_new_tokens: int,
             batch_size: int = 8, seed: int = DEFAULT_SEED, fold: bool = False, static: bool = False) -> tuple[list[dict], dict]:
    """Greedy answers, one record per question: {"id", "response", "finish_reason", "new_tokens"}, and
    what the generation was: "prompt" (the text the model was given), "max_new_tokens", "batch" (the
    question's batch number and size) and "started_ns"/"ended_ns" (that batch's wall clock, epoch ns;
    the batch is one model.generate call, so its questions share them). The evaluation traces
    (eval_view) are built from these.

    static: a static KV cache, with which transformers compiles the decoding step on CUDA (CUDA
    graphs). Greedy decoding on a GPU is bound by kernel launches, so compiled decoding is several
    times faster, but the first call compiles for tens of seconds (benchmarks/README_gpu.md), so only
    a process that evaluates many times gains from it."""
    import torch

    torch.manual_seed(seed)
    stops = stop_ids(tok, model)
    pad = tok.pad_token_id if tok.pad_token_id is not None else stops[0]
    side, tok.padding_side = tok.padding_side, "left"
    records, n_new, t0 = [], 0, time.time()
    dev = next(model.parameters()).device
    cache = {"cache_implementation": "static"} if static else {}
    try:
        for i in range(0, len(questions), batch_size):
            chunk = questions[i:i + batch_size]
            started_ns = time.time_ns()
            prompts = [tok.apply_chat_template(messages(system_prompt, q.question, fold), tokenize=False,
                                               add_generation_prompt=True) for q in chunk]
            enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(dev)
            with torch.no_grad():
                out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stops,
                                     pad_token_id=pad, **cache)
            ended_ns = time.time_ns()
            for q, prompt, row in zip(chunk, prompts, out[:, enc["input_ids"].shape[1]:].tolist()):
                end = next((j for j, t in enumerate(row) if t in stops), None)
                ids = row if end is None else row[:end]
                n = len(ids) + (end is not None)
                n_new += n
                records.append({"id": q.id, "response": tok.decode(ids, skip_special_tokens=False),
                                "finish_reason": "length" if end is None else "stop", "new_tokens": n,
                                "prompt": prompt, "max_new_tokens": max_new_tokens,
                                "batch": [i // batch_size, len(chunk)], "started_ns": started_ns, "ended_ns": ended_ns})
    finally:
        tok.padding_side = side
    secs = time.time() - t0
    return records, {"gen_tokens": n_new, "gen_seconds": secs, "gen_tokens_per_s": n_new / secs if secs else 0.0}


@contextmanager
def merged_lora(model, restore: bool = True):
    """Decode with each LoRA folded into its base weight: one matmul a wrapped layer instead of the
    base's, the LoRA's two and their sum, so a decoding step launches about half the kernels.

    restore=True merges into copies (one more copy of the wrapped weights in memory) and puts the
    original tensors back afterwards, bit for bit: a sweep worker's base trains the next trial.
    restore=False merges in place (peft's merge_adapter), for a model thrown away after evaluating.
    A model without LoRA layers is yielded as it is."""
    from peft.tuners.lora import LoraLayer

    layers = [m for m in model.modules() if isinstance(m, LoraLayer) and not m.merged]
    if not layers:
        yield model
        return
    if not restore:
        model.merge_adapter()
        yield model
        return
    _release_cached_blocks()      # training's freed activations: the copies would otherwise sit beside them
    saved = []
    try:
        for layer in layers:
            base = layer.get_base_layer()
            delta = sum(layer.get_delta_weight(a) for a in layer.active_adapters if a in layer.lora_A)
            saved.append((base, base.weight.data))
            base.weight.data = base.weight.data + delta.to(base.weight.dtype)
        with model.disable_adapter():
            yield model
    finally:
        for base, original in saved:
            base.weight.data = original


@contextmanager
def unloaded_merged(peft_model):
    """For a base lent to many trials (a sweep worker's): each LoRA folded into its base layer's own weight
    tensor, in place, and the LoRA layers taken off (peft's unload), so decoding runs the plain base: the same
    modules and the same weight storage every trial, and a decoding graph compiled once (the static cache on
    CUDA, compiled at the worker's start) serves all its trials. Yields the plain base. Afterwards the
    original values are copied back into the same storage: the base is as it was lent, bit for bit, and
    already unwrapped (BaseCache.give_back finds no LoRA layer left)."""
    from peft.tuners.lora import LoraLayer

    layers = [m for m in peft_model.modules() if isinstance(m, LoraLayer) and not m.merged]
    deltas = [(m.get_base_layer(), sum(m.get_delta_weight(a) for a in m.active_adapters if a in m.lora_A))
              for m in layers]
    _release_cached_blocks()
    base = peft_model.unload()
    base.__dict__.pop("forward", None)     # TRL's fused-head forward, bound to this object
    saved = []
    try:
        for layer, delta in deltas:
            saved.append((layer.weight, layer.weight.detach().clone()))
            layer.weight.data.add_(delta.to(layer.weight.dtype))
        yield base
    finally:
        for weight, original in saved:
            weight.data.copy_(original)


def _release_cached_blocks() -> None:
    """Give the CUDA allocator's cached, unused blocks back to the card. Several trials share a card,
    each planned for its own peak (runtime.trials_per_gpu); a trial that keeps training's cache while it
    allocates the merged copies holds both at once, and a neighbour runs out of memory."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def reference_nll(model, tok, questions: list[Question], system_prompt: str | None, template: str | None = None,
                  fold: bool = False) -> float | None:
    """Mean NLL per token of the questions' reference answers (their end-of-turn token included),
    given the system prompt and the question through `template` (default: the tokenizer's own).
    Token-weighted over all references; None when no question has one. The rubric counts surface
    features; this number says whether the model would have said the right thing."""
    import torch

    pairs = [(messages(system_prompt, q.question, fold), q.reference) for q in questions if q.reference]
    if not pairs:
        return None
    template = template or tok.chat_template
    seqs = []
    for prompt, ref in pairs:
        p_ids = tok.apply_chat_template(prompt, chat_template=template, add_generation_prompt=True,
                                        tokenize=True)["input_ids"]
        full = tok.apply_chat_template(prompt + [{"role": "assistant", "content": ref}], chat_template=template,
                                       tokenize=True)["input_ids"]
        start = common_prefix(p_ids, full)
        seqs.append((full, start))
    dev = next(model.parameters()).device
    width = max(len(f) for f, _ in seqs)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    labels = torch.full((len(seqs), width), -100, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, (full, start) in enumerate(seqs):
        ids[i, :len(full)] = torch.tensor(full)
        labels[i, start:len(full)] = torch.tensor(full[start:])
        attn[i, :len(full)] = 1
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            backbone, head = _backbone_and_head(model)
            hidden = backbone(input_ids=ids.to(dev), attention_mask=attn.to(dev)).last_hidden_state
            # the output layer on the reference tokens only: position t predicts token t + 1
            targets = labels[:, 1:].to(dev)
            mask = targets != -100
            logits = head(hidden[:, :-1][mask]).float()
            return float(torch.nn.functional.cross_entropy(logits, targets[mask], reduction="mean"))
    finally:
        if was_training:
            model.train()


def _backbone_and_head(model):
    """A causal LM's decoder stack and its output layer (through a peft wrapper, LoRA layers live)."""
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    return lm.base_model, lm.get_output_embeddings()
