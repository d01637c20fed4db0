"""The `labgate` command.

    labgate run --config FILE           run the daemon (and the demo simulators if FILE has them)
    labgate check-config FILE           validate a configuration; exit 0 if good, 2 if refused
    labgate status [--config FILE | --url URL]   ask a running daemon how it is
    labgate astm decode FILE            print an ASTM capture as JSON lines, one per record
    labgate hl7 decode FILE             print HL7 messages as JSON lines with validation findings
    labgate rules check|test FILE       validate a rule set / run its embedded test cases
    labgate replay --rules F --input EVENTS.jsonl [--output F | --compare OTHER_RULES]
    labgate simulate analyser|lis ...   run a simulated analyser or LIS (fault injection)

Exit codes: 0 success, 1 the daemon or the request failed, 2 bad input (usage, configuration).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from typing import Any

import httpx

from middleware.config import ConfigError, Settings, load_settings

__all__ = ["main"]

DEFAULT_CONFIG = "config/demo.yaml"


def _load(path: str) -> Settings | None:
    try:
        return load_settings(path)
    except ConfigError as exc:
        print(f"labgate: configuration refused ({len(exc.problems)} problem(s)):", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return None


def _check_config(args: argparse.Namespace) -> int:
    settings = _load(args.file)
    if settings is None:
        return 2
    print(f"{args.file}: OK ({len(settings.instruments)} instrument(s), LIS {settings.lis.name!r})")
    return 0


def _run(args: argparse.Namespace) -> int:
    settings = _load(args.config)
    if settings is None:
        return 2
    from middleware.logging import configure_logging

    configure_logging(json=args.json_logs, level=args.log_level)
    try:
        asyncio.run(_serve(settings, args.config))
    except KeyboardInterrupt:
        pass
    return 0


async def _serve(settings: Settings, config_path: str) -> None:
    from middleware.gateway import Gateway

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    gateway = Gateway(settings)
    extra = None
    lis_simulator = None
    if settings.demo is not None:
        from middleware.demo import run_demo, start_lis_simulator

        lis_simulator = await start_lis_simulator(gateway)
        extra = run_demo
    banner = asyncio.create_task(_announce(gateway, config_path, lis_simulator is not None))
    try:
        await gateway.run(stop, extra)
    finally:
        banner.cancel()
        if lis_simulator is not None:
            await lis_simulator.close()


async def _announce(gateway: Any, config_path: str, demo_lis: bool) -> None:
    await gateway.ready.wait()
    settings = gateway.settings
    host, port = gateway.addresses["api"]
    lines = [
        "",
        f"labgate {gateway.version} is running with {config_path}",
        f"  health      http://{host}:{port}/api/health",
        f"              (or: labgate status --config {config_path})",
        f"  metrics     http://{host}:{port}/metrics",
        f"  database    {settings.store.url}",
    ]
    for instrument in settings.instruments:
        address = "{}:{}".format(*gateway.addresses[instrument.name])
        lines.append(
            f"  analyser    {instrument.name} ({instrument.protocol}) listening on {address}"
        )
    lis = settings.lis
    lines.append(f"  LIS         {lis.name} at {lis.host}:{lis.port} (HL7 v2.5.1 over MLLP)")
    if demo_lis and settings.demo and settings.demo.lis:
        lines.append(
            f"  simulated LIS keeps every message it receives in {settings.demo.lis.received_dir}/"
        )
    lines += ["  Ctrl-C stops everything.", ""]
    print("\n".join(lines), file=sys.stderr, flush=True)


def _status(args: argparse.Namespace) -> int:
    url = args.url
    if url is None:
        settings = _load(args.config)
        if settings is None:
            return 2
        url = f"http://{settings.api.host}:{settings.api.port}"
    try:
        response = httpx.get(f"{url.rstrip('/')}/api/health", timeout=5.0)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        print(f"labgate: no daemon answering at {url}: {exc}", file=sys.stderr)
        return 1
    health = response.json()
    if args.json:
        print(json.dumps(health, indent=2))
        return 0
    print(f"{health['gateway']} {health['status']}", end=" ")
    print(f"(version {health['version']}, since {health['started_at']})")
    print(f"outbox: {health['outbox_depth']} message(s) waiting for the LIS")
    columns = ("connection", "protocol", "transport", "state")
    counters = ("received", "stored", "delivered", "errors")
    print(*(f"{c:<13}" for c in columns), *(f"{c:>9}" for c in counters))
    for c in health["connections"]:
        print(*(f"{c[k]:<13}" for k in ("name", *columns[1:])), *(f"{c[k]:>9}" for k in counters))
    return 0


def _astm_decode(args: argparse.Namespace) -> int:
    from middleware.tools.astm_decode import main as decode

    return decode([args.file, "--encoding", args.encoding])


def _hl7_decode(args: argparse.Namespace) -> int:
    from middleware.tools.hl7_decode import main as decode

    return decode([args.file, *(["--no-validate"] if args.no_validate else [])])


def _load_rules(path: str) -> Any:
    from middleware.validation.ruleset import load_ruleset

    try:
        return load_ruleset(path)
    except ConfigError as exc:
        print(f"labgate: rule set refused ({len(exc.problems)} problem(s)):", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return None


def _rules_check(args: argparse.Namespace) -> int:
    ruleset = _load_rules(args.file)
    if ruleset is None:
        return 2
    print(
        f"{args.file}: OK ({ruleset.name} {ruleset.version}, {len(ruleset.tests)} test(s), "
        f"{len(ruleset.cases)} case(s), biologist {ruleset.responsible_biologist})"
    )
    return 0


def _rules_test(args: argparse.Namespace) -> int:
    from middleware.validation.cases import run_cases

    ruleset = _load_rules(args.file)
    if ruleset is None:
        return 2
    outcomes = run_cases(ruleset)
    for outcome in outcomes:
        mark = "ok  " if outcome.passed else "FAIL"
        line = f"{mark} {outcome.name}"
        if not outcome.passed:
            line += f": expected {outcome.expected}, obtained {outcome.obtained}"
        print(line)
    failed = sum(not o.passed for o in outcomes)
    print(f"{len(outcomes) - failed} passed, {failed} failed")
    return 1 if failed or not outcomes else 0


def _replay(args: argparse.Namespace) -> int:
    from middleware.validation.replay import ReplayError, compare, read_events, replay

    ruleset = _load_rules(args.rules)
    other = _load_rules(args.compare) if args.compare else None
    if ruleset is None or (args.compare and other is None):
        return 2
    try:
        with open(args.input, encoding="utf-8") as lines:
            events = list(read_events(lines))
    except OSError as exc:
        print(f"labgate: cannot read {args.input}: {exc.strerror}", file=sys.stderr)
        return 2
    except ReplayError as exc:
        print(f"labgate: {args.input}: {exc}", file=sys.stderr)
        return 2
    try:
        if other is not None:
            comparison = compare(ruleset, other, events)
            print(
                json.dumps(
                    {
                        "results": comparison.results,
                        "changed": dict(comparison.changed),
                        "examples": comparison.examples,
                    },
                    ensure_ascii=False,
                    indent=2,
                )
            )
            return 0
        out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
        try:
            for decision in replay(ruleset, events):
                out.write(json.dumps(decision, ensure_ascii=False) + "\n")
        finally:
            if out is not sys.stdout:
                out.close()
    except ReplayError as exc:
        print(f"labgate: {args.input}: {exc}", file=sys.stderr)
        return 2
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="labgate", description="Instrument middleware for medical laboratories."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the daemon")
    run.add_argument(
        "--config", default=DEFAULT_CONFIG, help=f"configuration file (default {DEFAULT_CONFIG})"
    )
    run.add_argument(
        "--json-logs", action="store_true", default=None, help="JSON logs even on a terminal"
    )
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    run.set_defaults(handler=_run)

    check = commands.add_parser("check-config", help="validate a configuration file")
    check.add_argument("file")
    check.set_defaults(handler=_check_config)

    astm_tools = commands.add_parser("astm", help="tools for ASTM interfaces")
    astm_commands = astm_tools.add_subparsers(dest="astm_command", required=True)
    decode = astm_commands.add_parser(
        "decode",
        help="print a capture (framed or not, raw bytes or <STX>-style text) as JSON lines",
    )
    decode.add_argument("file")
    decode.add_argument("--encoding", default="latin-1")
    decode.set_defaults(handler=_astm_decode)

    # Listed for --help only: main() hands `simulate ...` to simulators/cli.py as it is.
    commands.add_parser("simulate", help="run a simulated analyser or LIS (labgate simulate -h)")

    hl7_tools = commands.add_parser("hl7", help="tools for HL7 interfaces")
    hl7_commands = hl7_tools.add_subparsers(dest="hl7_command", required=True)
    hl7_decode = hl7_commands.add_parser(
        "decode", help="print HL7 messages (MLLP, plain or [VT]-style text) as JSON lines"
    )
    hl7_decode.add_argument("file")
    hl7_decode.add_argument("--no-validate", action="store_true", help="skip hl7apy checks")
    hl7_decode.set_defaults(handler=_hl7_decode)

    rules = commands.add_parser("rules", help="auto-validation rule sets")
    rules_commands = rules.add_subparsers(dest="rules_command", required=True)
    rules_check = rules_commands.add_parser("check", help="validate a rule-set file")
    rules_check.add_argument("file")
    rules_check.set_defaults(handler=_rules_check)
    rules_test = rules_commands.add_parser("test", help="run a rule set's embedded test cases")
    rules_test.add_argument("file")
    rules_test.set_defaults(handler=_rules_test)

    replay = commands.add_parser(
        "replay", help="decide past results with a rule set, without touching the store"
    )
    replay.add_argument("--rules", required=True, help="rule-set file")
    replay.add_argument("--input", required=True, help="events, JSON lines (results and QC)")
    replay.add_argument("--output", help="decisions, JSON lines (default: standard output)")
    replay.add_argument("--compare", metavar="OTHER_RULES", help="count what changes with another")
    replay.set_defaults(handler=_replay)

    status = commands.add_parser("status", help="show a running daemon's health")
    status.add_argument(
        "--config", default=DEFAULT_CONFIG, help="read the API address from this file"
    )
    status.add_argument("--url", help="API base URL, e.g. http://127.0.0.1:8080")
    status.add_argument("--json", action="store_true", help="print the raw JSON")
    status.set_defaults(handler=_status)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["simulate"]:
        # The simulators have their own command line (simulators/cli.py); pass it all through.
        from simulators.cli import main as simulate

        return simulate(argv[1:])
    args = _parser().parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
