"""SFT loss memory: mmr's chunked loss vs transformers' loss from full logits, one step each.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/sft_loss_memory.py [--tokens 4096] [--repeat 2]

The model is `benchmarks/sft_throughput.py`'s CPU preset (Qwen2.5-VL shape, random weights,
vision tower frozen) with Qwen2.5-VL's real vocabulary of 151,936 rows, so the logits are
as wide as in the recipes: one packed row of `--tokens` tokens (synthetic samples with
images, as in that benchmark) is run forward + backward through `mmr.sft.loss.CausalLMLoss`
with `chunked=True` and with `chunked=False` (transformers' loss: bf16/fp32 logits of
tokens x 151,936, upcast to fp32). Each side runs in its own fresh process, in turn,
`--repeat` times; the figure is the process's peak RSS (ru_maxrss) minus its RSS just before
the step, so the model and data do not count. Printed: peak step memory of each, their
ratio, the step times and both losses (they must agree).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

QWEN_VOCAB = 151_936


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def child(chunked: bool, tokens: int) -> dict:
    import sft_throughput as B
    import torch

    from mmr.data.packing import collate_packed, model_inputs, pack_first_fit_decreasing
    from mmr.sft.loss import CausalLMLoss

    B.quiet()
    base = B.PRESETS["cpu"]
    preset = dataclasses.replace(base, text={**base.text, "vocab_size": QWEN_VOCAB})
    model, processor = B.build_model(preset, 0, torch.device("cpu"))
    model.train()
    items = B.make_mix(B.MIX_SIZE, 0.125, 0, processor)
    bins = pack_first_fit_decreasing([len(it) for it in items], tokens)
    row = collate_packed(
        [items[i] for i in bins[0]], model.model.get_rope_index, pad_token_id=0,
        packing_length=tokens,
    )  # fmt: skip
    inputs = {k: v for k, v in model_inputs(row).items() if k != "use_cache"}
    loss_fn = CausalLMLoss(model, chunked=chunked)
    before = rss_mb()
    start = time.perf_counter()
    loss = loss_fn(model, inputs)
    loss.backward()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB
    return {"step_mb": peak - before, "seconds": seconds, "loss": float(loss), "tokens": tokens}


def run_child(chunked: bool, tokens: int) -> dict:
    cmd = [sys.executable, __file__, "--child", "chunked" if chunked else "full",
           "--tokens", str(tokens)]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4096, help="tokens in the packed row")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--child", choices=["chunked", "full"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child == "chunked", args.tokens)))
        return
    runs: dict[str, list[dict]] = {"chunked": [], "full": []}
    for _ in range(args.repeat):
        for name in ("full", "chunked"):
            runs[name].append(run_child(name == "chunked", args.tokens))
    med = {n: {k: statistics.median(r[k] for r in rs) for k in ("step_mb", "seconds")}
           for n, rs in runs.items()}  # fmt: skip
    logits_gb = args.tokens * QWEN_VOCAB * 4 / 2**30
    print(f"one packed row of {args.tokens} tokens, vocab {QWEN_VOCAB:,} "
          f"(fp32 logits alone: {logits_gb:.2f} GiB); fwd+bwd, medians of {args.repeat}")  # fmt: skip
    for name, label in (("full", "transformers' loss (full logits)"),
                        ("chunked", "mmr chunked loss")):  # fmt: skip
        m = med[name]
        losses = ", ".join(f"{r['loss']:.6f}" for r in runs[name])
        print(f"  {label:<34} step memory {m['step_mb']:8.0f} MiB  {m['seconds']:6.2f} s  "
              f"loss {losses}")  # fmt: skip
    ratio = med["full"]["step_mb"] / med["chunked"]["step_mb"]
    speed = med["full"]["seconds"] / med["chunked"]["seconds"]
    print(f"  memory full / chunked: {ratio:.2f}x; time full / chunked: {speed:.2f}x")


if __name__ == "__main__":
    main()
