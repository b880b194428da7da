"""``python -m chaos``: a seeded, reproducible fault-injection campaign, its report and the checker's verdict.

    .venv/bin/python -m chaos                                  # cluster, 50 random rounds, seed 1
    .venv/bin/python -m chaos --mode ha --rounds 10 --seed 7
    .venv/bin/python -m chaos --mode standalone --each 3       # every fault of the mode in turn, 3 times

The report goes to chaos/results/<mode>-seed<seed>/ (history.jsonl, summary.md, summary.json, plots,
the processes' logs). Exit status: 0 when the checker finds nothing, 1 when it finds a violation,
2 when the campaign itself could not run. Partitions and full disks need root; without it they
are left out of the plan, and the report says so.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import traceback
from pathlib import Path

from chaos import ROOT, report
from chaos.campaign import CampaignSpec, run
from chaos.faults import MODE_FAULTS, FaultKind, Mode
from chaos.load import LoadSpec


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m chaos", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=[m.value for m in Mode], default=Mode.CLUSTER.value)
    parser.add_argument("--rounds", type=int, default=50, help="random rounds (default 50)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the plan and of the load's choices (default 1)")
    parser.add_argument("--each", type=int, default=0,
                        help="instead of random rounds: every fault of the mode in turn, this many times")
    parser.add_argument("--faults", default="",
                        help="comma-separated fault kinds to use, of the mode's: " +
                             "; ".join(f"{m}: {','.join(k.value for k in MODE_FAULTS[m])}" for m in Mode))
    parser.add_argument("--repos", type=int, default=2)
    parser.add_argument("--writers", type=int, default=3, help="single writers, each on its own branch")
    parser.add_argument("--racers", type=int, default=2, help="writers racing on one branch")
    parser.add_argument("--readers", type=int, default=1)
    parser.add_argument("--nodes", type=int, default=3, help="cluster nodes (default 3)")
    parser.add_argument("--out", type=Path, default=ROOT / "chaos" / "results",
                        help="where reports go (default: chaos/results)")
    parser.add_argument("--keep", action="store_true", help="keep the processes' data dirs (printed at the end)")
    args = parser.parse_args(argv)
    if args.rounds < 1 and not args.each:
        parser.error("--rounds must be at least 1")
    try:
        args.faults = tuple(FaultKind(k.strip()) for k in args.faults.split(",") if k.strip())
    except ValueError as exc:
        parser.error(str(exc))
    foreign = [k for k in args.faults if k not in MODE_FAULTS[Mode(args.mode)]]
    if foreign:
        parser.error(f"not a fault of mode {args.mode}: {', '.join(foreign)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    spec = CampaignSpec(mode=Mode(args.mode), rounds=args.rounds, seed=args.seed, each=args.each, nodes=args.nodes,
                        faults=args.faults, load=LoadSpec(repos=args.repos, writers=args.writers, racers=args.racers,
                                      readers=args.readers))
    name = f"{spec.mode}-seed{spec.seed}" + (f"-each{spec.each}" if spec.each else "") + \
        "".join(f"-{k}" for k in spec.faults)
    out = args.out.resolve() / name
    shutil.rmtree(out, ignore_errors=True)
    workdir = Path(tempfile.mkdtemp(prefix="bulwark-chaos-"))
    try:
        result = run(spec, workdir, out)
    except Exception:
        traceback.print_exc()
        print(f"the campaign could not run; its history so far is in {out / 'history.jsonl'}", file=sys.stderr)
        return 2
    finally:
        if args.keep:
            print(f"data dirs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    for path in report.write(result, out):
        print(f"wrote {os.path.relpath(path, Path.cwd())}")
    print()
    print(report.markdown(result))
    return 0 if result.verdict.valid else 1


if __name__ == "__main__":
    sys.exit(main())
