"""NotifyService servicer: protobuf in and out; the rules live in domain/, the I/O in store/ and clients/."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable
from typing import Any

import grpc
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from finmesh.notify.api import convert, validate
from finmesh.notify.api.complaints import ComplaintRpcs
from finmesh.notify.clock import Clock
from finmesh.notify.compose import Composer, Draft
from finmesh.notify.config import NotifySettings
from finmesh.notify.domain.consent import DEFAULT_TIME_ZONE, decide_marketing
from finmesh.notify.domain.templates import resolve_locale
from finmesh.notify.intake import EventIntake
from finmesh.notify.sealing import Sealer
from finmesh.notify.sla import ComplaintSla
from finmesh.notify.store import consents, erasure, profiles, queue
from finmesh.notify.store import webhooks as webhook_store
from finmesh.notify.store.schema import idempotency, notifications, webhooks
from finmesh.notify.v1 import notify_service_pb2 as pb
from finmesh.notify.v1 import notify_service_pb2_grpc as pb_grpc
from finmesh.platform.errors import FailedPrecondition, NotFound, Validator
from finmesh.platform.observability.logs import get_logger
from finmesh.platform.rpc.guard import excerpt, to_status
from finmesh.platform.storage.idempotency import IdempotencyStore, validate_key

_log = get_logger("finmesh.notify")

_REFUSALS = {
    "CONSENT_MISSING": "marketing needs the user's recorded consent",
    "OPTED_OUT": "the user opted out of marketing messages",
}


class NotifyServicer(ComplaintRpcs, pb_grpc.NotifyServiceServicer):
    def __init__(self, engine: AsyncEngine, *, sealer: Sealer, settings: NotifySettings, clock: Clock,
                 intake: EventIntake, sla: ComplaintSla, wake: Callable[[str], None]) -> None:
        self._engine = engine
        self._sealer = sealer
        self._composer = Composer(sealer)
        self._settings = settings
        self._clock = clock
        self._intake = intake
        self._sla = sla
        self._wake = wake
        self._idem = IdempotencyStore(engine, idempotency, to_status)

    # -- events ------------------------------------------------------------------------------

    async def DeliverEvent(self, request: pb.DeliverEventRequest, context: grpc.aio.ServicerContext) -> Any:
        validate.event(request.event)
        duplicate, ids = await self._intake.deliver(request.event)
        return pb.DeliverEventResponse(duplicate=duplicate, notification_ids=ids)

    async def DeliverEvents(self, request: pb.DeliverEventsRequest, context: grpc.aio.ServicerContext) -> Any:
        validate.event_batch(request)
        refused = _refusals(request.events)
        taken = [e for i, e in enumerate(request.events) if i not in refused]
        outcomes = iter(await self._intake.deliver_batch(taken) if taken else [])
        results = []
        for i, event in enumerate(request.events):
            if i in refused:
                results.append(refused[i])
                continue
            outcome = next(outcomes)
            results.append(pb.EventResult(
                event_id=event.event_id, notification_ids=outcome.notification_ids,
                outcome=pb.EVENT_OUTCOME_DUPLICATE if outcome.duplicate else pb.EVENT_OUTCOME_DELIVERED))
        return pb.DeliverEventsResponse(results=results)

    # -- notifications -----------------------------------------------------------------------

    async def SendNotification(self, request: pb.SendNotificationRequest,
                               context: grpc.aio.ServicerContext) -> Any:
        send = validate.send(request)

        async def op(conn: Any) -> pb.SendNotificationResponse:
            now = self._clock.now()
            await erasure.refuse_if_erased(conn, send.user_id)
            not_before = None
            if send.category == "MARKETING":
                record = consents.to_record(await consents.get(conn, send.user_id, "MARKETING"))
                decision = decide_marketing(record, now)
                if not decision.send:
                    raise FailedPrecondition(decision.refusal, _REFUSALS[decision.refusal])
                not_before = decision.not_before
            known = await profiles.locales(conn, {send.user_id})
            draft = Draft(send.user_id, send.channel, send.category, send.template,
                          resolve_locale(send.locale, known.get(send.user_id, "")), send.params,
                          address=send.address)
            row = self._composer.row(draft, now, not_before)
            await conn.execute(insert(notifications).values(**row))
            return pb.SendNotificationResponse(notification=convert.notification(row))

        reply = await self._idem.run("SendNotification", request, pb.SendNotificationResponse, op)
        if reply.notification.status == pb.NOTIFICATION_STATUS_QUEUED:
            self._wake(send.category)
        _log.info("notification_accepted", notification_id=reply.notification.notification_id,
                  channel=send.channel, category=send.category, template=send.template)
        return reply

    async def GetNotification(self, request: pb.GetNotificationRequest, context: grpc.aio.ServicerContext) -> Any:
        validate.required_id(request.notification_id, "notification_id")
        async with self._engine.connect() as conn:
            row = await queue.get(conn, request.notification_id)
        if row is None:
            raise NotFound("NOTIFICATION_NOT_FOUND", "notification not found")
        return pb.GetNotificationResponse(notification=convert.notification(row._mapping))

    async def ListNotifications(self, request: pb.ListNotificationsRequest,
                                context: grpc.aio.ServicerContext) -> Any:
        v = Validator()
        v.require(0 < len(request.user_id) <= validate.MAX_ID, "user_id", "required")
        size = validate.page(v, request.page_size, request.page_token)
        v.raise_if_any()
        async with self._engine.connect() as conn:
            rows = await queue.list_for_user(conn, request.user_id, request.page_token, size + 1)
        more = len(rows) > size
        rows = rows[:size]
        return pb.ListNotificationsResponse(
            notifications=[convert.notification(r._mapping) for r in rows],
            next_page_token=rows[-1].notification_id if more else "",
        )

    # -- consent -----------------------------------------------------------------------------

    async def SetConsent(self, request: pb.SetConsentRequest, context: grpc.aio.ServicerContext) -> Any:
        validate.consent(request)
        c = request.consent

        async def op(conn: Any) -> pb.SetConsentResponse:
            now = self._clock.now()
            await erasure.refuse_if_erased(conn, c.user_id)
            zone = c.time_zone or DEFAULT_TIME_ZONE
            row = await consents.record(conn, {
                "user_id": c.user_id, "category": "MARKETING", "granted": c.granted,
                "quiet_hours_start": c.quiet_hours_start, "quiet_hours_end": c.quiet_hours_end, "time_zone": zone,
            }, now)
            await profiles.remember(conn, c.user_id, now, time_zone=zone)
            return pb.SetConsentResponse(consent=convert.consent(row._mapping))

        reply = await self._idem.run("SetConsent", request, pb.SetConsentResponse, op)
        _log.info("consent_recorded", user_id=c.user_id, granted=c.granted)
        # Messages deferred for quiet hours are re-checked at send time; wake the lane to see the change.
        self._wake("MARKETING")
        return reply

    async def GetConsent(self, request: pb.GetConsentRequest, context: grpc.aio.ServicerContext) -> Any:
        category = validate.get_consent(request)
        async with self._engine.connect() as conn:
            row = await consents.get(conn, request.user_id, category)
        if row is None:
            raise NotFound("CONSENT_MISSING", "no consent recorded for this user and category")
        return pb.GetConsentResponse(consent=convert.consent(row._mapping))

    # -- webhooks ----------------------------------------------------------------------------

    async def CreateWebhook(self, request: pb.CreateWebhookRequest, context: grpc.aio.ServicerContext) -> Any:
        validate.webhook(request, self._settings.webhook_allow_loopback_http)

        async def op(conn: Any) -> pb.CreateWebhookResponse:
            webhook_id = str(uuid.uuid4())
            values = {
                "webhook_id": webhook_id,
                "url_sealed": self._sealer.seal(f"{webhook_id}:url", request.url),
                "event_types": list(request.event_types),
                "secret_sealed": self._sealer.seal(f"{webhook_id}:secret", "whsec_" + secrets.token_urlsafe(32)),
                "active": True,
                "created_at": self._clock.now(),
            }
            await conn.execute(insert(webhooks).values(**values))
            # The secret stays out of the stored reply (idempotency rows are not sealed); added below.
            return pb.CreateWebhookResponse(webhook=convert.webhook(values, request.url))

        reply = await self._idem.run("CreateWebhook", request, pb.CreateWebhookResponse, op)
        async with self._engine.connect() as conn:
            hook = await webhook_store.get(conn, reply.webhook.webhook_id)
        reply.signing_secret = self._sealer.open(f"{hook.webhook_id}:secret", hook.secret_sealed)
        _log.info("webhook_created", webhook_id=hook.webhook_id, event_types=list(request.event_types))
        return reply

    # -- dead letters ------------------------------------------------------------------------

    async def ListDeadLetters(self, request: pb.ListDeadLettersRequest, context: grpc.aio.ServicerContext) -> Any:
        v = Validator()
        size = validate.page(v, request.page_size, request.page_token, numeric_token=True)
        v.raise_if_any()
        async with self._engine.connect() as conn:
            rows = await queue.list_dead_letters(conn, int(request.page_token or 0), size + 1)
        more = len(rows) > size
        rows = rows[:size]
        return pb.ListDeadLettersResponse(
            dead_letters=[convert.dead_letter(r._mapping) for r in rows],
            next_page_token=str(rows[-1].seq) if more else "",
        )

    async def RedriveDeadLetter(self, request: pb.RedriveDeadLetterRequest,
                                context: grpc.aio.ServicerContext) -> Any:
        v = Validator()
        v.require(0 < len(request.dead_letter_id) <= 36, "dead_letter_id", "required")
        validate_key(request.idempotency_key)
        v.raise_if_any()

        async def op(conn: Any) -> pb.RedriveDeadLetterResponse:
            row = await queue.redrive(conn, request.dead_letter_id, self._clock.now())
            return pb.RedriveDeadLetterResponse(notification=convert.notification(row._mapping))

        reply = await self._idem.run("RedriveDeadLetter", request, pb.RedriveDeadLetterResponse, op)
        self._wake(pb.Category.Name(reply.notification.category).removeprefix("CATEGORY_"))
        _log.info("dead_letter_redriven", dead_letter_id=request.dead_letter_id,
                  notification_id=reply.notification.notification_id)
        return reply



def _refusals(events: Any) -> dict[int, pb.EventResult]:
    """Results of the events not taken, by position: the invalid ones, and every later event of their
    aggregate (taking those would put the aggregate's events out of order)."""
    refused: dict[int, pb.EventResult] = {}
    stopped: set[tuple[str, str]] = set()
    for i, event in enumerate(events):
        aggregate = (event.source, event.aggregate_id)
        if aggregate in stopped:
            refused[i] = pb.EventResult(event_id=excerpt(event.event_id, 64), outcome=pb.EVENT_OUTCOME_DEFERRED)
        elif violations := validate.event_violations(event, f"events[{i}]"):
            stopped.add(aggregate)
            refused[i] = pb.EventResult(event_id=excerpt(event.event_id, 64), outcome=pb.EVENT_OUTCOME_REFUSED,
                                        field_violations=[pb.FieldViolation(field=v.field, description=v.description)
                                                          for v in violations])
    return refused
