"""Command line for the simulators (``labgate simulate ...`` and ``python -m simulators ...``).

analyser --protocol astm (--tcp HOST:PORT | --serial PATH [--baud 9600])
         (--replay FILE | --generate N [--results-per-message K]) [--interval S]
         [--bit-flips P] [--drop-acks P] [--line-rate BPS] [--contention]
         [--disconnect-after N] [--seed S] [--reconnect]
    One JSON line per message sent, then a summary line. Exit 0 if every message was
    acknowledged, 1 otherwise.

analyser --protocol hl7 --tcp HOST:PORT [--oul|--oru] --generate N [--results-per-message K]
         [--tls-ca FILE [--tls-cert FILE --tls-key FILE]] [--seed S]
         [--order-port P [--order-host H] [--order-ack AA|AE|AR|none] [--order-ack-sequence C,C]
          [--order-tls-cert FILE --order-tls-key FILE]]
    An HL7 analyser (MLLP client, TLS with --tls-ca, mutual TLS with a client certificate).
    With --order-port it also listens for the orders labgate pushes (IHE LAW LAB-28), answers
    each ORL^O34 (ACK for ORM^O01) with --order-ack, or not at all with `none`, prints one JSON
    line per order, and keeps listening after its results until Ctrl-C (exit 0).

lis --port P [--host H] [--received-dir D] [--ack AA|AE|AR] [--ack-sequence AE,AE]
    [--ack-delay S] [--silent] [--drop-connection-after N]
    [--tls-cert FILE --tls-key FILE [--tls-ca FILE] [--require-client-cert]]
    A simulated LIS (HL7 over MLLP): one JSON line per message received, until Ctrl-C.

lis-orders --tcp HOST:PORT --specimen S --tests A,B [--oml|--orm] [--patient ID]
           [--priority R|S] [--cancel] [--tls-ca FILE [--tls-cert FILE --tls-key FILE]]
    Push one order to labgate as the LIS; one JSON line with the answer. Exit 0 on AA/CA.

poct1a --tcp HOST:PORT [--operator ID] [--generate N] [--interval S] [--qc-every K] [--mllp]
       [--no-operator-check] [--stay] [--seed S]
    A POCT1-A glucose meter (simulators/poct1a.py): one JSON line per test (its ACK, or why
    the device refused to run it: locked, unknown operator), lock/unlock as they come.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import ssl
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from protocols.errors import LocalProtocolError, RemoteProtocolError
from protocols.hl7 import ACK_CODES
from protocols.hl7.orders_in import parse_order_message
from protocols.hl7.outbound import OrderPatient, OrderSpec
from simulators.analyser import AnalyserSimulator, build_result_message, demo_results
from simulators.connection import Endpoint, SerialEndpoint, TcpEndpoint
from simulators.faults import Faults
from simulators.hl7_analyser import NO_ANSWER, Hl7AnalyserSimulator
from simulators.lis import LisSimulator, ReceivedMessage
from simulators.poct1a import add_parser as add_poct1a_parser
from simulators.poct1a import run_cli as run_poct1a
from simulators.replay import messages_from_file, specimen_of
from simulators.tls import client_context, server_context

__all__ = ["main"]

_INTERRUPTED = 130  # the shell's code for "stopped by SIGINT"


def main(argv: list[str]) -> int:
    """Run one simulator; returns the process exit code."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed by argparse
        return exc.code if isinstance(exc.code, int) else 2
    try:
        if args.command == "analyser" and args.protocol == "hl7":
            return asyncio.run(_run_hl7_analyser(args))
        if args.command == "analyser":
            return asyncio.run(_run_analyser(args))
        if args.command == "lis-orders":
            return asyncio.run(_run_lis_orders(args))
        if args.command == "poct1a":
            return asyncio.run(run_poct1a(args))
        return asyncio.run(_run_lis(args))
    except KeyboardInterrupt:
        # The coroutine has already been cancelled and has closed its connections.
        listening = args.command == "lis" or getattr(args, "order_port", None) is not None
        return 0 if listening else _INTERRUPTED


# --- analyser ----------------------------------------------------------------------------


async def _run_analyser(args: argparse.Namespace) -> int:
    try:
        messages = _workload(args)
        faults = Faults(
            bit_flips=args.bit_flips,
            drop_acks=args.drop_acks,
            line_rate=args.line_rate,
            contention=args.contention,
            disconnect_after=args.disconnect_after,
            seed=args.seed,
        )
    except (OSError, ValueError) as exc:
        print(f"simulate analyser: {exc}", file=sys.stderr)
        return 2
    endpoint: Endpoint = args.tcp or SerialEndpoint(args.serial, args.baud)
    analyser = AnalyserSimulator(
        endpoint=endpoint, faults=faults, reconnect=args.reconnect, max_text=args.max_text
    )
    try:
        await analyser.connect()
    except (OSError, TimeoutError) as exc:
        print(f"simulate analyser: cannot open {endpoint}: {exc}", file=sys.stderr)
        return 1
    started = time.monotonic()
    count = acknowledged = 0
    try:
        for number, (specimen, text) in enumerate(messages, 1):
            if number > 1 and args.interval:
                await asyncio.sleep(args.interval)
            begin = time.monotonic()
            ok = await analyser.send(text)
            count += 1
            acknowledged += ok
            _emit(
                message=number,
                specimen=specimen,
                acknowledged=ok,
                seconds=round(time.monotonic() - begin, 4),
            )
    finally:
        await analyser.close()
        _emit(
            summary={
                "messages": count,
                "acknowledged": acknowledged,
                "failed": count - acknowledged,
                "failed_transfers": analyser.failed,
                "connections": analyser.connections,
                "bytes_sent": analyser.bytes_out,
                "seconds": round(time.monotonic() - started, 3),
                "faults": faults.counts.as_dict(),
            }
        )
    return 0 if acknowledged == count else 1


def _workload(args: argparse.Namespace) -> Iterator[tuple[str | None, bytes]]:
    """(specimen, message text) pairs: a replayed capture, or generated results."""
    if args.replay is not None:
        replayed = messages_from_file(args.replay)  # read now: errors before connecting
        return ((specimen_of(text), text) for text in replayed)
    return _generated(args.generate, args.results_per_message, random.Random(args.seed))


def _generated(count: int, per_message: int, rng: random.Random) -> Iterator[tuple[str, bytes]]:
    for number in range(1, count + 1):
        specimen = f"SIM{number:07d}"
        patient = f"PAT{rng.randint(1, 500):05d}"
        yield specimen, build_result_message(specimen, patient, demo_results(per_message, rng))


# --- HL7 analyser and orders ------------------------------------------------------------


def _client_tls(args: argparse.Namespace) -> ssl.SSLContext | None:
    """The client TLS context the --tls-* options ask for (None: clear MLLP)."""
    if args.tls_ca is None and args.tls_cert is None:
        return None
    return client_context(args.tls_ca, certfile=args.tls_cert, keyfile=args.tls_key)


async def _run_hl7_analyser(args: argparse.Namespace) -> int:
    if args.tcp is None or args.generate is None:
        print("simulate analyser: --protocol hl7 needs --tcp and --generate", file=sys.stderr)
        return 2
    try:
        context = _client_tls(args)
        order_context = (
            server_context(args.order_tls_cert, args.order_tls_key)
            if args.order_tls_cert is not None
            else None
        )
    except (OSError, ValueError) as exc:
        print(f"simulate analyser: TLS: {exc}", file=sys.stderr)
        return 2
    sim = Hl7AnalyserSimulator(
        args.tcp.host,
        args.tcp.port,
        ssl=context,
        kind=args.hl7_kind,
        seed=args.seed,
        order_ack=args.order_ack,
        order_acks=args.order_ack_sequence,
        on_order=_print_order,
    )
    if args.order_port is not None:
        try:
            port = await sim.start_order_listener(
                args.order_host, args.order_port, ssl=order_context
            )
        except OSError as exc:
            where = f"{args.order_host}:{args.order_port}"
            print(f"simulate analyser: cannot listen for orders on {where}: {exc}", file=sys.stderr)
            return 1
        _emit(order_listener=f"{args.order_host}:{port}")
    try:
        await sim.connect()
    except (OSError, TimeoutError) as exc:
        await sim.close()
        print(f"simulate analyser: cannot open {args.tcp}: {exc}", file=sys.stderr)
        return 1
    started = time.monotonic()
    count = acknowledged = 0
    rng = random.Random(args.seed)
    try:
        try:
            for number in range(1, args.generate + 1):
                if number > 1 and args.interval:
                    await asyncio.sleep(args.interval)
                specimen = f"SIM{number:07d}"
                begin = time.monotonic()
                try:
                    ack = await sim.send_results(
                        specimen, f"PAT{rng.randint(1, 500):05d}", args.results_per_message
                    )
                    code: str | None = ack.code
                except (OSError, TimeoutError) as exc:
                    code = None
                    _emit(message=number, specimen=specimen, error=str(exc) or type(exc).__name__)
                    break
                finally:
                    count += 1
                acknowledged += ack.accepted
                _emit(
                    message=number,
                    specimen=specimen,
                    ack=code,
                    seconds=round(time.monotonic() - begin, 4),
                )
        finally:
            _emit(
                summary={
                    "messages": count,
                    "acknowledged": acknowledged,
                    "failed": count - acknowledged,
                    "seconds": round(time.monotonic() - started, 3),
                }
            )
        if args.order_port is not None:
            await asyncio.Event().wait()  # take orders until Ctrl-C cancels us
    finally:
        await sim.close()
    return 0 if acknowledged == count else 1


def _print_order(message: bytes, answer: str) -> None:
    """One JSON line per order labgate pushed: its type, specimens, actions and our answer."""
    try:
        read = parse_order_message(message)
    except RemoteProtocolError as exc:
        _emit(order=None, error=str(exc), answer=answer)
        return
    _emit(
        order=read.control_id,
        type=f"{read.message_type}^{read.trigger}",
        specimens=[o.specimen_id for o in read.orders],
        actions=[o.order_control for o in read.orders],
        tests=[list(o.tests) for o in read.orders],
        answer=answer,
    )


async def _run_lis_orders(args: argparse.Namespace) -> int:
    try:
        context = _client_tls(args)
        order = OrderSpec(
            specimen_id=args.specimen,
            tests=tuple(args.tests),
            patient=OrderPatient(args.patient) if args.patient else None,
            priority=args.priority,
            action="C" if args.cancel else "N",
        )
    except (OSError, ValueError, LocalProtocolError) as exc:
        print(f"simulate lis-orders: {exc}", file=sys.stderr)
        return 2
    lis = LisSimulator()
    try:
        acks = await lis.send_orders(
            args.tcp.host, args.tcp.port, [order], kind=args.order_kind, ssl=context
        )
    except (OSError, TimeoutError) as exc:
        print(f"simulate lis-orders: {args.tcp}: {exc or type(exc).__name__}", file=sys.stderr)
        return 1
    for ack in acks:
        _emit(specimen=args.specimen, ack=ack.code, text=ack.text, control_id=ack.control_id)
    return 0 if all(ack.accepted for ack in acks) else 1


# --- LIS ---------------------------------------------------------------------------------


async def _run_lis(args: argparse.Namespace) -> int:
    def report(message: ReceivedMessage) -> None:
        parsed = message.parsed
        _emit(
            received=len(lis.received),
            control_id=parsed.control_id if parsed is not None else None,
            observations=len(parsed.observations) if parsed is not None else 0,
            ack=message.ack_code,
            error=message.error,
        )

    try:
        context = (
            server_context(
                args.tls_cert,
                args.tls_key,
                cafile=args.tls_ca,
                require_client_cert=args.require_client_cert,
            )
            if args.tls_cert is not None
            else None
        )
    except (OSError, ValueError) as exc:
        print(f"simulate lis: TLS: {exc}", file=sys.stderr)
        return 2
    lis = LisSimulator(
        args.host,
        args.port,
        ssl=context,
        received_dir=args.received_dir,
        ack_code=args.ack,
        ack_delay=args.ack_delay,
        silent=args.silent,
        ack_codes=args.ack_sequence,
        drop_connection_after=args.drop_connection_after,
        on_message=report,
    )
    try:
        port = await lis.start()
    except OSError as exc:
        print(f"simulate lis: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    _emit(listening=f"{args.host}:{port}", received_dir=args.received_dir)
    try:
        await asyncio.Event().wait()  # until Ctrl-C cancels us
    finally:
        await lis.close()
    return 0


# --- arguments ---------------------------------------------------------------------------


def _emit(**fields: Any) -> None:
    print(json.dumps(fields, default=str), flush=True)


def _tcp(text: str) -> TcpEndpoint:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return TcpEndpoint(host, int(port))


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"a probability is between 0 and 1, not {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {text}")
    return value


def _ack_code(text: str) -> str:
    if text not in ACK_CODES:
        raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(sorted(ACK_CODES))}")
    return text


def _ack_codes(text: str) -> list[str]:
    return [_ack_code(code.strip()) for code in text.split(",") if code.strip()]


def _order_answer(text: str) -> str:
    return text if text == NO_ANSWER else _ack_code(text)


def _order_answers(text: str) -> list[str]:
    return [_order_answer(code.strip()) for code in text.split(",") if code.strip()]


def _test_codes(text: str) -> list[str]:
    codes = [code.strip() for code in text.split(",") if code.strip()]
    if not codes:
        raise argparse.ArgumentTypeError("expected test codes such as GLU,K")
    return codes


def _tls_client_options(parser: argparse.ArgumentParser) -> None:
    tls = parser.add_argument_group("TLS (HL7 over MLLP)")
    tls.add_argument("--tls-ca", metavar="FILE", help="CA that signed labgate's certificate")
    tls.add_argument("--tls-cert", metavar="FILE", help="client certificate (mutual TLS)")
    tls.add_argument("--tls-key", metavar="FILE", help="key of --tls-cert")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="labgate simulate",
        description="Simulated analysers and LIS, with fault injection.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    analyser = commands.add_parser(
        "analyser",
        help="a simulated analyser sending results to labgate",
        description="Send results as an ASTM analyser (E1381 instrument side) over TCP or serial.",
    )
    analyser.add_argument("--protocol", choices=["astm", "hl7"], default="astm")
    where = analyser.add_mutually_exclusive_group(required=True)
    where.add_argument("--tcp", metavar="HOST:PORT", type=_tcp, help="labgate's TCP port")
    where.add_argument("--serial", metavar="PATH", help="serial port (or pty slave) path")
    analyser.add_argument("--baud", type=int, default=9600, help="serial speed (default 9600)")
    what = analyser.add_mutually_exclusive_group(required=True)
    what.add_argument("--replay", metavar="FILE", type=Path, help="send the messages of a capture")
    what.add_argument("--generate", metavar="N", type=int, help="send N generated messages")
    analyser.add_argument("--results-per-message", metavar="K", type=int, default=5)
    analyser.add_argument(
        "--interval", metavar="S", type=float, default=0.0, help="seconds between messages"
    )
    analyser.add_argument("--max-text", type=int, default=240, help="text bytes per frame")
    faults = analyser.add_argument_group("faults")
    faults.add_argument(
        "--bit-flips",
        metavar="P",
        type=_probability,
        default=0.0,
        help="probability of flipping one bit in a frame (the host must NAK it)",
    )
    faults.add_argument(
        "--drop-acks",
        metavar="P",
        type=_probability,
        default=0.0,
        help="probability of ignoring each ACK from the host (timers expire, messages resent)",
    )
    faults.add_argument(
        "--line-rate",
        metavar="BPS",
        type=_positive_float,
        help="pace outgoing bytes (bytes/s; 960 = 9600 baud 8N1)",
    )
    faults.add_argument(
        "--contention",
        action="store_true",
        help="hold each message until the host sends ENQ (at most 5 s), then bid with ENQ too",
    )
    faults.add_argument(
        "--disconnect-after",
        metavar="N",
        type=int,
        help="drop the connection once after N bytes, then reconnect and resend",
    )
    faults.add_argument("--seed", type=int, help="seed for reproducible faults and workload")
    hl7 = analyser.add_mutually_exclusive_group()
    hl7.add_argument(
        "--oul",
        dest="hl7_kind",
        action="store_const",
        const="OUL",
        help="HL7: send OUL^R22 (IHE LAW, default)",
    )
    hl7.add_argument(
        "--oru", dest="hl7_kind", action="store_const", const="ORU", help="HL7: send ORU^R01"
    )
    analyser.set_defaults(hl7_kind="OUL")
    _tls_client_options(analyser)
    pushed = analyser.add_argument_group("orders pushed by labgate (HL7, IHE LAW LAB-28)")
    pushed.add_argument(
        "--order-port",
        metavar="P",
        type=int,
        help="listen for labgate's OML^O33 / ORM^O01 on this port (0: any free port)",
    )
    pushed.add_argument("--order-host", metavar="H", default="127.0.0.1")
    pushed.add_argument(
        "--order-ack",
        metavar="CODE",
        type=_order_answer,
        default="AA",
        help=f"answer to each order: AA (default), AE, AR..., or {NO_ANSWER} (stay silent)",
    )
    pushed.add_argument(
        "--order-ack-sequence",
        metavar="CODES",
        type=_order_answers,
        default=[],
        help=f"answers to the first orders, e.g. {NO_ANSWER},AE (then --order-ack)",
    )
    pushed.add_argument("--order-tls-cert", metavar="FILE", help="serve orders over TLS")
    pushed.add_argument("--order-tls-key", metavar="FILE", help="key of --order-tls-cert")
    analyser.add_argument(
        "--reconnect",
        action="store_true",
        help="reopen a connection the host closed and resend (default: count as failed)",
    )

    lis = commands.add_parser(
        "lis",
        help="a simulated LIS receiving labgate's HL7 results",
        description="Listen for HL7 over MLLP and acknowledge, until Ctrl-C.",
    )
    lis.add_argument("--port", type=int, required=True, help="TCP port (0: any free port)")
    lis.add_argument("--host", default="127.0.0.1")
    lis.add_argument("--received-dir", metavar="D", help="keep every message received here")
    lis.add_argument("--ack", type=_ack_code, default="AA", help="answer code (default AA)")
    lis.add_argument(
        "--ack-sequence",
        metavar="CODES",
        type=_ack_codes,
        default=[],
        help="codes for the first answers, e.g. AE,AE (then --ack)",
    )
    lis.add_argument("--ack-delay", metavar="S", type=float, default=0.0)
    lis.add_argument("--silent", action="store_true", help="never answer")
    lis.add_argument(
        "--drop-connection-after",
        metavar="N",
        type=int,
        help="close the connection instead of answering the message after N messages (once)",
    )
    tls = lis.add_argument_group("TLS")
    tls.add_argument("--tls-cert", metavar="FILE", help="serve MLLP over TLS with this cert")
    tls.add_argument("--tls-key", metavar="FILE", help="key of --tls-cert")
    tls.add_argument("--tls-ca", metavar="FILE", help="CA for client certificates")
    tls.add_argument(
        "--require-client-cert", action="store_true", help="mutual TLS (needs --tls-ca)"
    )

    orders = commands.add_parser(
        "lis-orders",
        help="push an order to labgate as the LIS",
        description="Send one OML^O33 (or ORM^O01) order to labgate over MLLP; print its answer.",
    )
    orders.add_argument("--tcp", metavar="HOST:PORT", type=_tcp, required=True)
    orders.add_argument("--specimen", required=True, help="specimen id (tube barcode)")
    orders.add_argument("--tests", type=_test_codes, required=True, help="e.g. GLU,K")
    orders.add_argument("--patient", metavar="ID", help="patient id (PID-3)")
    orders.add_argument("--priority", choices=["R", "S"], default="R")
    orders.add_argument("--cancel", action="store_true", help="cancel (ORC-1 CA), not new")
    kind = orders.add_mutually_exclusive_group()
    kind.add_argument("--oml", dest="order_kind", action="store_const", const="OML")
    kind.add_argument("--orm", dest="order_kind", action="store_const", const="ORM")
    orders.set_defaults(order_kind="OML")
    _tls_client_options(orders)
    add_poct1a_parser(commands)  # `labgate simulate poct1a`: a point-of-care device
    return parser
