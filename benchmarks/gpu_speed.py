"""GPU speed of the project's own `train()` (training + in-run evaluation + logging) beside the plain
baselines of ../shared/bench, all in one device call, printed as one markdown table.

Random-init models of the real architectures (SmolLM2-135M, TinyLlama-1.1B, Phi-3-mini; no weights
are reachable on the GPU machine: speed and memory come from the architecture), each behind its
preset (MOLTING_<PRESET>_PATH), so `train()` runs with the preset's defaults for a GPU unless a
variant overrides them. The tokenizer is benchmarks/gpu_train.py's 366-token ChatML BPE: the shipped
79 examples with the system prompt are ~16.4k tokens an epoch, the baselines' size.

Each configuration trains in its own process (a clean CUDA peak); numbers are read back from the
MLflow run (`train_tokens_per_s`, `train_runtime_s`, `gen_seconds`, `peak_memory_mb`, …).

    python3 benchmarks/gpu_speed.py                                   # every arch, preset defaults
    python3 benchmarks/gpu_speed.py --archs phi3 --variant '4gib={"gpu_memory_gib": 4}'
    python3 benchmarks/gpu_speed.py --baselines ../shared/bench       # also run the shared baselines
    python3 benchmarks/gpu_speed.py --mlflow-run phi3                 # also time `mlflow run . -e train`
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
WORK = Path(os.environ.get("GPU_BENCH_DIR", "/tmp/gpu"))
os.environ.setdefault("GPU_BENCH_DIR", str(WORK))
os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{WORK}/mlflow.db")
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
LABEL = {"smol": "SmolLM2-135M", "tinyllama": "TinyLlama-1.1B", "phi3": "Phi-3-mini"}


def child(arch: str, variant: str, overrides: dict, smoke: bool) -> None:
    """One train() with the preset `arch` on the random-init folder; prints one JSON line."""
    import mlflow
    from gpu_train import build_folder

    from molting_mlflow.ground.config import TrainConfig
    from molting_mlflow.stages.train import train

    folder, _ = build_folder(arch, smoke)
    os.environ[f"MOLTING_{arch.upper()}_PATH"] = str(folder)
    patches = {k: overrides.pop(k) for k in list(overrides) if k.startswith("_")}
    _patch(patches)
    kw = {"model": arch, "experiment": "gpu-speed", **overrides}
    t0 = time.time()
    r = train(TrainConfig(**kw), log=lambda *a: None)
    wall = time.time() - t0
    run = mlflow.get_run(r.run_id)
    m, p = run.data.metrics, run.data.params
    evals = eval_again(r.run_id, static=patches.get("_static_cache"))
    print("RESULT " + json.dumps({
        "arch": arch, "variant": variant, "wall_s": round(wall, 1), "precision": p["train.precision"],
        "examples_per_step": int(p["train.batch_size"]) * int(p["train.grad_accum"]),
        "micro_batch": int(p["train.micro_batch"]), "epochs": int(p["train.epochs"]), "steps": int(m["optimizer_steps"]),
        "tok_s": round(m["train_tokens_per_s"]), "train_s": round(m["train_runtime_s"], 1),
        "load_s": round(m["model_load_s"], 2), "gen_s": round(m.get("gen_seconds", float("nan")), 2),
        "peak_gib": round(m["peak_memory_mb"] / 1024, 2), "est_gib": p.get("train.est_gpu_memory_gib"),
        "eval_again_s": evals, "phases": {k: round(v, 2) for k, v in m.items() if k.startswith("time_")}}), flush=True)


def _patch(patches: dict) -> None:
    """Exploration knobs, not settings: `_autocast` puts bf16 autocast back on CUDA (as before)."""
    from dataclasses import replace

    from molting_mlflow.ground import runtime

    if "_autocast" in patches:
        runtime.PRECISIONS["bf16"] = replace(runtime.PRECISIONS["bf16"], cuda_autocast=bool(patches["_autocast"]))


def eval_again(run_id: str, static=None) -> dict:
    """The saved adapter on a fresh load: the evaluate stage's generation unmerged, then merged into
    copies (generation.merged_lora, as train's in-run evaluation does) twice, cold and warm; and how
    many of the merged answers' tokens equal the unmerged ones (bf16 rounds the merged weights, and
    random-init logits are nearly flat, so greedy tokens may part; fp32 equality is a CPU test)."""
    from molting_mlflow.ground.generation import generate, merged_lora
    from molting_mlflow.ground.models import load_adapter_model, resolve_adapter
    from molting_mlflow.ground.paths import DEFAULT_QUESTIONS
    from molting_mlflow.ground.questions import load_questions

    model, tok, meta, plan = load_adapter_model(resolve_adapter(f"runs:/{run_id}/adapter"))
    qs = load_questions(DEFAULT_QUESTIONS)
    unmerged, s_unmerged = generate(model, tok, qs, meta.get("system_prompt"), 96, static=static)
    if not plan.eval_merge:                       # an NF4 base: its 4-bit weights take no merged copy
        return {"unmerged_s": round(s_unmerged["gen_seconds"], 2), "merged_s": [], "token_agreement": None,
                "answers_equal": None}
    times = []
    with merged_lora(model):
        for _ in range(2):
            merged, stats = generate(model, tok, qs, meta.get("system_prompt"), 96, static=static)
            times.append(round(stats["gen_seconds"], 2))
    same = total = 0
    for u, m in zip(unmerged, merged):
        a, b = tok(u["response"])["input_ids"], tok(m["response"])["input_ids"]
        same += next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        total += max(len(a), len(b))
    return {"unmerged_s": round(s_unmerged["gen_seconds"], 2), "merged_s": times,
            "token_agreement": round(same / total, 3) if total else None,
            "answers_equal": sum(u["response"] == m["response"] for u, m in zip(unmerged, merged))}


def run_child(arch: str, variant: str, overrides: dict, smoke: bool) -> dict:
    cmd = [sys.executable, __file__, "--child", arch, "--name", variant, "--overrides", json.dumps(overrides)]
    cmd += ["--smoke"] if smoke else []
    t = time.time()
    out = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    if out.returncode or not lines:
        return {"arch": arch, "variant": variant, "error": (out.stderr or out.stdout).strip().splitlines()[-1][:300],
                "wall_s": round(time.time() - t, 1)}
    return json.loads(lines[-1][len("RESULT "):])


def baselines(folder: Path, archs: list[str]) -> list[str]:
    """The shared baselines as they print themselves (their own tables/JSON), run in this call."""
    out = []
    for script, args in (("gpu_trial_baseline.py", [a for a in archs if a != "tinyllama"]), ("gpu_fast.py", archs)):
        t = time.time()
        r = subprocess.run([sys.executable, script, *args], cwd=folder, capture_output=True, text=True,
                           env={**os.environ, "MOLTING_SRC": str(ROOT), "PYTHONPATH": f"{ROOT}:{os.environ.get('PYTHONPATH', '')}"})
        out.append(f"### {script} {' '.join(args)} ({time.time() - t:.0f} s, rc {r.returncode})\n")
        out.append("\n".join(r.stdout.strip().splitlines()[-25:]) + "\n" + ("\n".join(r.stderr.strip().splitlines()[-5:])
                                                                        if r.returncode else ""))
    return out


def time_mlflow_run(arch: str, smoke: bool) -> str:
    """Wall time of the design card's command on a random-init model folder (not the preset name: the
    folder takes its architecture's defaults), and where it went: training and evaluation as the
    run logged them, the rest outside them."""
    import mlflow
    from gpu_train import build_folder

    folder, _ = build_folder(arch, smoke)
    t = time.time()
    r = subprocess.run([sys.executable, "-m", "mlflow", "run", ".", "-e", "train", "--env-manager", "local",
                        "--experiment-name", "gpu-mlflow-run", "-P", f"model={folder}"], cwd=ROOT,
                       capture_output=True, text=True)
    wall = time.time() - t
    tail = (r.stdout + r.stderr).strip().splitlines()[-3:]
    runs = mlflow.search_runs(experiment_names=["gpu-mlflow-run"], output_format="list",
                              order_by=["attributes.start_time DESC"], max_results=1)
    phases = ""
    if runs:
        m, p = runs[0].data.metrics, runs[0].data.params
        train_s, eval_s = m.get("train_runtime_s", 0.0), m.get("eval_seconds", m.get("gen_seconds", 0.0))
        phases = (f"; training {train_s:.1f} s, evaluation {eval_s:.1f} s (generation {m.get('gen_seconds', 0):.2f} s), "
                  f"outside them {wall - train_s - eval_s:.1f} s; model_load_s {m.get('model_load_s', 0):.1f}, "
                  f"trainer setup {m.get('time_trainer_setup_s', 0):.1f}, adapter log {m.get('time_adapter_log_s', 0):.1f}; "
                  f"defaults: {p.get('train.epochs')} epochs × {p.get('train.grad_accum')} grad_accum × "
                  f"{p.get('train.batch_size')} = {p.get('train.optimizer_steps')} steps, max_seq_len "
                  f"{p.get('train.max_seq_len')}, precision {p.get('train.precision')}")
    return (f"`mlflow run . -e train -P model=<random-init {arch} folder>`: rc {r.returncode}, {wall:.1f} s wall"
            f"{phases}\n" + "\n".join("    " + ln for ln in tail))


def table(rows: list[dict]) -> str:
    head = ("| arch | variant | precision | examples/step | micro-batch | steps | train tok/s | train s | load s | "
            "eval (8 answers) s | again: unmerged s, merged cold/warm s, bf16 token agreement | peak GiB | est GiB | train() wall s |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {LABEL.get(r['arch'], r['arch'])} | {r['variant']} | error: {r['error']} |")
            continue
        lines.append(f"| {LABEL.get(r['arch'], r['arch'])} | {r['variant']} | {r['precision']} | {r['examples_per_step']} | "
                     f"{r['micro_batch']} | {r['steps']} | {r['tok_s']:,} | {r['train_s']} | {r['load_s']} | "
                     f"{r['gen_s']} | {_again(r.get('eval_again_s'))} | {r['peak_gib']} | {r['est_gib']} | "
                     f"{r['wall_s']} |")
    return "\n".join(lines)


def _again(e) -> str:
    if not e:
        return ""
    return (f"{e['unmerged_s']}, {'/'.join(map(str, e['merged_s']))}, {e['token_agreement']} "
            f"({e['answers_equal']}/8 answers equal)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", default="smol,tinyllama,phi3")
    ap.add_argument("--variant", action="append", default=[], help="name=JSON of TrainConfig overrides")
    ap.add_argument("--baselines", default="", help="folder with the shared bench scripts (run them too)")
    ap.add_argument("--mlflow-run", default="", help="arch whose `mlflow run . -e train` wall time to measure")
    ap.add_argument("--smoke", action="store_true", help="toy shapes, checks the script on a CPU")
    ap.add_argument("--child"), ap.add_argument("--name"), ap.add_argument("--overrides")
    a = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    if a.child:
        return child(a.child, a.name, json.loads(a.overrides), a.smoke)
    variants = [v.split("=", 1) for v in a.variant] or [["preset", "{}"]]
    rows, t0 = [], time.time()
    for arch in a.archs.split(","):
        for name, js in variants:
            rows.append(run_child(arch, name, json.loads(js), a.smoke))
            print(json.dumps(rows[-1]), flush=True)
            if os.environ.get("OUT"):            # as it goes: a timeout still returns the rows done
                Path(os.environ["OUT"], "gpu_speed.md").write_text(table(rows) + "\n", encoding="utf-8")
    report = [f"# gpu_speed ({time.strftime('%Y-%m-%d %H:%M')}, {gpu_name()})", "", table(rows), "",
              "Seconds outside the training loop, by phase (time_*_s metrics of each run):"]
    report += [f"- {LABEL.get(r['arch'], r['arch'])} {r['variant']}: {r.get('phases')}" for r in rows] + [""]
    if a.mlflow_run:
        report.append(time_mlflow_run(a.mlflow_run, a.smoke))
    if a.baselines:
        report += baselines(Path(a.baselines), a.archs.split(","))
    report.append(f"total {time.time() - t0:.0f} s")
    text = "\n".join(report)
    print(text)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu_speed.md").write_text(text + "\n", encoding="utf-8")


def gpu_name() -> str:
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    except Exception:
        return "unknown"


if __name__ == "__main__":
    main()
