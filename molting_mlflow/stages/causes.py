"""The causes `molting diagnose` finds in a run's own logs: too few steps, a loss still falling, a foreign
template, answers cut at the limit, no system prompt, a leaked test set, examples truncated, and every
rubric dimension's points lost (the rubric's table: a new dimension is diagnosed as it is added).

Every finding cites the metric, param, tag, artifact or answer it comes from; with no evidence there is
no finding. A dimension's points are measured against the persona's own reference answers scored by the
same rubric: points the references lose too are the ruler's ceiling on those questions, not the
adapter's fault, and are said so instead of advised on. The thresholds live in THRESHOLDS, each with
its reason. Answers are read by the rubric's reason codes, never by the wording of its sentences.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from molting_mlflow.ground.config import DEFAULT_MIN_STEPS, DEFAULT_MODEL, DEFAULT_TARGET, ConfigError, TrainConfig, describe_fixes
from molting_mlflow.ground.preflight import EVAL_LEAK
from molting_mlflow.ground.rubric import EMPTY, RUBRIC, code_prefix
from molting_mlflow.store.scoring import REASONS_BY_CODE

THRESHOLDS = {
    # Impact by the rubric points (of 10) a cause plausibly cost: a point is a tenth of the scale,
    # and the user's target (config.DEFAULT_TARGET) sits 2.1 points above their 2.9.
    "impact_high_points": 1.0,
    "impact_medium_points": 0.3,
    # "Still falling": over the last quarter of the steps, the mean loss of its last fifth is more than
    # this share below the mean of its first fifth (the user's 50-step curve was still falling steeply
    # when it stopped). Means of real values: a drop is never past 100 %.
    "still_falling_drop": 0.10,
    "tail_share": 0.25,
    "tail_part": 0.2,
    # A final loss above this on answer tokens left smol's answers degenerate in the probe
    # (2.16 at 50 steps); runs that answered in persona ended near 1.0 or below.
    "high_final_loss": 1.5,
}


@dataclass
class RunData:
    run_id: str
    params: dict
    metrics: dict
    tags: dict
    losses: list            # [(step, loss)]
    preflight: dict
    answers: list           # rows of eval_results.json as dicts
    # {question id: {dimension: points}} the persona's own reference answers score (the questions the run
    # logged, scored as its card): a dimension's ceiling there. {} where it logged no references.
    ceiling: dict = field(default_factory=dict)
    # the run that trained what this run scored: itself (a train run), the train run of an evaluated adapter
    # (its losses, steps and pre-flight are read from there), or "" (a bare model, answers from elsewhere)
    training: str = ""

    @property
    def name(self) -> str:
        return self.tags.get("mlflow.runName", self.run_id[:8])


@dataclass
class Finding:
    cause: str
    impact: str             # high / medium / low
    points: float           # rubric points it plausibly cost
    fixable: str
    change: str
    evidence: list = field(default_factory=list)
    codes: frozenset = frozenset()   # the reason codes it explains: no dimension finding counts them again


def has_code(a: dict, *codes: str) -> bool:
    return any(c in a["codes"] for c in codes)


def _points_lost(run: RunData, dims: tuple, *codes: str) -> float:
    """Mean points lost in `dims` on the answers that carry one of the reason `codes`."""
    if not run.answers:
        return 0.0
    lost = sum(2 - a[d] for a in run.answers for d in dims if has_code(a, *codes))
    return lost / len(run.answers)


def _impact(points: float) -> str:
    return ("high" if points >= THRESHOLDS["impact_high_points"] else
            "medium" if points >= THRESHOLDS["impact_medium_points"] else "low")


def tail_drop(losses) -> tuple[float, float, float] | None:
    """(mean loss of the first fifth of the last quarter of the steps, of its last fifth, the share it fell):
    None with too few steps to tell."""
    tail = losses[-max(5, int(len(losses) * THRESHOLDS["tail_share"])):]
    if len(tail) < 5:
        return None
    k = max(1, int(len(tail) * THRESHOLDS["tail_part"]))
    first = sum(v for _, v in tail[:k]) / k
    last = sum(v for _, v in tail[-k:]) / k
    return (first, last, (first - last) / first) if first > 0 else None


def findings(run: RunData) -> list[Finding]:
    """The causes the run's own logs give evidence for, the costliest first: convergence, format, identity,
    leaks, truncation, then each dimension's points below its references that no cause above explains.
    The order here breaks ties in the sort."""
    nums = run.preflight.get("numbers", {})
    score = run.metrics.get("score")
    below = score is not None and score <= DEFAULT_TARGET
    causes = [*_step_findings(run, nums, score, below), *_loss_findings(run, below), *_empty_findings(run),
              *_template_findings(run), *_length_limit_findings(run), *_system_prompt_findings(run),
              *_leak_findings(run), *_truncation_findings(nums)]
    explained = frozenset().union(*(f.codes for f in causes))
    out = causes + [f for dim in RUBRIC.dimensions for f in _dimension_findings(run, dim, explained)]
    order = {"high": 0, "medium": 1, "low": 2}
    return sorted(out, key=lambda f: (order[f.impact], -f.points))


def _step_findings(run: RunData, nums: dict, score: float | None, below: bool) -> list[Finding]:
    """Too few optimizer steps (metric optimizer_steps < pre-flight's minimum), with its fixes (config.step_fixes)."""
    p, m = run.params, run.metrics
    steps = int(m.get("optimizer_steps", nums.get("optimizer_steps", 0)) or 0)
    min_steps = int(nums.get("min_steps", p.get("train.min_steps", DEFAULT_MIN_STEPS)))
    if not (steps and steps < min_steps):
        return []
    ex = int(nums.get("examples", p.get("data.examples", 0)))
    cfg = _config_of(run, nums, min_steps) if ex else None   # no example count logged: no arithmetic to redo
    pts = (RUBRIC.max_score - score) if below else 0.0
    return [Finding("too few optimizer steps", _impact(pts) if below else "low", round(pts, 2),
                    "yes (config)", describe_fixes(cfg, ex) if cfg else f"min_steps {min_steps}",
                    [f"{cfg.arithmetic(ex) if cfg else steps} < minimum {min_steps} "
                     "(metric optimizer_steps, preflight.json)"])]


def _loss_findings(run: RunData, below: bool) -> list[Finding]:
    """The loss still falling at the end (over the last quarter of the steps), and a high final loss."""
    out: list[Finding] = []
    fell = tail_drop(run.losses)
    final = run.metrics.get("final_loss")
    if fell is not None and fell[2] > THRESHOLDS["still_falling_drop"]:
        first, last, drop = fell
        out.append(Finding("loss still falling at the end", "medium", 0.0, "yes (config)",
                           "train longer: more epochs, or a smaller grad_accum",
                           [f"loss fell {drop:.0%} over the last {THRESHOLDS['tail_share']:.0%} of steps, from "
                            f"{first:.3f} to {last:.3f} (means of its first and last {THRESHOLDS['tail_part']:.0%}; "
                            f"metric loss, steps {run.losses[-1][0] - len(run.losses) // 4}–{run.losses[-1][0]})"]))
    if final is not None and final > THRESHOLDS["high_final_loss"]:
        # With too few steps the high loss is that cause's symptom (its points are counted there).
        out.append(Finding("high final loss", "low" if below else "medium", 0.0, "yes (config)",
                           "more optimizer steps (see above)" if below else "more optimizer steps or a higher learning rate",
                           [f"final_loss {final:.3f} > {THRESHOLDS['high_final_loss']} (metric final_loss)"]))
    return out


def _template_findings(run: RunData) -> list[Finding]:
    """The template the run trained with: pre-flight's first template error, and special tokens in the answers."""
    out: list[Finding] = []
    for f in run.preflight.get("findings", []):
        if f["check"] in ("chat_template", "end_of_turn") and f["level"] == "error":
            data = f.get("data", {})      # a preflight.json from before findings carried data names none
            tokens = [*data.get("tokens", []), *filter(None, [data.get("end_of_turn")])]
            codes = ("d4.template_token", "d4.text_after_token", "d4.role_line", "d5.run_on")
            pts = _points_lost(run, ("d4_cleanliness", "d5_quality"), *codes)
            out.append(Finding("foreign chat-template separators" if f["check"] == "chat_template"
                               else "assistant turns not closed by the end-of-turn token", _impact(pts) if pts else "high",
                               round(pts, 2), "yes (config)", "chat_template=model",
                               [f"preflight.json {f['check']}: {f['message'][:160]}"]
                               + ([f"tokens named: {', '.join(dict.fromkeys(tokens))}"] if tokens else []),
                               frozenset(codes)))
            break
    leaked = [a for a in run.answers if has_code(a, "d4.template_token")]
    if leaked:
        pts = _points_lost(run, ("d4_cleanliness", "d5_quality"), "d4.template_token")
        out.append(Finding("special tokens in the answers", _impact(pts), round(pts, 2),
                           "yes (template/training)", "train with the model's own template (chat_template=model)",
                           [f"{a['id']}: {a['response'][:90]!r}" for a in leaked[:3]],
                           frozenset({"d4.template_token"})))
    return out


def _length_limit_findings(run: RunData) -> list[Finding]:
    """Answers cut by the token limit: those whose finish_reason is "length" (they never stopped)."""
    cut = [a for a in run.answers if a.get("finish_reason") == "length"]
    if not cut:
        return []
    pts = _points_lost(run, ("d5_quality",), "d5.length_limit")
    return [Finding("answers cut by the token limit (never stopped)", _impact(pts), round(pts, 2),
                    "partly", "more training steps teach the end-of-turn; or raise eval_max_new_tokens",
                    [f"{len(cut)}/{len(run.answers)} answers with finish_reason=length: "
                     + ", ".join(a["id"] for a in cut)], frozenset({"d5.length_limit"}))]


def _empty_findings(run: RunData) -> list[Finding]:
    """Answers with no text at all: 0 on every dimension, one cause (nothing was learned to say)."""
    empty = [a for a in run.answers if has_code(a, EMPTY)]
    if not empty:
        return []
    pts = RUBRIC.max_score * len(empty) / len(run.answers)
    return [Finding("empty answers", _impact(pts), round(pts, 2), "partly",
                    "more training steps (it has not learned to answer); check that its turns end as the template's",
                    [f"{len(empty)}/{len(run.answers)} answers are empty or whitespace: "
                     + ", ".join(a["id"] for a in empty[:8])], frozenset({EMPTY}))]


def _system_prompt_findings(run: RunData) -> list[Finding]:
    """No system prompt: what the model called itself instead, and the identity and voice points it cost."""
    p, pre = run.params, run.preflight
    if p.get("data.system_prompt_source") != "none":
        return []
    d1_codes = tuple(RUBRIC.dimension("d1_identity").reasons)
    claims = [a for a in run.answers if has_code(a, "d1.conflicting_identity", "d1.other_name", "d1.denies_name")]
    pts = _points_lost(run, ("d1_identity", "d3_voice"), *d1_codes)
    ev = ["param data.system_prompt_source = none"]
    injected = next((f["evidence"] for f in pre.get("findings", []) if f["check"] == "system_prompt"), "")
    if injected:
        ev.append(f"preflight.json system_prompt: {injected[:160]}")
    ev += [f"{a['id']}: {a['response'][:90]!r} ({reasons_for(a, 'D1')})" for a in claims[:3]]
    if not claims:  # no other name claimed: show what it said when asked who it is
        probes = [a for a in run.answers if has_code(a, "d1.probe_without_name")]
        ev += [f"asked {a.get('question', a['id'])!r}, it answered {a['response'][:70]!r} ({reasons_for(a, 'D1')})"
               for a in probes[:2]]
    return [Finding("no system prompt", _impact(pts) if pts else "high", round(pts, 2), "yes (config)",
                    "system_prompt=persona", ev, frozenset(d1_codes))]


def _leak_findings(run: RunData) -> list[Finding]:
    """Evaluation questions that the run also trained on (pre-flight's eval_leak): its score measures recall."""
    leak = next((f for f in run.preflight.get("findings", []) if f["check"] == EVAL_LEAK), None)
    if leak is None:
        return []
    ids = leak.get("data", {}).get("questions", [])
    return [Finding("evaluation questions in the training data", "high", 0.0, "yes (data)",
                    "evaluate on questions the dataset does not hold (or take them out of the dataset)",
                    [f"preflight.json {EVAL_LEAK}: {leak['message'][:200]}"]
                    + ([f"questions: {', '.join(ids[:8])}"] if ids else []))]


def _dimension_findings(run: RunData, dim, explained: frozenset) -> list[Finding]:
    """One dimension's lost points that no cause above explains, against the persona's own reference answers:
    below them (the adapter's to win, with the dimension's advice), and lost by them too (the ceiling)."""
    if not run.answers or dim.key not in run.answers[0]:
        return []
    lost = [a for a in run.answers if a[dim.key] < dim.max_points
            and not {c for c in a["codes"] if costs(c, dim.key)} <= explained]

    def ceiling(a) -> int:
        return run.ceiling.get(a["id"], {}).get(dim.key, dim.max_points)

    n = len(run.answers)
    below = [a for a in lost if a[dim.key] < ceiling(a)]
    shared = [a for a in lost if ceiling(a) < dim.max_points]
    out = []
    if below:
        pts = sum(ceiling(a) - a[dim.key] for a in below) / n
        vs = ["the persona's reference answers to these questions keep these points"] if run.ceiling else []
        out.append(Finding(f"{dim.title} points lost ({dim.short})", _impact(pts), round(pts, 2), "partly", dim.advice,
                           vs + [f"{a['id']}: {reasons_for(a, dim.short)}" for a in below[:4]]))
    if shared:
        pts = sum(dim.max_points - max(ceiling(a), a[dim.key]) for a in shared) / n
        out.append(Finding(f"{dim.title} points the references lose too ({dim.short})", "low", round(pts, 2),
                           "no (the ruler's ceiling)", "nothing to train: check the question's facts and the card's "
                           "lists, or take it as the rubric's limit on these questions",
                           [f"{a['id']}: its reference answer scores {dim.short} {ceiling(a)}/{dim.max_points} too"
                            for a in shared[:4]]))
    return out


def _truncation_findings(nums: dict) -> list[Finding]:
    """Examples truncated at max_seq_len, as pre-flight counted them (preflight.json numbers.truncated)."""
    if not nums.get("truncated"):
        return []
    return [Finding("examples truncated at max_seq_len", "low", 0.0, "yes (config)",
                    f"max_seq_len > {nums.get('max_tokens')}",
                    [f"preflight.json: {nums['truncated']} examples over the limit"])]


def _config_of(run: RunData, nums: dict, min_steps: int) -> TrainConfig | None:
    """The resolved step settings a run logged, as a TrainConfig (None when they were not logged)."""
    p = run.params
    try:
        return TrainConfig(model=p.get("train.model", DEFAULT_MODEL), epochs=int(p["train.epochs"]),
                           grad_accum=int(p["train.grad_accum"]), batch_size=int(p["train.batch_size"]),
                           min_steps=min_steps)
    except (KeyError, ValueError, ConfigError):
        return None


def reasons_for(a: dict, dim: str) -> str:
    """The answer's reason sentences for one dimension ("D1"), picked by their codes ("d1.…") from the
    table's (code, reason) pairs. A table logged before it had them: every reason, as logged."""
    pairs = a.get(REASONS_BY_CODE)
    if pairs is None:
        return a.get("reasons", "") or "no reason logged"
    return "; ".join(t for c, t in pairs if costs(c, dim)) or "no reason logged"


def costs(code: str, dim: str) -> bool:
    """Whether a reason code costs the dimension `dim` ("d1_identity" or "D1"): its own codes, and an empty
    answer's, which costs every dimension."""
    return code == EMPTY or code.startswith(code_prefix(dim))
