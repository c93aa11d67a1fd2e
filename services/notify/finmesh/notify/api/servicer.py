"""NotifyService servicer: protobuf in and out, and status codes; the use cases (finmesh.notify.usecases) do
the work."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from finmesh.common.v1 import event_pb2
from finmesh.notify.api import Context, convert, validate
from finmesh.notify.api.complaints import ComplaintRpcs
from finmesh.notify.usecases.complaints import Complaints
from finmesh.notify.usecases.consents import Consents
from finmesh.notify.usecases.dead_letters import DeadLetters
from finmesh.notify.usecases.intake import EventIntake
from finmesh.notify.usecases.notifications import Notifications
from finmesh.notify.usecases.webhooks import Webhooks
from finmesh.notify.v1 import notify_service_pb2 as pb
from finmesh.notify.v1 import notify_service_pb2_grpc as pb_grpc
from finmesh.platform.errors import NotFound, Validator
from finmesh.platform.observability.logs import get_logger
from finmesh.platform.rpc import event_intake
from finmesh.platform.rpc.guard import excerpt
from finmesh.platform.storage.idempotency import KeyedCall, validate_key

_log = get_logger("finmesh.notify")


class NotifyServicer(ComplaintRpcs, pb_grpc.NotifyServiceServicer):
    def __init__(
        self,
        *,
        intake: EventIntake,
        notifications: Notifications,
        consents: Consents,
        webhooks: Webhooks,
        dead_letters: DeadLetters,
        complaints: Complaints,
        webhook_allow_loopback_http: bool,
    ) -> None:
        self._intake = intake
        self._notifications = notifications
        self._consents = consents
        self._webhooks = webhooks
        self._dead_letters = dead_letters
        self._complaints = complaints
        self._webhook_allow_loopback_http = webhook_allow_loopback_http

    # -- events ------------------------------------------------------------------------------

    async def DeliverEvent(self, request: pb.DeliverEventRequest, context: Context) -> Any:
        validate.event(request.event)
        outcome = await self._intake.deliver(convert.incoming_event(request.event))
        return pb.DeliverEventResponse(duplicate=outcome.duplicate, notification_ids=outcome.notification_ids)

    async def DeliverEvents(self, request: pb.DeliverEventsRequest, context: Context) -> Any:
        validate.event_batch(request)
        return pb.DeliverEventsResponse(results=await take_events(self._intake, request.events))

    # -- notifications -----------------------------------------------------------------------

    async def SendNotification(self, request: pb.SendNotificationRequest, context: Context) -> Any:
        send = validate.send(request)
        reply = await self._notifications.send(
            KeyedCall(
                "SendNotification",
                request,
                pb.SendNotificationResponse,
                lambda row: pb.SendNotificationResponse(notification=convert.notification(row)),
            ),
            send,
        )
        _log.info(
            "notification_accepted",
            notification_id=reply.notification.notification_id,
            channel=send.channel,
            category=send.category,
            template=send.template,
        )
        return reply

    async def GetNotification(self, request: pb.GetNotificationRequest, context: Context) -> Any:
        validate.required_id(request.notification_id, "notification_id")
        row = await self._notifications.get(request.notification_id)
        if row is None:
            raise NotFound("NOTIFICATION_NOT_FOUND", "notification not found")
        return pb.GetNotificationResponse(notification=convert.notification(row._mapping))

    async def ListNotifications(self, request: pb.ListNotificationsRequest, context: Context) -> Any:
        v = Validator()
        v.require(0 < len(request.user_id) <= validate.MAX_ID, "user_id", "required")
        size = validate.page(v, request.page_size, request.page_token)
        v.raise_if_any()
        rows = await self._notifications.of_user(request.user_id, request.page_token, size + 1)
        more = len(rows) > size
        rows = rows[:size]
        return pb.ListNotificationsResponse(
            notifications=[convert.notification(r._mapping) for r in rows],
            next_page_token=rows[-1].notification_id if more else "",
        )

    # -- consent -----------------------------------------------------------------------------

    async def SetConsent(self, request: pb.SetConsentRequest, context: Context) -> Any:
        validate.consent(request)
        c = request.consent
        reply = await self._consents.set_marketing(
            KeyedCall(
                "SetConsent",
                request,
                pb.SetConsentResponse,
                lambda row: pb.SetConsentResponse(consent=convert.consent(row)),
            ),
            c.user_id,
            c.granted,
            c.quiet_hours_start,
            c.quiet_hours_end,
            c.time_zone,
        )
        _log.info("consent_recorded", user_id=c.user_id, granted=c.granted)
        return reply

    async def GetConsent(self, request: pb.GetConsentRequest, context: Context) -> Any:
        category = validate.get_consent(request)
        row = await self._consents.get(request.user_id, category)
        if row is None:
            raise NotFound("CONSENT_MISSING", "no consent recorded for this user and category")
        return pb.GetConsentResponse(consent=convert.consent(row._mapping))

    # -- webhooks ----------------------------------------------------------------------------

    async def CreateWebhook(self, request: pb.CreateWebhookRequest, context: Context) -> Any:
        validate.webhook(request, self._webhook_allow_loopback_http)
        reply = await self._webhooks.create(
            KeyedCall(
                "CreateWebhook",
                request,
                pb.CreateWebhookResponse,
                lambda row: pb.CreateWebhookResponse(webhook=convert.webhook(row)),
            ),
            request.url,
            list(request.event_types),
        )
        reply.signing_secret = await self._webhooks.signing_secret(reply.webhook.webhook_id)
        _log.info("webhook_created", webhook_id=reply.webhook.webhook_id, event_types=list(request.event_types))
        return reply

    # -- dead letters ------------------------------------------------------------------------

    async def ListDeadLetters(self, request: pb.ListDeadLettersRequest, context: Context) -> Any:
        v = Validator()
        size = validate.page(v, request.page_size, request.page_token, numeric_token=True)
        v.raise_if_any()
        rows = await self._dead_letters.page(int(request.page_token or 0), size + 1)
        more = len(rows) > size
        rows = rows[:size]
        return pb.ListDeadLettersResponse(
            dead_letters=[convert.dead_letter(r._mapping) for r in rows],
            next_page_token=str(rows[-1].seq) if more else "",
        )

    async def RedriveDeadLetter(self, request: pb.RedriveDeadLetterRequest, context: Context) -> Any:
        v = Validator()
        v.require(0 < len(request.dead_letter_id) <= 36, "dead_letter_id", "required")
        validate_key(request.idempotency_key)
        v.raise_if_any()
        reply = await self._dead_letters.redrive(
            KeyedCall(
                "RedriveDeadLetter",
                request,
                pb.RedriveDeadLetterResponse,
                lambda row: pb.RedriveDeadLetterResponse(notification=convert.notification(row)),
            ),
            request.dead_letter_id,
        )
        _log.info(
            "dead_letter_redriven",
            dead_letter_id=request.dead_letter_id,
            notification_id=reply.notification.notification_id,
        )
        return reply


async def take_events(intake: EventIntake, events: Sequence[event_pb2.Event]) -> list[pb.EventResult]:
    """One result per event, in order: the valid ones taken by the intake (deduplicated by event id, one
    transaction), the invalid ones refused with their violations and their aggregate's later ones deferred.
    DeliverEvents answers these; on the broker transport the consumer acknowledges by them
    (finmesh.notify.api.events_consumer)."""
    refused = _refusals(events)
    taken = [convert.incoming_event(e) for i, e in enumerate(events) if i not in refused]
    outcomes = iter(await intake.deliver_batch(taken) if taken else [])
    results = []
    for i, event in enumerate(events):
        if i in refused:
            results.append(refused[i])
            continue
        outcome = next(outcomes)
        results.append(
            pb.EventResult(
                event_id=event.event_id,
                notification_ids=outcome.notification_ids,
                outcome=pb.EVENT_OUTCOME_DUPLICATE if outcome.duplicate else pb.EVENT_OUTCOME_DELIVERED,
            )
        )
    return results


def _refusals(events: Any) -> dict[int, pb.EventResult]:
    """Results of the events not taken, by position: the invalid ones, and every later event of their
    aggregate (taking those would put the aggregate's events out of order)."""
    results = {}
    for i, violations in event_intake.not_taken(events, validate.event_violations).items():
        event_id = excerpt(events[i].event_id, 64)
        if not violations:
            results[i] = pb.EventResult(event_id=event_id, outcome=pb.EVENT_OUTCOME_DEFERRED)
            continue
        results[i] = pb.EventResult(
            event_id=event_id,
            outcome=pb.EVENT_OUTCOME_REFUSED,
            field_violations=[pb.FieldViolation(field=v.field, description=v.description) for v in violations],
        )
    return results
