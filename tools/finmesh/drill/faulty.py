"""A "bad build" for the canary drill: the normal service process, with a share of its calls failing or slow.

    python -m finmesh.drill.faulty payments --fail-share 0.3
    python -m finmesh.drill.faulty payments --delay-share 0.5 --delay-seconds 0.4

No service carries fault-injection code: this entry point builds the service's
app exactly as `finmesh.<service>.main` does and runs it with the one runner
(`finmesh.platform.runner.run_service`), after wrapping each RPC method of the
app's servicers. The wrapper sits *inside* the platform's guard (which
`create_server` puts around every servicer method), not in a server
interceptor, because the guard is where a call's span and its
`rpc.server.call.duration` (with its status code) are recorded: an interceptor
failing a call would fail it before the guard saw it, and the metric analysis
would never see the fault. So a faulty call is authorized and its fields
checked first, as in a real build, and then fails (or waits) *before the
handler runs*: no payment is half-applied, and a failed CreatePayment commits
nothing under its idempotency key.

The status: INTERNAL by default, what the guard answers for an unexpected
exception, i.e. for a bug in the new build. It is a server fault, so it counts
in the error rate the analysis reads (finmesh.slo.objectives.SERVER_FAULT_CODES),
and no retry policy retries it, so a caller sees each failure: the share of
calls that reached the bad version is the share that could fail.
`--fail-code UNAVAILABLE` makes a build whose failures callers retry (with the
same idempotency key): still counted by the analysis, mostly hidden from them.
Health is not wrapped: the bad build is ready and SERVING, as a real bad build
would be, so only the metrics can stop it.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import inspect
import random
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from finmesh.platform.config import ServiceSettings
from finmesh.platform.observability.logs import get_logger
from finmesh.platform.runner import ServiceApp, run_service

_log = get_logger("finmesh.drill.faulty")
FAULT_CODES = ("INTERNAL", "UNAVAILABLE", "UNKNOWN", "DEADLINE_EXCEEDED")


@dataclass(frozen=True)
class Faults:
    """What share of calls fail (with `code`) and what share wait `delay_seconds` first, before the handler."""

    fail_share: float = 0.0
    code: str = "INTERNAL"
    delay_share: float = 0.0
    delay_seconds: float = 0.0
    methods: frozenset[str] = frozenset()  # RPC names (e.g. "CreatePayment"); empty: every RPC

    def __post_init__(self) -> None:
        for name in ("fail_share", "delay_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, not {getattr(self, name)}")
        if self.delay_seconds < 0:
            raise ValueError(f"delay_seconds must be >= 0, not {self.delay_seconds}")
        if self.code not in FAULT_CODES:
            raise ValueError(f"code must be one of {', '.join(FAULT_CODES)}, not {self.code}")

    def argv(self) -> list[str]:
        """These faults as this module's command-line options (what LocalBackend passes to a process)."""
        args = [f"--fail-share={self.fail_share}", f"--fail-code={self.code}"]
        args += [f"--delay-share={self.delay_share}", f"--delay-seconds={self.delay_seconds}"]
        return args + [f"--method={m}" for m in sorted(self.methods)]


Handler = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]


def faulty(method: Handler, name: str, faults: Faults, rng: random.Random) -> Handler:
    """`method`, except that a share of calls fails with `faults.code`, and a share waits, before it runs."""
    code = grpc.StatusCode[faults.code]

    @functools.wraps(method)
    async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if rng.random() < faults.fail_share:
            # Before the handler: nothing was written. context.abort, so the guard records this code.
            await context.abort(code, f"faulty build: {name} failed on purpose (drill)")
        if faults.delay_seconds and rng.random() < faults.delay_share:
            await asyncio.sleep(faults.delay_seconds)
        return await method(request, context)

    return call


def inject(app: ServiceApp, faults: Faults, rng: random.Random | None = None) -> list[str]:
    """Wrap the RPC methods of every servicer the app registers; returns the full names of those wrapped."""
    rng = rng or random.Random()
    wrapped = []
    for registration in app.registrations:
        descriptor = registration.descriptor
        for rpc in descriptor.methods:
            if faults.methods and rpc.name not in faults.methods:
                continue
            method = getattr(registration.servicer, rpc.name, None)
            if method is None or not inspect.iscoroutinefunction(method):
                continue  # unimplemented: the guard answers UNIMPLEMENTED as usual
            name = f"{descriptor.full_name}/{rpc.name}"
            setattr(registration.servicer, rpc.name, faulty(method, name, faults, rng))
            wrapped.append(name)
    unknown = faults.methods - {n.rpartition("/")[2] for n in wrapped}
    if unknown:
        raise ValueError(f"no such RPC method to fail: {', '.join(sorted(unknown))}")
    return wrapped


def _entry(service: str) -> tuple[ServiceSettings, Callable[[ServiceSettings], Awaitable[ServiceApp]]]:
    """The service's settings and build function, as its own main() loads them."""
    if service == "payments":
        from finmesh.payments.app import build as payments_build
        from finmesh.payments.config import PaymentsSettings

        return PaymentsSettings(), payments_build  # type: ignore[return-value]  # build takes its own settings type
    if service == "identity":
        from finmesh.identity.app import build as identity_build
        from finmesh.identity.config import IdentitySettings

        return IdentitySettings(), identity_build  # type: ignore[return-value]  # as above
    if service == "notify":
        from finmesh.notify.app import build as notify_build
        from finmesh.notify.config import NotifySettings

        return NotifySettings(), notify_build
    if service == "risk":
        from finmesh.risk.app import build as risk_build

        return ServiceSettings(), risk_build
    raise ValueError(f"unknown service {service!r}")


SERVICES = ("identity", "payments", "risk", "notify")


def parse(argv: Sequence[str]) -> tuple[str, Faults, int | None]:
    parser = argparse.ArgumentParser(prog="python -m finmesh.drill.faulty", description=__doc__.splitlines()[0])
    parser.add_argument("service", choices=SERVICES)
    parser.add_argument("--fail-share", type=float, default=0.0, help="share of calls that fail (0..1)")
    parser.add_argument("--fail-code", default="INTERNAL", choices=FAULT_CODES, help="their status (INTERNAL)")
    parser.add_argument("--delay-share", type=float, default=0.0, help="share of calls that wait first (0..1)")
    parser.add_argument("--delay-seconds", type=float, default=0.0, help="how long they wait")
    parser.add_argument("--method", action="append", default=[], help="only this RPC (repeatable; default all)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the random choice (reproducible runs)")
    args = parser.parse_args(list(argv))
    try:
        faults = Faults(args.fail_share, args.fail_code, args.delay_share, args.delay_seconds, frozenset(args.method))
    except ValueError as error:
        parser.error(str(error))
    return args.service, faults, args.seed


def main(argv: Sequence[str] | None = None) -> None:
    service, faults, seed = parse(sys.argv[1:] if argv is None else argv)
    settings, build = _entry(service)
    rng = random.Random(seed)

    async def build_faulty() -> ServiceApp:
        app = await build(settings)
        wrapped = inject(app, faults, rng)
        # Said once, at start, so the process's log tells the drill's reader this is the bad build.
        facts = {k: v for k, v in faults.__dict__.items() if k != "methods"}
        _log.warning("faulty build", methods=len(wrapped), **facts)
        return app

    run_service(service, settings, build_faulty)


if __name__ == "__main__":
    main()
