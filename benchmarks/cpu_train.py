"""CPU training speed of the real train path (TRL SFTTrainer + LoRA r=16, all linear layers) on
smol, settings side by side in one run: precision fp32 vs bf16 (the runtime plan's), LoRA dropout
0.05 vs 0, batch 1 vs 4.

Prints a table: optimizer steps, seconds, final loss (answer tokens, mean of the last 10 steps), tokens/s (tokens actually
processed, padding excluded), and each setting's speed relative to fp32 batch 1.
Usage: MOLTING_THREADS=2 python benchmarks/cpu_train.py [--examples 24]
"""
import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import mlflow

from molting_mlflow.ground.config import DEFAULT_DATASET, TrainConfig
from molting_mlflow.stages.train import train

# (name, precision, lora_dropout, batch)
SETTINGS = [("fp32, dropout 0.05, batch 1 (before)", "fp32", 0.05, 1), ("fp32, dropout 0, batch 1 (default)", "fp32", 0.0, 1),
            ("bf16, dropout 0, batch 1", "bf16", 0.0, 1), ("fp32, dropout 0, batch 4", "fp32", 0.0, 4),
            ("bf16, dropout 0, batch 4", "bf16", 0.0, 4)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", type=int, default=24, help="first N examples of the shipped dataset")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="molting-bench-"))
    os.chdir(tmp)
    mlflow.set_tracking_uri(f"sqlite:///{tmp / 'mlflow.db'}")
    data = tmp / "subset.json"
    data.write_text(json.dumps(json.loads(DEFAULT_DATASET.read_text(encoding="utf-8"))[:args.examples],
                               ensure_ascii=False), encoding="utf-8")
    rows = []
    for name, precision, dropout, batch in SETTINGS:
        r = train(TrainConfig(model="smol", dataset=str(data), epochs=1, batch_size=batch, grad_accum=1, lr=5e-4,
                              lora_dropout=dropout, precision=precision, min_steps=0, evaluate=False,
                              experiment="bench"), log=lambda *a: None)
        m = mlflow.get_run(r.run_id).data.metrics
        rows.append((name, r.optimizer_steps, m["train_runtime_s"], m["final_loss"], m["train_tokens_per_s"]))
    base = rows[0][4]
    print(f"\nsmol, {args.examples} examples, 1 epoch, LoRA r=16 all linear, {os.environ.get('MOLTING_THREADS', 'all')} threads\n")
    from molting_mlflow.ground.runtime import cpu_flags, cpu_model

    print(f"CPU: {cpu_model()}; bf16 flags: {sorted(f for f in cpu_flags() if 'bf16' in f or 'amx' in f) or 'none'}")
    print("| setting | steps | seconds | final loss (last 10 steps) | tokens/s | vs the first row |")
    print("|---|---|---|---|---|---|")
    for name, steps, secs, loss, tps in rows:
        print(f"| {name} | {steps} | {secs:.1f} | {loss:.3f} | {tps:.0f} | {tps / base:.2f}× |")


if __name__ == "__main__":
    main()
