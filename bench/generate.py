"""Batched vs one-by-one greedy generation on a trained run (default: the demo run), same prompts and outputs.

    python -m bench.generate --run runs/demo --params params/demo-cpu.yaml

Writes bench/results/generate.json. Speed is measured here, never asserted in tests.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.generate", description=__doc__.splitlines()[0])
    p.add_argument("--run", default="runs/demo")
    p.add_argument("--params", default="params/demo-cpu.yaml")
    p.add_argument("--batch-sizes", default="1,4,8,16")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--out", default="bench/results/generate.json")
    args = p.parse_args(argv)

    from unsloth_sft.config.load import load_config
    from unsloth_sft.core.files import write_json
    from unsloth_sft.data.examples import prepare
    from unsloth_sft.data.prompts import prompts_for
    from unsloth_sft.evaluation.generate import generate
    from unsloth_sft.models.load import load_run_model

    cfg = load_config(args.params)
    model, tokenizer = load_run_model(Path(args.run))
    data = prepare(cfg, tokenizer)
    prompts = prompts_for(tokenizer, data.test_conversations, data.template)
    rows, reference = [], None
    for size in (int(s) for s in args.batch_sizes.split(",")):
        ecfg = dataclasses.replace(cfg.eval, batch_size=size, max_new_tokens=args.max_new_tokens)
        generate(model, tokenizer, prompts[:size], ecfg, progress=False)  # warm-up
        start = time.perf_counter()
        outputs = generate(model, tokenizer, prompts, ecfg, progress=False)
        seconds = time.perf_counter() - start
        new_tokens = sum(len(tokenizer(o, add_special_tokens=False)["input_ids"]) for o in outputs)
        reference = reference or outputs
        rows.append(
            {
                "batch_size": size,
                "prompts": len(prompts),
                "seconds": round(seconds, 2),
                "prompts_per_s": round(len(prompts) / seconds, 2),
                "new_tokens_per_s": round(new_tokens / seconds, 1),
                "same_text_as_batch_1": outputs == reference,
            }
        )
        print(rows[-1])
    write_json(Path(args.out), {"run": args.run, "max_new_tokens": args.max_new_tokens, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
