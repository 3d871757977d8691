"""`dynamo-sidecar` command line: run, demo, diagnose, check-config, canary, alerts, inject, webhook, verify, audit."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import socket
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, NoReturn

from agent import __version__
from agent.config import FIELDS, Config, ConfigError, default_text, env_name, load_config, value_form
from agent.core import exitcodes, log, redact


class CliUsageError(Exception):
    """A usage error found after parsing: one line after the subcommand's name, exit 64."""


class CliParser(argparse.ArgumentParser):
    """argparse with the project's exit codes: a usage error is one line and EX_USAGE (64), so
    it never reads as diagnose's or audit's "critical" (2), which argparse would exit with."""

    def error(self, message: str) -> NoReturn:
        self.exit(exitcodes.USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


# Other spellings of a flag: `demo --port` and `run --listen-port` name the same thing.
FLAG_ALIASES = {"listen_port": ["--port"]}


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", metavar="FILE", help="YAML file with config keys (see docs/configuration.md)"
    )
    group = parser.add_argument_group("config keys (each also settable as DYN_SIDECAR_<KEY>)")
    for field in dataclasses.fields(Config):
        default = default_text(field)
        group.add_argument(
            f"--{field.name.replace('_', '-')}",
            *FLAG_ALIASES.get(field.name, []),
            dest=f"cfg_{field.name}",
            default=None,
            metavar=value_form(field),
            # argparse expands % in help text: a doc's literal % must not break --help.
            help=f"{field.metadata['doc']} [default {default}; env {env_name(field.name)}]".replace(
                "%", "%%"
            ),
        )


def _config_from(args: argparse.Namespace) -> Config:
    overrides = {
        key: getattr(args, f"cfg_{key}") for key in FIELDS if getattr(args, f"cfg_{key}", None) is not None
    }
    return load_config(args.config, overrides=overrides)


def _cmd_run(args: argparse.Namespace) -> int:
    from agent.runtime.sidecar import Sidecar

    config = _config_from(args)
    log.configure(config.log_level, config.log_format)

    async def run_and_exit() -> int:
        code = await Sidecar(config).run_until_signal()
        # Everything is recorded and flushed. A worker thread still blocked (a hung NVML
        # call, a stuck /proc read) must not keep the process past its grace period:
        # leave without joining the thread pool.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    try:
        return asyncio.run(run_and_exit())
    except OSError as exc:
        print(
            f"dynamo-sidecar: cannot listen on {config.listen_host}:{config.listen_port}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return exitcodes.USAGE


def _cmd_check_config(args: argparse.Namespace) -> int:
    config = _config_from(args)
    print(json.dumps(config.redacted(), indent=2))
    return 0


def _cmd_alerts(args: argparse.Namespace) -> int:
    from agent.diagnose.alerts import alerts_yaml

    print(alerts_yaml(_config_from(args).thresholds), end="")
    return 0


def _inject_options(args: argparse.Namespace) -> Any:
    """inject's and webhook's Options from their flags. Exit 64 in one line when no image is
    given, or naming the flag whose value would give a pod that cannot start."""
    from agent.tools.inject import IMAGE_ENV, Options, option_problems

    image, where = args.image, "--image"
    if image is None:
        image, where = os.environ.get(IMAGE_ENV), IMAGE_ENV
    if image is None:
        raise CliUsageError(
            f"no sidecar image given: pass --image <registry>/dynamo-sidecar:{__version__} or set {IMAGE_ENV}"
            " (no image is published: build and push one as README's 'Deploy on Kubernetes' shows)"
        )
    options = Options(image=image.strip(), native=not args.regular_container)
    for name in ("cpu_request", "memory_request", "memory_limit"):
        value = getattr(args, f"sidecar_{name}")
        if value is not None:
            setattr(options, name, value.strip())
    for name, value, expected in option_problems(options)[:1]:
        flag = where if name == "image" else f"--sidecar-{name.replace('_', '-')}"
        raise ConfigError(flag, value, expected)
    for item in args.sidecar_config or []:
        key, sep, value = item.partition("=")
        if not sep or key.strip() not in FIELDS:
            raise ConfigError(
                "--sidecar-config", item, "KEY=VALUE with a config key (see docs/configuration.md)"
            )
        options.config[key.strip()] = value
    return options


def _add_inject_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--image",
        default=None,
        help="the sidecar image (required: no image is published; or set DYN_SIDECAR_IMAGE)",
    )
    parser.add_argument(
        "--regular-container", action="store_true", help="a regular container instead of a native sidecar"
    )
    parser.add_argument("--sidecar-cpu-request", metavar="QUANTITY", help="default 50m")
    parser.add_argument("--sidecar-memory-request", metavar="QUANTITY", help="default 64Mi")
    parser.add_argument("--sidecar-memory-limit", metavar="QUANTITY", help="default 160Mi")
    parser.add_argument(
        "--sidecar-config",
        action="append",
        metavar="KEY=VALUE",
        help="a config key for every injected sidecar",
    )


def _cmd_inject(args: argparse.Namespace) -> int:
    """Like `linkerd inject`: every document of the input, Dynamo pods with the sidecar."""
    import yaml

    from agent.tools.inject import InjectError, inject

    documents = _read_yaml_documents(args.file)
    options = _inject_options(args)
    out = []
    try:
        for document in documents:
            if document is None:
                continue
            if (
                isinstance(document, dict)
                and document.get("kind") == "List"
                and isinstance(document.get("items"), list)
            ):
                document = {
                    **document,
                    "items": [_inject_one(inject, item, options) for item in document["items"]],
                }
            else:
                document = _inject_one(inject, document, options)
            out.append(document)
    except InjectError as exc:
        # Nothing on stdout: `inject -f x | kubectl apply -f -` must not ship pods without the
        # sidecar (kubectl fails on empty input even where the shell ignores our exit code).
        print(f"dynamo-sidecar inject: {exc}; nothing written", file=sys.stderr)
        return exitcodes.USAGE
    # libyaml's dumper where present: the pure-Python one takes minutes on a large list.
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    sys.stdout.write(yaml.dump_all(out, Dumper=dumper, sort_keys=False, default_flow_style=False))
    return exitcodes.OK


def _read_yaml_documents(path: str) -> list[Any]:
    """Every document of a YAML file or stdin, within agent.tools.manifest_input's bounds (size,
    read time, nesting, numbers, the shapes of the fields read); a bad input is one
    CliUsageError naming -f (exit 64)."""
    from agent.tools.manifest_input import ManifestInputError, parse, read_input

    try:
        return parse(read_input(path))
    except ManifestInputError as exc:
        raise CliUsageError(f"-f {path[:200]}: {exc}") from None


def _cmd_audit(args: argparse.Namespace) -> int:
    from agent.tools.audit import ManifestError, audit_documents, audit_live, render
    from agent.tools.verify.drill import UsageError, parse_duration

    if bool(args.file) == bool(args.live):
        print("dynamo-sidecar audit: give -f FILE (or - for stdin) or --live, not both", file=sys.stderr)
        return exitcodes.USAGE
    try:
        if args.file:
            result = audit_documents(_read_yaml_documents(args.file))
        else:
            sidecar = _http_url(args.sidecar_url, "--sidecar-url")
            result = audit_live(
                sidecar,
                _http_url(args.kube_api, "--kube-api") if args.kube_api else "",
                args.timeout,
                parse_duration(args.min_history, "--min-history"),
                args.queue_limit,
                args.inflight_limit,
                parse_duration(args.slo_ttft_p99, "--slo-ttft-p99") if args.slo_ttft_p99 else None,
                parse_duration(args.trend_window, "--trend-window") if args.trend_window else None,
            )
    except (ManifestError, UsageError) as exc:
        print(redact.text(f"dynamo-sidecar audit: {exc}"), file=sys.stderr)
        return exitcodes.USAGE  # never 2: that means a critical finding
    result = redact.value(result)  # a manifest's env may hold a token: never repeated
    print(render(result, args.format), end="")
    for missing in result.get("unread", []):  # on stderr too: a pipe to a file still tells
        print(
            f"dynamo-sidecar audit: could not read {missing['source']}: {missing['error']}", file=sys.stderr
        )
    return exitcodes.BY_STATUS.get(result["status"], exitcodes.UNKNOWN)


def _inject_one(inject: Any, document: Any, options: Any) -> Any:
    injected, notes = inject(document, options)
    for note in notes:
        print(f"dynamo-sidecar inject: {note}", file=sys.stderr)
    return injected


def _cmd_webhook(args: argparse.Namespace) -> int:
    from agent.tools.webhook import WebhookSettings, serve, tls_context

    options = _inject_options(args)  # the image first: the mistake a new user makes first
    log.configure(args.log_level, "json")
    try:
        tls_context(args.tls_cert_file, args.tls_key_file)
    except (OSError, ValueError) as exc:
        error = ConfigError(
            "--tls-cert-file/--tls-key-file",
            args.tls_cert_file,
            f"a readable PEM certificate and key ({exc})",
        )
        print(f"dynamo-sidecar webhook: {error}", file=sys.stderr)
        return exitcodes.USAGE
    settings = WebhookSettings(
        cert_file=args.tls_cert_file,
        key_file=args.tls_key_file,
        host=args.listen_host,
        port=args.listen_port,
        metrics_port=args.metrics_port,
        max_connections=args.max_connections,
        idle_timeout=args.idle_timeout,
        reload_interval=args.tls_reload_interval,
        options=options,
    )
    try:
        asyncio.run(serve(settings))
    except OSError as exc:
        print(
            f"dynamo-sidecar webhook: cannot listen on {args.listen_host}:{args.listen_port}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return exitcodes.USAGE
    return exitcodes.OK


def _cmd_demo(args: argparse.Namespace) -> int:
    from agent.dynamo_sim.server import Faults
    from agent.tools.demo import FAULT_NAMES, run_demo

    faults: dict[str, str] = {}
    for item in args.fault or []:
        name, _, value = item.partition("=")
        if name not in FAULT_NAMES:
            raise ConfigError("--fault", item, "one of " + ", ".join(FAULT_NAMES) + " (optionally =VALUE)")
        try:
            Faults().update({name: value or "true"})
        except ValueError:
            kind = type(getattr(Faults(), name)).__name__
            expected = {"float": "a number of seconds", "int": "an integer", "bool": "true or false"}[kind]
            raise ConfigError("--fault", item, f"{name}={expected}") from None
        faults[name] = value or "true"
    log.configure(args.log_level, "console" if sys.stdout.isatty() else "json")
    return asyncio.run(run_demo(args.port, faults, args.duration, concurrency=args.concurrency))


def _cmd_canary(args: argparse.Namespace) -> int:
    """One canary round now, straight at the frontend; prints results. Exit 0 when every probe
    passed, 1 when one failed or the frontend lists no model, 3 when the model list could not
    be read."""
    import aiohttp

    from agent.runtime.canary import OK, send_canary
    from collectors.dynamo_health import MODELS_PATH, parse_models
    from collectors.http import fetch

    config = _config_from(args)
    if not config.frontend_url:
        raise ConfigError("frontend_url", config.frontend_url, "the frontend's URL")

    async def round_() -> int:
        async with aiohttp.ClientSession() as session:
            listing = await fetch(session, config.frontend_url + MODELS_PATH, config.http_timeout, 1 << 20)
            listed = parse_models(listing)
            models = args.model or listed or []
            if not models:
                print(
                    redact.text(
                        f"no models to probe: GET {config.frontend_url}{MODELS_PATH} -> {listing.failure or listing.status} {listing.excerpt(200)}"
                    )
                )
                # Nothing answered with a model list: the canary could not look.
                return exitcodes.WARNING if listed is not None else exitcodes.UNKNOWN
            failed = 0
            for model in models:
                result = await send_canary(
                    session,
                    config.frontend_url,
                    model,
                    config.canary_timeout,
                    config.canary_endpoint,
                    config.canary_stream,
                )
                failed += result.outcome != OK
                if args.format == "json":
                    print(json.dumps(redact.value(result.to_dict())))
                else:
                    ttft = f" ttft={result.ttft * 1000:.1f}ms" if result.ttft is not None else ""
                    print(
                        redact.text(
                            f"{model}: {result.outcome} HTTP {result.status or '-'} in {result.latency * 1000:.1f}ms{ttft} x-request-id={result.request_id}"
                            + (f" error={result.error}" if result.error else "")
                        )
                    )
            return exitcodes.WARNING if failed else exitcodes.OK

    return asyncio.run(round_())


def _port(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 0 to 65535, got {raw[:40]!r}")
    return value


def _concurrency(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 1 <= value <= 64:
        raise argparse.ArgumentTypeError(f"expected an integer from 1 to 64, got {raw[:40]!r}")
    return value


def _bounded_float(low: float, high: float) -> Any:
    def parse(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            value = float("nan")
        if not low <= value <= high:  # NaN fails too
            raise argparse.ArgumentTypeError(f"expected seconds from {low:g} to {high:g}, got {raw[:40]!r}")
        return value

    return parse


def _reason(exc: BaseException) -> str:
    """An error as a sentence, not a Python repr."""
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        exc = exc.reason if isinstance(exc.reason, BaseException) else OSError(str(exc.reason))
    if isinstance(exc, TimeoutError | socket.timeout):
        return "no answer in time"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is the sidecar running, and is --url right?)"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    if isinstance(exc, ValueError):
        return "the answer is not JSON"
    return str(exc) or type(exc).__name__


def _fetch(url: str, timeout: float) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _cmd_diagnose(args: argparse.Namespace) -> int:
    from agent.diagnose.render import text

    if args.prometheus_url:
        from agent.diagnose.fleet import run_fleet

        # The deployment's threshold overrides, as the pods and `alerts` take them.
        overrides = {"thresholds": args.thresholds} if args.thresholds else {}
        thresholds = load_config(args.config, overrides=overrides).thresholds
        return run_fleet(args.prometheus_url, args.namespace, args.format, args.timeout, thresholds)
    if args.since:
        from agent.runtime.server import parse_window

        try:
            parse_window(args.since)
        except ValueError as exc:
            raise ConfigError("--since", args.since, str(exc)) from None
    query = "?" + urllib.parse.urlencode({"format": "json", **({"since": args.since} if args.since else {})})
    url = args.url.rstrip("/") + "/diagnose" + query
    try:
        status, body = _fetch(url, args.timeout)
        report: dict[str, Any] = json.loads(body)
    except (OSError, ValueError) as exc:
        print(redact.text(f"dynamo-sidecar diagnose: cannot read {url}: {_reason(exc)}"), file=sys.stderr)
        return exitcodes.UNKNOWN
    if status == 400:
        print(
            f"dynamo-sidecar diagnose: the sidecar refused the request: {report.get('error', '')}",
            file=sys.stderr,
        )
        return exitcodes.USAGE
    if status != 200 or not isinstance(report, dict) or "findings" not in report:
        print(
            f"dynamo-sidecar diagnose: cannot read {url}: HTTP {status}, not a diagnose report",
            file=sys.stderr,
        )
        return exitcodes.UNKNOWN
    report = redact.value(report)
    print(
        json.dumps(report, indent=1) if args.format == "json" else text(report),
        end="" if args.format != "json" else "\n",
    )
    status_name = report.get("status")
    if status_name not in exitcodes.BY_STATUS:
        print(
            f"dynamo-sidecar diagnose: {url} answered an unknown status {str(status_name)[:40]!r}",
            file=sys.stderr,
        )
        return exitcodes.UNKNOWN
    return exitcodes.BY_STATUS[status_name]


def _cmd_verify(args: argparse.Namespace) -> int:
    from agent.tools.verify.drill import (
        DrillSpec,
        Progress,
        Unreachable,
        UsageError,
        parse_duration,
        parse_per_phase,
        parse_rate,
        parse_slo,
        run_drill,
    )
    from agent.tools.verify.load import LoadSpec
    from agent.tools.verify.report import render

    def fail(message: str, code: int = exitcodes.USAGE) -> int:
        print(redact.text(f"dynamo-sidecar verify: {message}"), file=sys.stderr)
        return code

    try:
        frontend = _http_url(args.frontend_url, "--frontend-url")
        sidecar = _http_url(args.sidecar_url, "--sidecar-url") if args.sidecar_url else ""
        phase_seconds = {"standard": 30.0, "overload": 30.0, "recovery": 60.0}
        phase_seconds.update(
            parse_per_phase(
                args.phase_seconds, "--phase-seconds", lambda v: parse_duration(v, "--phase-seconds")
            )
            if args.phase_seconds
            else {}
        )
        for phase, seconds in phase_seconds.items():
            if not 1 <= seconds <= 3600:
                raise UsageError(f"--phase-seconds: {phase} must last 1s to 1h, got {seconds:g}s")
        min_success = {"standard": 0.99}
        if args.min_success:
            min_success = parse_per_phase(args.min_success, "--min-success", parse_rate)
        spec = DrillSpec(
            load=LoadSpec(
                frontend_url=frontend,
                model=args.model,
                max_tokens=args.max_tokens,
                stream=args.stream,
                endpoint=args.endpoint,
                request_timeout=parse_duration(args.request_timeout, "--request-timeout") or 30.0,
                new_connections=args.connections == "new",
            ),
            phase_seconds=phase_seconds,
            concurrency=args.concurrency,
            overload_concurrency=args.overload_concurrency or 4 * args.concurrency,
            fault_cmd=args.fault_cmd,
            recover_cmd=args.recover_cmd,
            command_timeout=parse_duration(args.command_timeout, "--command-timeout"),
            sidecar_url=sidecar,
            slo=parse_slo(args.slo),
            min_success=min_success,
            recovery_window=parse_duration(args.recovery_window, "--recovery-window") or 5.0,
            max_recovery=parse_duration(args.max_recovery, "--max-recovery") if args.max_recovery else None,
            max_requests=args.max_requests,
        )
        if spec.overload_concurrency > 256:
            raise UsageError("--overload-concurrency: at most 256")
        progress = Progress(enabled=not args.quiet)
        report = asyncio.run(run_drill(spec, progress))
    except Unreachable as exc:
        return fail(str(exc), exitcodes.UNKNOWN)
    except UsageError as exc:
        return fail(str(exc))
    report = redact.value(report)  # --frontend-url's password, a --fault-cmd's token
    output = render(report, args.format)
    if args.output:
        try:
            Path(args.output).write_text(output)
        except OSError as exc:
            return fail(f"--output: cannot write {args.output}: {_reason(exc)}")
        print(
            f"report written to {args.output}: {'PASSED' if report['passed'] else 'FAILED'}", file=sys.stderr
        )
    else:
        print(output, end="")
    unread = (report.get("sidecar") or {}).get("unread_phases") or []
    if unread:
        print(
            f"dynamo-sidecar verify: could not read the sidecar at {sidecar} in: {', '.join(unread)}",
            file=sys.stderr,
        )
    if not report["passed"]:
        return exitcodes.WARNING  # a goal missed is a finding, whatever could not be read besides
    # The drill's client checks passed, but the pod's view it was asked for was not read.
    return exitcodes.UNKNOWN if unread else exitcodes.OK


def _http_url(raw: str, flag: str) -> str:
    from agent.tools.verify.drill import UsageError

    parsed = urllib.parse.urlsplit(raw.strip())
    if parsed.scheme not in {"http", "https"} or not parsed.hostname:
        raise UsageError(f"{flag}: expected an http(s) URL such as http://127.0.0.1:8000, got {raw[:60]!r}")
    return raw.strip().rstrip("/")


def _bounded_int(low: int, high: int) -> Any:
    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            value = low - 1
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected an integer from {low} to {high}, got {raw[:40]!r}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = CliParser(
        prog="dynamo-sidecar",
        description="Observability sidecar for NVIDIA Dynamo pods.",
        epilog="Exit codes: 0 ok, 1 warning, 2 critical, 3 could not look, 64 usage or input error, "
        "70 internal error, 130 interrupted (docs/cli.md).",
    )
    parser.add_argument("--version", action="version", version=f"dynamo-sidecar {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the sidecar")
    _add_config_flags(run)
    run.set_defaults(func=_cmd_run)

    check = sub.add_parser(
        "check-config", help="validate config and print the effective config (secrets redacted)"
    )
    _add_config_flags(check)
    check.set_defaults(func=_cmd_check_config)

    demo = sub.add_parser("demo", help="run a simulated Dynamo plus the sidecar, with a little traffic")
    demo.add_argument(
        "--port", "--listen-port", dest="port", type=_port, default=9469, help="sidecar port (default 9469)"
    )
    demo.add_argument(
        "--fault", action="append", metavar="NAME[=VALUE]", help="start with a fault knob set (repeatable)"
    )
    demo.add_argument(
        "--duration", type=float, default=0, help="stop after this many seconds (default: until Ctrl-C)"
    )
    demo.add_argument(
        "--concurrency",
        type=_concurrency,
        default=1,
        help="simulated clients sending at once (default 1; more lets max_concurrency build a queue)",
    )
    demo.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    demo.set_defaults(func=_cmd_demo)

    canary = sub.add_parser(
        "canary", help="send one canary round through the frontend now and print the results"
    )
    _add_config_flags(canary)
    canary.add_argument(
        "--model", action="append", help="probe this model (repeatable; default: every model in /v1/models)"
    )
    canary.add_argument("--format", choices=["text", "json"], default="text")
    canary.set_defaults(func=_cmd_canary)

    inject_cmd = sub.add_parser(
        "inject",
        help="add the sidecar to Dynamo pods in Kubernetes YAML (Pod, Deployment, ..., DynamoGraphDeployment); prints the result",
    )
    inject_cmd.add_argument("-f", "--file", required=True, help="YAML file (multi-document), or - for stdin")
    _add_inject_flags(inject_cmd)
    inject_cmd.set_defaults(func=_cmd_inject)

    hook = sub.add_parser("webhook", help="run the mutating admission webhook (HTTPS, POST /mutate)")
    hook.add_argument("--tls-cert-file", required=True, metavar="FILE")
    hook.add_argument("--tls-key-file", required=True, metavar="FILE")
    hook.add_argument("--listen-host", default="0.0.0.0")
    hook.add_argument("--listen-port", "--port", dest="listen_port", type=_port, default=9443)
    hook.add_argument(
        "--metrics-port",
        type=_port,
        default=None,
        help="also serve /metrics and /healthz over plain HTTP on this port (for Prometheus)",
    )
    hook.add_argument(
        "--max-connections",
        type=_bounded_int(1, 65535),
        default=256,
        help="most open connections (a peer may hold 3/4 of them; idle ones are shed first)",
    )
    hook.add_argument(
        "--idle-timeout",
        type=_bounded_float(0.5, 600),
        default=10.0,
        metavar="SECONDS",
        help="close a connection idle, or not completing its TLS handshake or request, this long",
    )
    hook.add_argument(
        "--tls-reload-interval",
        type=_bounded_float(0.1, 3600),
        default=5.0,
        metavar="SECONDS",
        help="how often the certificate files are checked for a change",
    )
    _add_inject_flags(hook)
    hook.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    hook.set_defaults(func=_cmd_webhook)

    alerts = sub.add_parser(
        "alerts",
        help="print Prometheus alerting rules generated from the diagnose rules, with this config's thresholds",
    )
    _add_config_flags(alerts)
    alerts.set_defaults(func=_cmd_alerts)

    diag = sub.add_parser(
        "diagnose",
        help="print a running sidecar's findings; exit 0 ok, 1 warning, 2 critical, 3 could not look",
    )
    diag.add_argument("--url", default="http://127.0.0.1:9469", help="the sidecar's base URL")
    diag.add_argument("--since", default="", help="narrow the window, e.g. 10m")
    diag.add_argument("--format", choices=["text", "json"], default="text")
    diag.add_argument("--timeout", type=float, default=5.0)
    diag.add_argument(
        "--prometheus-url",
        default="",
        help="fleet scope: evaluate the rules over every pod's metrics in this Prometheus",
    )
    diag.add_argument("--namespace", default="", help="with --prometheus-url: only this Kubernetes namespace")
    diag.add_argument(
        "--config",
        metavar="FILE",
        help="with --prometheus-url: take threshold overrides from this config file (as `alerts --config`)",
    )
    diag.add_argument(
        "--thresholds",
        default="",
        metavar="RULE.NAME=N[,...]",
        help="with --prometheus-url: threshold overrides (also DYN_SIDECAR_THRESHOLDS)",
    )
    diag.set_defaults(func=_cmd_diagnose)

    verify = sub.add_parser(
        "verify",
        help="fault drill: standard, overload (+ fault command) and recovery phases against a frontend; exit 0 met, 1 missed, 3 frontend unreachable",
    )
    verify.add_argument(
        "--frontend-url", required=True, help="the Dynamo frontend, e.g. http://127.0.0.1:8000"
    )
    verify.add_argument("--model", default="", help="model to request (default: the first in /v1/models)")
    verify.add_argument(
        "--phase-seconds",
        default="",
        metavar="N|PHASE=N,...",
        help="length of each phase, or per phase (default standard=30,overload=30,recovery=60)",
    )
    verify.add_argument(
        "--concurrency",
        type=_bounded_int(1, 256),
        default=4,
        help="clients in standard and recovery (default 4)",
    )
    verify.add_argument(
        "--overload-concurrency",
        type=_bounded_int(1, 256),
        default=0,
        help="clients in overload (default 4x --concurrency)",
    )
    verify.add_argument("--max-tokens", type=_bounded_int(1, 4096), default=16)
    verify.add_argument("--stream", action=argparse.BooleanOptionalAction, default=True)
    verify.add_argument("--endpoint", choices=["chat", "completions"], default="chat")
    verify.add_argument(
        "--connections",
        choices=["keep-alive", "new"],
        default="keep-alive",
        help="reuse connections as SDK clients do (default), or open one per request",
    )
    verify.add_argument("--request-timeout", default="30s", help="per request (default 30s)")
    verify.add_argument(
        "--max-requests", type=_bounded_int(1, 1_000_000), default=100_000, help="over the whole drill"
    )
    verify.add_argument("--fault-cmd", default="", help="shell command run at the overload phase's start")
    verify.add_argument("--recover-cmd", default="", help="shell command run at the recovery phase's start")
    verify.add_argument(
        "--command-timeout", default="120s", help="a command still running after this is killed"
    )
    verify.add_argument("--sidecar-url", default="", help="poll this sidecar's /diagnose during the drill")
    verify.add_argument(
        "--slo", default="", help="targets, e.g. ttft_p99=500ms,itl_p99=50ms,latency_p99=5s,error_rate=1%%"
    )
    verify.add_argument(
        "--min-success",
        default="",
        metavar="RATE|PHASE=RATE,...",
        help="minimum success rate per phase (default standard=99%%)",
    )
    verify.add_argument(
        "--recovery-window", default="5s", help="recovered = this long at the standard success rate"
    )
    verify.add_argument("--max-recovery", default="", help="fail when recovery takes longer, e.g. 60s")
    verify.add_argument("--format", choices=["text", "json", "html"], default="text")
    verify.add_argument("--output", default="", help="write the report here instead of stdout")
    verify.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    verify.set_defaults(func=_cmd_verify)

    audit = sub.add_parser(
        "audit",
        help="review Dynamo manifests (-f) or this pod (--live) for configuration and capacity risk; exit 0 ok, 1 warning, 2 critical, 3 could not look",
    )
    audit.add_argument(
        "-f",
        "--file",
        default="",
        help="YAML (DynamoGraphDeployment, Deployment, Pod, helm template output; multi-document) or - for stdin",
    )
    audit.add_argument(
        "--live",
        action="store_true",
        help="inside the pod: its spec from the API server and the sidecar's observations",
    )
    audit.add_argument(
        "--sidecar-url", default="http://127.0.0.1:9469", help="with --live: the running sidecar"
    )
    audit.add_argument(
        "--kube-api", default="", help="with --live: the API server (default: the in-cluster service)"
    )
    audit.add_argument(
        "--min-history",
        default="10m",
        help="with --live: history needed before a trend is claimed (default 10m)",
    )
    audit.add_argument(
        "--trend-window",
        default="",
        help="with --live: fit only the most recent part of the history, e.g. 10m (default: all of it)",
    )
    audit.add_argument(
        "--queue-limit", type=float, default=100.0, help="queued requests counted as saturation (default 100)"
    )
    audit.add_argument(
        "--inflight-limit", type=float, default=None, help="requests in flight counted as saturation"
    )
    audit.add_argument(
        "--slo-ttft-p99",
        default="",
        help="TTFT p99 target for the forecast (default: the sidecar's slo_ttft_p99)",
    )
    audit.add_argument("--timeout", type=float, default=5.0)
    audit.add_argument("--format", choices=["text", "json", "html"], default="text")
    audit.set_defaults(func=_cmd_audit)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs one subcommand; every way out is one of the codes in agent/core/exitcodes.py."""
    args: argparse.Namespace | None = None
    try:
        args = build_parser().parse_args(argv)
        return int(args.func(args))
    except ConfigError as exc:
        print(redact.text(f"dynamo-sidecar: {exc}"), file=sys.stderr)
        return exitcodes.USAGE
    except CliUsageError as exc:
        print(redact.text(f"dynamo-sidecar {args.command if args else ''}: {exc}"), file=sys.stderr)
        return exitcodes.USAGE
    except KeyboardInterrupt:
        return exitcodes.INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`... | head`): interrupted by it, as by Ctrl-C, and quietly
        # (the reader wanted no more). The interpreter's own flush at exit must not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return exitcodes.INTERRUPTED
    except Exception as exc:
        # A bug: one line a user can paste into an issue, never a traceback.
        where = _innermost_frame(exc)
        print(
            f"dynamo-sidecar: internal error: {type(exc).__name__}: {redact.text(str(exc))[:300]}{where}"
            " (a bug: please report it with the command that ran)",
            file=sys.stderr,
        )
        return exitcodes.INTERNAL


def _innermost_frame(exc: BaseException) -> str:
    """` at module.py:123` for the deepest frame of the project's own code, or ""."""
    import traceback

    frames = [
        frame
        for frame in traceback.extract_tb(exc.__traceback__)
        if any(part in frame.filename for part in ("/agent/", "/collectors/", "/exporters/"))
    ]
    if not frames:
        return ""
    frame = frames[-1]
    return f" at {Path(frame.filename).parent.name}/{Path(frame.filename).name}:{frame.lineno}"


if __name__ == "__main__":
    sys.exit(main())
