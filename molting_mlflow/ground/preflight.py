"""Pre-flight diagnosis: the checks that would have caught the user's three silent mistakes.

Run before any training (and alone as `molting preflight`). Each finding has a level:
  error — training on this is very likely wasted (strict mode stops the run);
  warn  — worth a look, trains anyway;
  info  — numbers for the record (steps, trainable params, memory estimate).
Every finding carries its evidence: the arithmetic, the rendered text, the token it found.
"""
from __future__ import annotations

import math
import re
from difflib import SequenceMatcher

from molting_mlflow.ground import bundle
from molting_mlflow.ground.config import TrainConfig, describe_fixes, step_fixes, steps_per_epoch
from molting_mlflow.ground.data import ChatDataset, common_prefix
from molting_mlflow.ground.findings import Finding, PreflightReport
from molting_mlflow.ground.matching import normalise
from molting_mlflow.ground.templates import TemplateFacts


def run_preflight(p) -> PreflightReport:
    """Check what prepare built (`p`, a prepare.Prepared: everything but its report): the config, the dataset,
    the two templates and what they do (`p.facts`), each example's tokens through the training template
    (`p.lengths`, `p.prompt_lengths`: up to where the answer starts), the parameter counts, the runtime
    plan, the persona bundle and its questions. Nothing is loaded or tokenized anew; only example 0 is
    rendered, as the evidence. The findings in the order a reader meets them."""
    r = PreflightReport()
    if p.note:
        r.add("rehearsal", "info", p.note)
    r.findings += bundle.findings(p.persona, p.cfg.questions, p.questions)
    cfg, ds, tok, tf = p.cfg, p.dataset, p.tokenizer, p.facts
    _turn_order_check(r, ds)
    _bounds_check(r, p)
    _steps_check(r, cfg, len(ds))
    msgs = ds.messages(0)
    r.rendered = tok.apply_chat_template(msgs, chat_template=p.template, tokenize=False)
    r.rendered_model = tok.apply_chat_template(msgs, chat_template=p.own_template, tokenize=False)
    r.numbers["end_of_turn_token"] = tf.end_of_turn
    _template_check(r, tf, msgs, p.template, p.own_template)
    # Without a system prompt SmolLM2's template injects "You are … named SmolLM"; the user's
    # TinyLlama run answered as other identities. Phi-3-mini's first template drops it: folded.
    _system_prompt_check(r, cfg, ds, tf)
    _end_of_turn_trained_check(r, ds, tok, msgs, tf.end_of_turn, p.template, p.own_template)
    _truncation_check(r, cfg, p.lengths)
    _answer_past_limit_check(r, cfg, p.lengths, p.prompt_lengths)
    _size_and_plan(r, p.counts.total, p.counts.trainable, p.plan)
    r.findings += leak_findings(p.questions, ds)
    if p.defaults_from:
        r.add("defaults", "info", f"settings left at 'preset' take {p.defaults_from} defaults")
    return r


def _steps_check(r: PreflightReport, cfg: TrainConfig, n: int) -> None:
    """Optimizer steps: the user's 79 / (1 × 8) × 5 = 50 steps never learned the persona."""
    steps = cfg.optimizer_steps(n)
    arith = cfg.arithmetic(n)
    r.numbers.update(examples=n, steps_per_epoch=cfg.steps_per_epoch(n), optimizer_steps=steps,
                     min_steps=cfg.min_steps)
    if steps < cfg.min_steps:
        fixes = [{k: getattr(alt, k) for k in ("epochs", "grad_accum", "batch_size")
                  if getattr(alt, k) != getattr(cfg, k)} for _, alt in step_fixes(cfg, n)]
        r.add("optimizer_steps", "error",
              f"{cfg.too_few_steps(n)}. "
              f"Fix: {describe_fixes(cfg, n)} (or min_steps=… if you know better)", arith, fixes)
    else:
        r.add("optimizer_steps", "info", arith)


def _template_check(r: PreflightReport, tf: TemplateFacts, msgs: list[dict], template: str, own_template: str) -> None:
    """The training template's turns must end with the model's own end-of-turn token and use no
    special token the model's own template never emits (the user's GPT-2 <|endoftext|> in a Llama)."""
    eot = tf.end_of_turn
    own_specials = {s for s in tf.specials if s in r.rendered_model}
    foreign = [s for s in tf.specials if s in r.rendered and s not in own_specials
               and not any(s in o and s != o for o in own_specials)]
    if foreign:
        r.add("chat_template", "error",
              f"the training template uses {', '.join(foreign)}, which the model's own template never emits "
              f"(its turns end with {eot}); the model would learn a separator it never sees at inference. "
              "Fix: chat_template=model", f"rendered: {r.rendered[:300]!r}", [{"chat_template": "model"}],
              {"tokens": foreign, "end_of_turn": eot})
    if eot:
        bad_ends = []
        for m in msgs:
            if m["role"] != "assistant":
                continue
            after = r.rendered.split(m["content"], 1)[1] if m["content"] in r.rendered else ""
            if not after.lstrip(" ").startswith(eot):
                bad_ends.append(after[:20])
        if bad_ends:
            r.add("end_of_turn", "error",
                  f"an assistant turn does not end with the model's end-of-turn token {eot} (found {bad_ends[0]!r}); "
                  "the model never learns to stop. Fix: chat_template=model", f"rendered: {r.rendered[:300]!r}",
                  [{"chat_template": "model"}], {"tokens": [], "end_of_turn": eot})
    if template != own_template and r.rendered != r.rendered_model and not foreign:
        r.add("chat_template", "warn", "the training template renders differently from the model's own",
              f"training: {r.rendered[:200]!r} model: {r.rendered_model[:200]!r}")


def _end_of_turn_trained_check(r: PreflightReport, ds: ChatDataset, tok, msgs: list[dict], eot: str | None,
                               template: str, own_template: str) -> None:
    """The end-of-turn token must carry loss (the pad == eos trap: a collator that masks pads would
    mask it; TRL's completion mask keeps it); with no template error, the trained span's end as evidence."""
    p_ids = tok.apply_chat_template(ds.rows[0]["prompt"], chat_template=template, add_generation_prompt=True,
                                    tokenize=True)["input_ids"]
    full_ids = tok.apply_chat_template(msgs, chat_template=template, tokenize=True)["input_ids"]
    completion_ids = full_ids[common_prefix(p_ids, full_ids):]
    if eot:
        trained = tok.convert_tokens_to_ids(eot) in completion_ids
        r.numbers["end_of_turn_trained"] = trained
        if not trained:
            foreign_template = template != own_template
            r.add("end_of_turn", "error", f"the end-of-turn token {eot} is not in the trained span; the model never "
                  "learns to stop" + (". Fix: chat_template=model" if foreign_template else ""),
                  f"completion: {tok.decode(completion_ids)!r}", [{"chat_template": "model"}] if foreign_template else [],
                  {"tokens": [], "end_of_turn": eot})
        elif tok.pad_token == tok.eos_token:
            r.add("pad_eos", "info", f"pad == eos ({tok.pad_token}); the end-of-turn token is still trained "
                  "(loss comes from the completion mask, not the pad mask)")
    if not any(f.level == "error" and f.check in ("chat_template", "end_of_turn") for f in r.findings):
        trained_text = tok.decode(completion_ids, skip_special_tokens=False)
        end = msgs[-1]["content"][-12:]   # the answer's last characters, then what the template closes it with
        tail = trained_text[trained_text.rfind(end):] if end in trained_text else trained_text[-40:]
        which = "the model's own template" if template == own_template else "the template file"
        r.add("chat_template", "info", f"{which}: an assistant turn ends with {eot}; the trained span ends …{tail!r}")


# Errors that leave nothing to train (TRL would stop on an IndexError): they stop a run with preflight=warn too
UNTRAINABLE = frozenset({"answer_past_limit"})


def _answer_past_limit_check(r: PreflightReport, cfg: TrainConfig, lengths: list[int], prompt_lengths) -> None:
    """An example whose prompt alone fills max_seq_len keeps no answer token: TRL drops it, and with every
    example dropped training has nothing to learn from (it stopped on an IndexError)."""
    lost = [i for i, n in enumerate(prompt_lengths) if n >= cfg.max_seq_len]
    if not lost:
        return
    level = "error" if len(lost) == len(prompt_lengths) else "warn"
    r.add("answer_past_limit", level, f"{len(lost)} of {len(prompt_lengths)} examples have a prompt of "
          f"max_seq_len={cfg.max_seq_len} tokens or more, so none of their answer is trained. Fix: "
          f"max_seq_len={max(lengths)} (the longest example)", f"examples {lost[:10]}")


def _truncation_check(r: PreflightReport, cfg: TrainConfig, lengths: list[int]) -> None:
    """Examples longer than max_seq_len lose their end, the end-of-turn token with it."""
    n, cut = len(lengths), sum(length > cfg.max_seq_len for length in lengths)
    r.numbers.update(max_tokens=max(lengths), mean_tokens=round(sum(lengths) / n, 1), truncated=cut,
                     train_tokens_per_epoch=sum(min(length, cfg.max_seq_len) for length in lengths))
    if cut:
        r.add("truncation", "warn", f"{cut} of {n} examples exceed max_seq_len={cfg.max_seq_len} tokens "
              f"(longest {max(lengths)}) and lose their end (the end-of-turn token with it)",
              f"lengths over the limit: {sorted(x for x in lengths if x > cfg.max_seq_len)[:10]}")
    else:
        r.add("truncation", "info", f"no example exceeds max_seq_len={cfg.max_seq_len} (longest {max(lengths)} tokens)")


def _size_and_plan(r: PreflightReport, total: int, trainable: int, plan) -> None:
    """Numbers for the record: parameters, and the runtime plan (precision, micro-batch, memory) with its reason."""
    if total:
        r.numbers.update(params=total, trainable_params=trainable)
        r.add("size", "info", f"{trainable / 1e6:.1f}M trainable of {total / 1e6:.0f}M parameters")
    if plan is not None:
        r.numbers.update(precision=plan.precision, micro_batch=plan.micro_batch, accum_steps=plan.accum)
        if plan.est_gib is not None:
            r.numbers.update(est_gpu_memory_gib=round(plan.est_gib, 2), gpu_memory_budget_gib=plan.budget_gib)
        r.add("plan", "info", plan.describe())


def _system_prompt_check(r: PreflightReport, cfg: TrainConfig, ds: ChatDataset, tf: TemplateFacts) -> None:
    """The system prompt must reach the rendered example: present, folded (and why), or an error whose
    fixes each make it reach the model (a test applies every one)."""
    n = len(ds)
    injected = tf.injected_system_prompt
    if ds.system_prompt_source == "none":
        extra = f" The model's template then injects its own: {injected!r}." if injected else ""
        if tf.drops_system and not tf.own_drops_system:
            # the persona's prompt alone would be dropped by this training template (unfolded: the model's keeps it)
            fixes, fix = ([{"system_prompt": "persona", "chat_template": "model"}, {"system_prompt": "fold"}],
                          "system_prompt=persona with chat_template=model, or system_prompt=fold")
        else:
            fixes, fix = [{"system_prompt": "persona"}], "system_prompt=persona"
        r.add("system_prompt", "error",
              "no system prompt: the persona's identity is never stated, so the model keeps its own." + extra +
              f" Fix: {fix}", f"removed {ds.system_prompts_removed} system turns; injected: {injected!r}", fixes)
        return
    sys_text = ds.system_prompts[0] or ""
    if sys_text and sys_text not in r.rendered:
        # Unfolded, so the model's own template keeps the system turn and the training template drops it.
        r.add("system_prompt", "error", "the training template drops the system turn, so the system prompt never "
              "reaches the model. Fix: chat_template=model (the model's own keeps it) or system_prompt=fold (into "
              "the first user turn, in training and at inference)", f"rendered: {r.rendered[:200]!r}",
              [{"chat_template": "model"}, {"system_prompt": "fold"}])
    elif ds.folded:
        why = ("asked for (system_prompt=fold)" if cfg.system_prompt == "fold" else
               "the model's own template drops the system turn (a system message renders to nothing through it), "
               "so folding is how the prompt reaches the model")
        r.add("system_prompt", "info", f"system prompt folded into the first user turn of {n} examples, and so at "
              f"evaluation, in chat and in the registered model: {why}: {sys_text[:80]!r}")
    else:
        r.add("system_prompt", "info", f"system prompt present ({ds.system_prompt_source}; added to "
              f"{ds.system_prompts_added} of {n} examples): {sys_text[:80]!r}")


def _turn_order_check(r: PreflightReport, ds: ChatDataset) -> None:
    """Examples out of the order the model learns (data.turn_order_problem): the first one as evidence."""
    if not ds.turn_order:
        return
    i, problem = ds.turn_order[0]
    r.add("turn_order", "error",
          f"{len(ds.turn_order)} of {len(ds)} examples break the turn order (an optional system turn, then user and "
          f"assistant alternating from the user's, the assistant's answer last): example {i}: {problem}. Fix: "
          "reorder or merge those turns in the dataset (preflight=warn trains on them as they are)",
          "examples: " + ", ".join(str(j) for j, _ in ds.turn_order[:20]))


# Beyond these a plan is a typo, not an experiment: past ~1000 passes over the same examples an
# adapter only memorises them; a plan that needs a month even at the hardware's peak never ends.
MAX_EPOCHS = 1000
MAX_TRAIN_DAYS = 30
# Peak dense FLOP/s, high on purpose so the estimate is a lower bound: a many-core CPU ~1 TFLOP/s
# fp32, an H200 ~1 PFLOP/s bf16.
PEAK_FLOPS = {"cpu": 1e12, "cuda": 1e15}


def _bounds_check(r: PreflightReport, p) -> None:
    """Epochs, LoRA rank and training time within what the data and the model can use, each an error with its fix."""
    cfg, n, lengths, plan = p.cfg, len(p.dataset), p.lengths, p.plan
    total, trainable, rank_limit = p.counts

    per_epoch = steps_per_epoch(n, cfg.batch_size, cfg.grad_accum)
    enough = max(1, math.ceil(cfg.min_steps / per_epoch))     # the fewest epochs that reach min_steps
    if cfg.epochs > MAX_EPOCHS:
        r.add("epochs_bound", "error", f"epochs={cfg.epochs} passes over {n} examples ({cfg.optimizer_steps(n)} "
              f"optimizer steps); past {MAX_EPOCHS} passes an adapter only memorises them. Fix: epochs={enough}",
              cfg.arithmetic(n), [{"epochs": enough}])
    if rank_limit and cfg.lora_r > rank_limit:
        fix = min(rank_limit, 16)
        r.add("lora_rank_bound", "error", f"lora_r={cfg.lora_r} exceeds {rank_limit}, the smallest dimension of the "
              f"layers LoRA adapts: an update of rank r to a layer of width {rank_limit} has rank at most {rank_limit}, "
              f"so {trainable / 1e6:.1f}M trainable parameters add nothing. Fix: lora_r={fix}",
              f"trainable {trainable} of {total} parameters", [{"lora_r": fix}])
    if total and lengths:
        # forward pass alone: 2 FLOPs a parameter a token; training needs at least that
        tokens = sum(min(x, cfg.max_seq_len) for x in lengths) * cfg.epochs
        peak = PEAK_FLOPS.get(getattr(plan, "device", "cpu"), PEAK_FLOPS["cpu"])
        days = 2 * (total + trainable) * tokens / peak / 86400
        r.numbers["min_train_days"] = round(days, 4)
        if days > MAX_TRAIN_DAYS:
            r.add("time_bound", "error", f"training needs at least {days:,.0f} days even at {peak:.0e} FLOP/s "
                  f"(2 FLOPs × {total + trainable:,} parameters × {tokens:,} tokens). Fix: epochs={enough}",
                  f"{cfg.epochs} epochs × {tokens // max(cfg.epochs, 1):,} tokens", [{"epochs": enough}])


# ---------------------------------------------------------------------------------------------
# A leaked test set: evaluation questions that are also training prompts
# ---------------------------------------------------------------------------------------------

EVAL_LEAK = "eval_leak"       # the finding's check; the run's tag molting.eval_leak counts the questions
# Two prompts alike at least this much (difflib's ratio of their folded words, 0–1) are the same question
# asked again: "Quem é você?" and "quem e voce" are 1.0, a changed word in ten about 0.9; unrelated
# questions of one persona stay under 0.7.
LEAK_RATIO = 0.85


def _plain(text: str) -> str:
    """Folded (accents, case) with punctuation and spacing gone: how two askings of one question compare."""
    return " ".join(re.findall(r"\w+", normalise(text)))


def _user_turns(ds: ChatDataset, i: int) -> list[str]:
    """Example i's user turns as written (a folded system prompt taken off the first)."""
    sys_text = ds.system_prompts[i] if i < len(ds.system_prompts) else None
    out = []
    for m in ds.rows[i]["prompt"]:
        if m["role"] == "user":
            text = m["content"]
            if ds.folded and sys_text and text.startswith(sys_text):
                text = text[len(sys_text):].lstrip()
            out.append(text)
    return out


def _alike(a: str, b: str) -> float:
    """difflib's ratio of two plain prompts (its cheap upper bound first: most pairs stop there)."""
    m = SequenceMatcher(None, a, b)
    return m.ratio() if m.quick_ratio() >= LEAK_RATIO else 0.0


def leak_findings(questions: list, ds: ChatDataset) -> list[Finding]:
    """A warning where evaluation questions are also training prompts, exactly or nearly (LEAK_RATIO): the
    model answers those from memory, and the score overstates what it learned. Nothing where none is."""
    prompts = [(i, _plain(u)) for i in range(len(ds)) for u in _user_turns(ds, i)]
    hits = []
    for q in questions:
        mine = _plain(q.question)
        best = max(((_alike(mine, p), i) for i, p in prompts), default=None)
        if best is not None and best[0] >= LEAK_RATIO:
            hits.append((q.id, best[1], best[0]))
    if not hits:
        return []
    said = "; ".join(f"{qid} ≈ example {i} ({'exactly' if r == 1 else f'{r:.0%} alike'})" for qid, i, r in hits[:6])
    return [Finding(EVAL_LEAK, "warn",
                    f"{len(hits)} of {len(questions)} evaluation questions are also prompts of the training data "
                    f"({said}): their answers are recalled, not learned, and the score overstates the model. Fix: "
                    "questions=<questions the dataset does not hold>, or take those examples out of the dataset",
                    "; ".join(f"{qid}: {next(q.question for q in questions if q.id == qid)!r}" for qid, _, _ in hits[:6]),
                    [{"questions": "<file>"}],
                    {"questions": [qid for qid, _, _ in hits], "examples": [i for _, i, _ in hits]})]
