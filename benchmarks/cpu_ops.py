"""Why smol trains in fp32 on a CPU: the matrix products of one smol training step, timed per dtype,
side by side in one process, plus the cost of LoRA dropout's random masks.

Shapes are smol's (hidden 576, MLP 1536, vocab 49,152) at one example of 136 tokens, the mean of
the shipped dataset with the persona's system prompt. bf16/fp16 are fast only on CPUs with
AVX-512 BF16/FP16 or AMX; elsewhere PyTorch emulates them.

Usage: python benchmarks/cpu_ops.py [--threads 2]
"""
import argparse
import time

import torch

SHAPES = [("MLP projection 136×576 · 576×1536", 136, 576, 1536),
          ("attention projection 136×576 · 576×576", 136, 576, 576)]


def gflops(m, k, n, dtype, reps=20, warmup=2):
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    for _ in range(warmup):
        a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * m * k * n / ((time.perf_counter() - t) / reps) / 1e9


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}\n")
    print("| matrix product | fp32 GFLOP/s | bf16 GFLOP/s | fp16 GFLOP/s | bf16 vs fp32 |")
    print("|---|---|---|---|---|")
    for name, m, k, n in SHAPES:
        f32 = gflops(m, k, n, torch.float32)
        # emulated half precision can be ~50× slower: few repetitions keep the script short
        bf16, f16 = (gflops(m, k, n, dt, reps=3, warmup=1) for dt in (torch.bfloat16, torch.float16))
        print(f"| {name} | {f32:.1f} | {bf16:.1f} | {f16:.1f} | {bf16 / f32:.2f}× |")
    # LoRA dropout draws a random mask for the input of every adapted layer, each a step: per block
    # q, k, v, o, gate, up see 576 features and down 1536; 30 blocks.
    xs = [torch.randn(136, 576)] * 6 + [torch.randn(136, 1536)]
    t = time.perf_counter()
    for _ in range(10):
        for x in xs:
            torch.dropout(x, 0.05, True)
    block_ms = (time.perf_counter() - t) / 10 * 1000
    print(f"\nLoRA dropout masks: {block_ms:.2f} ms a block, × 30 blocks ≈ {30 * block_ms / 1000:.2f} s of each "
          "forward pass (lora_dropout=0 skips them)")

if __name__ == "__main__":
    main()
