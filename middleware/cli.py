"""The `labgate` command.

    labgate run --config FILE           run the daemon (and the demo simulators if FILE has them)
    labgate check-config FILE           validate a configuration; exit 0 if good, 2 if refused
    labgate status [--config FILE | --url URL]   ask a running daemon how it is
    labgate astm decode FILE            print an ASTM capture as JSON lines, one per record
    labgate hl7 decode FILE             print HL7 messages as JSON lines with validation findings
    labgate hprim decode FILE           print HPRIM Santé records as JSON lines with findings
    labgate rules check|test FILE       validate a rule set / run its embedded test cases
    labgate rules activate|versions|history|rollback   rule-set versions (GBUI XI-2 records)
    labgate autovalidation on|off, labgate device block|unblock, labgate audit
    labgate trace ..., labgate outbox list|resend|release, labgate archive purge-bytes
    labgate alarms list|ack, labgate backup|restore|export|doctor (operations)
    labgate replay --rules F [--qc PLAN] (--input EVENTS.jsonl | --from-store) [--output F |
                   --compare OTHER_RULES]
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
    reloading = asyncio.Lock()
    reloads: set[asyncio.Task[None]] = set()

    def on_hangup() -> None:
        task = asyncio.create_task(_reload(gateway, config_path, reloading))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_hangup)
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


async def _reload(gateway: Any, config_path: str, lock: asyncio.Lock) -> None:
    """SIGHUP: read the configuration file again and apply it; a refused file changes nothing
    (the daemon goes on with the configuration it has, and says why in its log)."""
    import structlog

    from middleware.ops.systemd import Notifier

    log = structlog.get_logger("labgate.reload")
    async with lock:
        if gateway.state != "running":
            return
        notifier = Notifier()
        notifier.send("RELOADING=1")
        try:
            try:
                new = await asyncio.to_thread(load_settings, config_path)
            except ConfigError as exc:
                log.error(
                    "reload_refused", file=config_path, problems=[str(p) for p in exc.problems]
                )
                return
            kept = await gateway.reload(new)
            log.info("configuration_reloaded", file=config_path, needs_restart=kept)
        except Exception:
            log.exception("reload_failed")
        finally:
            notifier.send("READY=1")


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
        url = settings.api.local_url
    try:
        # Only /api/health is read (no patient data, no credentials sent), so the daemon's
        # certificate need not name the address it is reached at from its own machine.
        response = httpx.get(
            f"{url.rstrip('/')}/api/health", timeout=5.0, verify=not url.startswith("https")
        )
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


def _hprim_decode(args: argparse.Namespace) -> int:
    from middleware.tools.hprim_decode import main as decode

    return decode([args.file, "--encoding", args.encoding, *(["--strict"] if args.strict else [])])


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
    import contextlib
    from datetime import UTC, datetime

    from middleware.store.history import HistoryError, open_read_only, read_history
    from middleware.validation.qc_plan import load_qc_plan
    from middleware.validation.replay import (
        ReplayError,
        ReplayStats,
        compare,
        read_events,
        replay,
    )

    def refuse(message: str) -> int:
        print(f"labgate: {message}", file=sys.stderr)
        return 2

    def moment(text: str | None, option: str) -> datetime | None:
        if text is None:
            return None
        try:
            at = datetime.fromisoformat(text)
        except ValueError:
            raise ReplayError(f"{option}: not an ISO date or time: {text!r}") from None
        return at if at.tzinfo is not None else at.replace(tzinfo=UTC)

    if not args.from_store and (args.config or args.database or args.since or args.until):
        return refuse("--config, --database, --since and --until go with --from-store")
    ruleset = _load_rules(args.rules)
    other = _load_rules(args.compare) if args.compare else None
    if ruleset is None or (args.compare and other is None):
        return 2
    qc_plan = None
    if args.qc:
        try:
            qc_plan = load_qc_plan(args.qc)
        except ConfigError as exc:
            print(f"labgate: QC plan refused ({len(exc.problems)} problem(s)):", file=sys.stderr)
            for problem in exc.problems:
                print(f"  {problem}", file=sys.stderr)
            return 2
    source = args.input
    stats = ReplayStats()
    with contextlib.ExitStack() as stack:
        try:
            if args.from_store:
                url = args.database
                if url is None:
                    settings = _load(args.config or DEFAULT_CONFIG)
                    if settings is None:
                        return 2
                    url = settings.store.url
                source = url
                since, until = moment(args.since, "--since"), moment(args.until, "--until")
                engine = open_read_only(url)
                stack.callback(engine.dispose)
                events: Any = read_history(engine, since, until)
            else:
                lines = stack.enter_context(open(args.input, encoding="utf-8"))
                events = read_events(lines)
            if other is not None:
                comparison = compare(ruleset, other, list(events), qc_plan=qc_plan)
                summary = {
                    "results": comparison.results,
                    "changed": dict(comparison.changed),
                    "examples": comparison.examples,
                }
                print(json.dumps(summary, ensure_ascii=False, indent=2))
                return 0
            out = (
                stack.enter_context(open(args.output, "w", encoding="utf-8"))
                if args.output
                else sys.stdout
            )
            for decision in replay(ruleset, events, qc_plan, stats):
                out.write(json.dumps(decision, ensure_ascii=False) + "\n")
        except OSError as exc:
            return refuse(f"{exc.filename or source}: {exc.strerror}")
        except (ReplayError, HistoryError) as exc:
            return refuse(f"{source}: {exc}")
    qc = (
        f"{stats.qc_evaluated} evaluated, {stats.qc_runs_rejected} run(s) rejected, "
        f"{stats.reheld_by_qc} result(s) held again"
        if qc_plan is not None
        else "not evaluated without --qc"
    )
    print(
        f"replay: {stats.results} result(s): {stats.autovalidated} autovalidated, "
        f"{stats.held} held; {stats.qc_points} QC result(s): {qc}",
        file=sys.stderr,
    )
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

    hprim_tools = commands.add_parser("hprim", help="tools for HPRIM Santé (French LIS) links")
    hprim_commands = hprim_tools.add_subparsers(dest="hprim_command", required=True)
    hprim_decode = hprim_commands.add_parser(
        "decode", help="print an HPRIM Santé file (2.2, 2.4) as JSON lines, one per record"
    )
    hprim_decode.add_argument("file")
    hprim_decode.add_argument("--encoding", default="latin-1")
    hprim_decode.add_argument(
        "--strict", action="store_true", help="structure warnings make the exit status 1"
    )
    hprim_decode.set_defaults(handler=_hprim_decode)

    rules = commands.add_parser("rules", help="auto-validation rule sets")
    rules_commands = rules.add_subparsers(dest="rules_command", required=True)
    rules_check = rules_commands.add_parser("check", help="validate a rule-set file")
    rules_check.add_argument("file")
    rules_check.set_defaults(handler=_rules_check)
    rules_test = rules_commands.add_parser("test", help="run a rule set's embedded test cases")
    rules_test.add_argument("file")
    rules_test.set_defaults(handler=_rules_test)
    from middleware import archive_cli, governance_cli, ops_cli, users_cli

    governance_cli.add_commands(commands, rules_commands)
    archive_cli.add_commands(commands)
    ops_cli.add_commands(commands)
    users_cli.add_commands(commands)

    replay = commands.add_parser(
        "replay", help="decide past results with a rule set, without touching the store"
    )
    replay.add_argument("--rules", required=True, help="rule-set file")
    replay.add_argument("--qc", metavar="PLAN", help="QC plan: Westgard rules and the QC gate")
    replay_source = replay.add_mutually_exclusive_group(required=True)
    replay_source.add_argument("--input", help="events, JSON lines (results and QC)")
    replay_source.add_argument(
        "--from-store", action="store_true", help="the stored results (read-only)"
    )
    replay_store = replay.add_mutually_exclusive_group()
    replay_store.add_argument(
        "--config", help=f"with --from-store: its store (default {DEFAULT_CONFIG})"
    )
    replay_store.add_argument("--database", metavar="URL", help="with --from-store: this store")
    replay.add_argument("--since", metavar="ISO", help="with --from-store: measured at or after")
    replay.add_argument("--until", metavar="ISO", help="with --from-store: measured before")
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
