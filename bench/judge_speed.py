"""Benchmark the judges' throughput: answers judged per second on real (prompt, answer) pairs.

The budget of the default judge: 1,000 answers within 60 s on the 2-core CPU (16.7 answers/s).
Every judge named with --judges judges the same pairs (the first --n rows of the PKU-SafeRLHF
file: the prompt and the first of its two responses) after one warm-up batch, in the same process, so
their figures compare; the ratio column is against the first judge named (the refusal phrases by
default, the cheapest baseline). Threads: torch's default, or OMP_NUM_THREADS.

    python bench/judge_speed.py                     # refusal,classifier on 1,000 answers
    OMP_NUM_THREADS=2 python bench/judge_speed.py --judges refusal,classifier --n 1000
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def pairs(path: Path, n: int) -> tuple[list[str], list[str]]:
    rows = json.loads(path.read_text())
    prompts, answers = [], []
    for row in rows:
        if len(prompts) == n:
            break
        prompts.append(row["prompt"])
        answers.append(row["response"][0])  # the file's rows hold a prompt and its pair of responses
    if len(prompts) < n:
        raise SystemExit(f"{path} has only {len(prompts)} rows; ask for --n {len(prompts)} or fewer.")
    return prompts, answers


def main(argv: list[str] | None = None) -> int:
    import torch

    from unlearnkit.judges import get_judge
    from unlearnkit.paths import default_path

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--judges", default="refusal,classifier", help="comma-separated judge specs (default refusal,classifier)")
    p.add_argument("--n", type=int, default=1000, help="answers to judge (default 1000)")
    p.add_argument("--data", default=None, help="the PKU-SafeRLHF json file (default: the offline copy)")
    args = p.parse_args(argv)
    default = default_path("pku_saferlhf/pku_saferlhf_5k.json")
    if args.data is None and default is None:
        raise SystemExit("name the PKU-SafeRLHF json file with --data, or set UNLEARNKIT_DATA.")
    path = Path(args.data or default)
    prompts, answers = pairs(path, args.n)
    print(f"{args.n} answers from {path}; torch threads {torch.get_num_threads()} "
          f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})")
    rows = []
    for spec in [s.strip() for s in args.judges.split(",") if s.strip()]:
        judge = get_judge(spec)
        judge.verdicts(prompts[:16], answers[:16])  # warm-up: loading, first-call allocation
        t0 = time.perf_counter()
        judge.verdicts(prompts, answers)
        seconds = time.perf_counter() - t0
        rows.append((spec, seconds, args.n / seconds))
    base = rows[0][2]
    print(f"\n| judge | seconds for {args.n} | answers/s | ratio to {rows[0][0]} | within 60 s per 1,000 |")
    print("|---|---:|---:|---:|---|")
    for spec, seconds, speed in rows:
        print(f"| {spec} | {seconds:.1f} | {speed:.1f} | {speed / base:.3f} | {'yes' if speed >= 1000 / 60 else 'no'} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
