"""`finmesh slo ...`: the SLOs as code. `finmesh slo rules` writes the Prometheus rule file generated from the
objectives (the committed one, or a time-scaled one for a test against a real Prometheus)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from finmesh.slo import rules

RULE_FILE = Path("deploy/helm/finmesh/files/prometheus/finmesh-rules.yaml")


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def add_parser(sub: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """Add `slo` and its commands to the top-level subcommands; returns `slo`'s own, for more commands."""
    slo = sub.add_parser("slo", help="service-level objectives: Prometheus rules and alerts", description=__doc__)
    commands = slo.add_subparsers(dest="slo_command", required=True, metavar="COMMAND")
    p = commands.add_parser(
        "rules",
        help="write the Prometheus rule file (recording rules and alerts) generated from the objectives",
        description=rules.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", type=Path, help=f"write here instead of stdout (the committed file: {RULE_FILE})")
    p.add_argument(
        "--time-scale",
        type=_positive,
        default=1.0,
        help="multiply every window, `for` and age limit (e.g. 0.00833 for a test scraping every second)",
    )
    p.add_argument(
        "--min-window",
        type=_positive,
        default=4.0,
        help="shortest rate window in seconds after scaling: four scrape intervals (default %(default)s)",
    )
    p.set_defaults(func=cmd_rules)
    return commands


def cmd_rules(args: argparse.Namespace) -> int:
    text = rules.render(rules.rules(args.time_scale, min_window_seconds=args.min_window))
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m finmesh.slo.cli rules ...`, until the top-level CLI has `slo`."""
    parser = argparse.ArgumentParser(prog="finmesh")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
