"""``uv run python -m tests.integration.hostile [--fast] [--class events] [--json out.json]``"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tests.integration.hostile import corpus
from tests.integration.hostile.runner import Options, run_suite


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.integration.hostile", description=__doc__)
    ap.add_argument("--fast", action="store_true", help="the representative subset only")
    ap.add_argument("--class", dest="classes", action="append", default=[],
                    choices=corpus.CLASSES, help="only this class (repeatable)")
    ap.add_argument("--match", help="only cases whose id contains this text")
    ap.add_argument("--seed", type=int, default=corpus.SEED)
    ap.add_argument("--list", action="store_true", help="print the cases and exit")
    ap.add_argument("--json", type=Path, help="write the full report as JSON here")
    ap.add_argument("--bootstrap", help="an existing broker (default: an embedded tansu)")
    ap.add_argument("--base", type=Path, help="working folder (default: a new temp folder)")
    ap.add_argument("--max-failures", type=int, default=10_000,
                    help="list at most this many failures")
    ap.add_argument("--replay-budget", type=float, default=None,
                    help="seconds per class for replaying, wave by wave, the cases a stall hid "
                    f"(default {Options().seq_budget_s:g}, --fast 15)")
    args = ap.parse_args(argv)
    cases = corpus.select(corpus.build(args.seed), fast=args.fast, classes=args.classes,
                          match=args.match)
    if args.list:
        for c in cases:
            print(f"{c.id:70} {c.expected_text()}")
        print(json.dumps(corpus.counts(cases)))
        return 0
    opts = Options()
    if args.fast:
        opts.seq_budget_s, opts.idle_s = 15.0, 15.0
    if args.replay_budget is not None:
        opts.seq_budget_s = args.replay_budget
    print(f"{len(cases)} cases: {json.dumps(corpus.counts(cases))}", flush=True)
    if args.base:
        args.base.mkdir(parents=True, exist_ok=True)
    report = run_suite(cases, bootstrap=args.bootstrap, base=args.base, opts=opts)
    print()
    print(report.text(args.max_failures))
    if args.json:
        args.json.write_text(json.dumps(report.to_json(), indent=1, default=str))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
