"""Notify's senders through real local servers: SMS over HTTP, e-mail over SMTP, signed webhooks."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import grpc
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from finmesh.common.v1 import event_pb2
from finmesh.notify.clients.senders import Outgoing, SendError
from finmesh.notify.clients.senders.sms import HttpSmsSender
from finmesh.notify.clients.senders.webhook import WebhookSender
from finmesh.notify.domain import signing
from finmesh.notify.v1 import notify_service_pb2 as pb
from finmesh.platform.rpc.guard import field_violations_of, reason_of
from tests.notify.conftest import free_port, running_notify

PHONE = "+8613800138000"


def key() -> str:
    return uuid.uuid4().hex


def code_sms(user: str, code: str = "482913", phone: str = PHONE, **extra: str) -> pb.SendNotificationRequest:
    return pb.SendNotificationRequest(
        idempotency_key=key(),
        user_id=user,
        channel=pb.CHANNEL_SMS,
        category=pb.CATEGORY_SECURITY,
        template="verification_code",
        params={"code": code, "minutes": "5"},
        address=phone,
        **extra,
    )


async def test_sms_provider_failing_intermittently_is_retried_until_sent(databases, tmp_path: Path, sms) -> None:
    """Two 503s from the provider, then success: the code is sent exactly once, on the third attempt."""
    sms.fail_next(2)
    async with running_notify(databases, tmp_path, sms=sms) as notify:
        with capture_logs() as logs:
            sent = await notify.stub.SendNotification(code_sms("u-1"))
            assert sent.notification.status == pb.NOTIFICATION_STATUS_QUEUED
            done = await notify.wait_status(sent.notification.notification_id, pb.NOTIFICATION_STATUS_SENT)
    assert done.attempts == 3
    assert sms.requests == 3
    assert [m["to"] for m in sms.messages] == [PHONE]
    assert "482913" in sms.messages[0]["text"]
    # Neither the phone number nor the code ever reached a log line.
    assert not [entry for entry in logs if PHONE in repr(entry) or "482913" in repr(entry)]


async def test_permanently_failing_sms_is_dead_lettered_then_redriven_after_the_fix(
    databases, tmp_path: Path, sms
) -> None:
    """After max attempts the message is parked; ListDeadLetters shows it; a redrive after the fix sends it once."""
    sms.fail_number(PHONE)
    async with running_notify(databases, tmp_path, sms=sms) as notify:
        sent = await notify.stub.SendNotification(code_sms("u-2"))
        nid = sent.notification.notification_id
        dead = await notify.wait_status(nid, pb.NOTIFICATION_STATUS_DEAD_LETTERED)
        assert dead.attempts == 4
        letters = (await notify.stub.ListDeadLetters(pb.ListDeadLettersRequest())).dead_letters
        assert [(d.notification_id, d.channel, d.attempts, d.redriven) for d in letters] == [
            (nid, pb.CHANNEL_SMS, 4, False)
        ]
        assert "503" in letters[0].last_error and PHONE not in letters[0].last_error
        assert sms.messages == []

        sms.recover()
        redrive = pb.RedriveDeadLetterRequest(idempotency_key=key(), dead_letter_id=letters[0].dead_letter_id)
        first = await notify.stub.RedriveDeadLetter(redrive)
        assert first.notification.status == pb.NOTIFICATION_STATUS_QUEUED
        again = await notify.stub.RedriveDeadLetter(redrive)  # same key: the same answer, no second send
        assert again == first
        await notify.wait_status(nid, pb.NOTIFICATION_STATUS_SENT)
        assert len(sms.to(PHONE)) == 1
        with pytest.raises(grpc.aio.AioRpcError) as twice:
            await notify.stub.RedriveDeadLetter(
                pb.RedriveDeadLetterRequest(idempotency_key=key(), dead_letter_id=letters[0].dead_letter_id)
            )
        assert twice.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert reason_of(twice.value) == "INVALID_STATE"
        listed = (await notify.stub.ListDeadLetters(pb.ListDeadLettersRequest())).dead_letters
        assert [d.redriven for d in listed] == [True]


async def test_provider_rejecting_the_request_dead_letters_without_retrying(databases, tmp_path: Path, sms) -> None:
    """A 4xx (here: a wrong API key) cannot be fixed by retrying: one attempt, then the dead letters."""
    sms.api_key = "rotated-key"
    async with running_notify(databases, tmp_path, sms=sms, sms_api_key="stale-key") as notify:
        sent = await notify.stub.SendNotification(code_sms("u-3"))
        dead = await notify.wait_status(sent.notification.notification_id, pb.NOTIFICATION_STATUS_DEAD_LETTERED)
    assert dead.attempts == 1
    assert sms.requests == 1


async def test_email_goes_over_smtp_in_the_users_locale_after_a_temporary_refusal(
    databases, tmp_path: Path, smtp
) -> None:
    """The user registered with locale en: the code goes out in English, retried past a 451."""
    smtp.fail_next(1)
    async with running_notify(databases, tmp_path, smtp=smtp) as notify:
        registered = event_pb2.Event(
            event_id=str(uuid.uuid4()),
            source="identity",
            event_type="identity.user.registered.v1",
            aggregate_id="u-4",
            sequence=1,
            user_id="u-4",
        )
        registered.payload.update({"user_id": "u-4", "locale": "en"})
        await notify.stub.DeliverEvent(pb.DeliverEventRequest(event=registered))
        sent = await notify.stub.SendNotification(
            pb.SendNotificationRequest(
                idempotency_key=key(),
                user_id="u-4",
                channel=pb.CHANNEL_EMAIL,
                category=pb.CATEGORY_SECURITY,
                template="verification_code",
                params={"code": "771234", "minutes": "10"},
                address="li.lei@example.com",
            )
        )
        assert sent.notification.locale == "en"
        done = await notify.wait_status(sent.notification.notification_id, pb.NOTIFICATION_STATUS_SENT)
    assert done.attempts == 2
    [mail] = smtp.to("li.lei@example.com")
    assert mail["Subject"] == "Your verification code"
    assert "771234" in mail.get_content()
    assert mail["Message-ID"] == f"<{done.notification_id}@finmesh>"


async def test_smtp_permanent_refusal_and_unconfigured_channel_go_to_dead_letters(
    databases, tmp_path: Path, smtp
) -> None:
    """550 for the mailbox is final; a channel without settings parks its messages for a later redrive."""
    smtp.refused_recipients.add("nobody@example.com")
    async with running_notify(databases, tmp_path, smtp=smtp) as notify:
        mail = await notify.stub.SendNotification(
            pb.SendNotificationRequest(
                idempotency_key=key(),
                user_id="u-5",
                channel=pb.CHANNEL_EMAIL,
                category=pb.CATEGORY_TRANSACTIONAL,
                template="welcome",
                address="nobody@example.com",
            )
        )
        text = await notify.stub.SendNotification(code_sms("u-5"))  # no SMS provider configured
        for sent in (mail, text):
            dead = await notify.wait_status(sent.notification.notification_id, pb.NOTIFICATION_STATUS_DEAD_LETTERED)
            assert dead.attempts == 1
        letters = await notify.stub.ListDeadLetters(pb.ListDeadLettersRequest(page_size=1))
        assert len(letters.dead_letters) == 1 and letters.next_page_token
        rest = await notify.stub.ListDeadLetters(pb.ListDeadLettersRequest(page_token=letters.next_page_token))
        assert {d.last_error for d in [*letters.dead_letters, *rest.dead_letters]} >= {"SMS channel is not configured"}


async def test_webhook_is_signed_verified_by_the_receiver_and_a_replay_is_refused(
    databases, tmp_path: Path, receiver
) -> None:
    """The receiver checks HMAC-SHA256 over timestamp.body; one failed attempt is retried; a stale replay fails."""
    receiver.fail_next(1)
    async with running_notify(databases, tmp_path) as notify:
        created = await notify.stub.CreateWebhook(
            pb.CreateWebhookRequest(idempotency_key="hook-1", url=receiver.url, event_types=["payments.payment.*"])
        )
        assert created.signing_secret.startswith("whsec_")
        replay = await notify.stub.CreateWebhook(
            pb.CreateWebhookRequest(idempotency_key="hook-1", url=receiver.url, event_types=["payments.payment.*"])
        )
        assert replay == created  # the retry of a lost answer gets the secret too
        receiver.secret = created.signing_secret
        event = event_pb2.Event(
            event_id=str(uuid.uuid4()),
            source="payments",
            event_type="payments.payment.captured.v1",
            aggregate_id="acc-1",
            sequence=1,
            user_id="u-6",
        )
        event.payload.update({"payment_id": "p-1", "status": "CAPTURED", "amount_minor_units": "1234"})
        delivered = await notify.stub.DeliverEvent(pb.DeliverEventRequest(event=event))
        again = await notify.stub.DeliverEvent(pb.DeliverEventRequest(event=event))
        assert again.duplicate and not again.notification_ids
        [body] = await receiver.wait_for(1)
        hook_ids = [
            i for i in delivered.notification_ids if (await notify.notification(i)).channel == pb.CHANNEL_WEBHOOK
        ]
        [hook] = [await notify.wait_status(i, pb.NOTIFICATION_STATUS_SENT) for i in hook_ids]
    assert hook.attempts == 2
    assert body["event_id"] == event.event_id and body["data"]["amount_minor_units"] == "1234"
    assert receiver.rejected == [] and receiver.duplicates == 0

    # An attacker who captured the request replays it ten minutes later: refused as stale.
    raw = json.dumps(body).encode()
    old = str(int(time.time()) - 600)
    signature = "v1=" + hmac.new(created.signing_secret.encode(), old.encode() + b"." + raw, hashlib.sha256).hexdigest()
    forged = "v1=" + hmac.new(b"guess", raw, hashlib.sha256).hexdigest()
    async with aiohttp.ClientSession() as session:
        for stamp, sig in ((old, signature), (str(int(time.time())), forged)):
            async with session.post(
                receiver.url,
                data=raw,
                headers={
                    "X-Finmesh-Timestamp": stamp,
                    "X-Finmesh-Signature": sig,
                    "X-Finmesh-Event-Id": event.event_id,
                },
            ) as response:
                assert response.status == 401
    assert receiver.rejected == ["stale", "bad_signature"]


async def test_webhook_urls_must_be_https_or_loopback(databases, tmp_path: Path) -> None:
    """Plain http to another host, credentials in the URL and bad patterns are INVALID_ARGUMENT, by field."""
    async with running_notify(databases, tmp_path) as notify:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await notify.stub.CreateWebhook(
                pb.CreateWebhookRequest(
                    idempotency_key=key(), url="http://example.com/hook", event_types=["Bad Type", "*"]
                )
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field_violations_of(refused.value) == ["url", "event_types[0]"]
        with pytest.raises(grpc.aio.AioRpcError) as creds:
            await notify.stub.CreateWebhook(
                pb.CreateWebhookRequest(
                    idempotency_key=key(), url="https://user:pw@example.com/hook", event_types=["*"]
                )
            )
        assert field_violations_of(creds.value) == ["url"]


async def test_the_send_joins_the_requests_trace_by_a_link_without_personal_data(
    sqlite_databases, tmp_path: Path, sms, spans
) -> None:
    """The worker's send span links to the trace of the call that queued it; no phone or code in attributes."""
    async with running_notify(sqlite_databases, tmp_path, sms=sms) as notify:
        sent = await notify.stub.SendNotification(code_sms("u-7", code="135790"))
        await notify.wait_status(sent.notification.notification_id, pb.NOTIFICATION_STATUS_SENT)
    finished = spans.get_finished_spans()
    [server] = [s for s in finished if s.name.endswith("/SendNotification")]
    [send] = [s for s in finished if s.name == "notify send sms"]
    assert [link.context.trace_id for link in send.links] == [server.context.trace_id]
    attributes = repr([dict(s.attributes or {}) for s in finished])
    assert PHONE not in attributes and "135790" not in attributes


# -- the senders on their own, against a receiver that answers whatever the test asks ----------------------


@asynccontextmanager
async def answering(
    status: int, body: bytes = b"", content_type: str | None = None, location: str = ""
) -> AsyncIterator[tuple[str, list[web.Request], list[bytes]]]:
    """A loopback server answering every POST with `status` and `body`; it records requests and bodies."""
    seen: list[web.Request] = []
    bodies: list[bytes] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(request)
        bodies.append(await request.read())
        headers = {"Location": location} if location else {}
        response = web.Response(status=status, body=body, headers=headers)
        if content_type is not None:
            response.content_type = content_type
        return response

    app = web.Application()
    app.router.add_post("/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}", seen, bodies
    finally:
        await runner.cleanup()


def hook_message(url: str) -> Outgoing:
    return Outgoing("n-1", "WEBHOOK", url, "", '{"event_id": "e-1"}', event_id="e-1", secret="whsec_test")


def sms_message() -> Outgoing:
    return Outgoing("n-2", "SMS", PHONE, "", "code 482913")


@pytest.mark.parametrize(
    ("body", "content_type"),
    [(b"ok", None), (b"ok", "text/plain"), (b"", None), (b'{"ok": true}', "application/json"), (b"\xff\xfe", None)],
)
async def test_any_2xx_answer_delivers_whatever_its_body(body: bytes, content_type: str | None) -> None:
    """Senders do not read answers: a receiver saying 200 "ok" without a content type has the message."""
    sender, sms = WebhookSender(timeout=2), None
    try:
        async with answering(200, body, content_type) as (url, seen, _):
            await sender.send(hook_message(url + "/hook"))
            sms = HttpSmsSender(url, "key", timeout=2)
            await sms.send(sms_message())
        assert len(seen) == 2
    finally:
        await sender.close()
        if sms is not None:
            await sms.close()


@pytest.mark.parametrize(
    ("status", "permanent"),
    [
        (400, True),
        (401, True),
        (404, True),
        (408, False),
        (409, False),
        (425, False),
        (429, False),
        (500, False),
        (503, False),
        (302, True),
        (307, True),
    ],
)
async def test_answers_map_to_retry_or_dead_letter(status: int, permanent: bool) -> None:
    """Throttling, timeouts and server errors are retried; other refusals, and redirects, are final."""
    for make, what in (
        (lambda url: (WebhookSender(timeout=2), hook_message(url + "/hook")), "webhook receiver"),
        (lambda url: (HttpSmsSender(url, "key", timeout=2), sms_message()), "SMS provider"),
    ):
        async with answering(status, b'{"error": "no"}', "application/json") as (url, _, _):
            sender, message = make(url)
            try:
                with pytest.raises(SendError) as failed:
                    await sender.send(message)
            finally:
                await sender.close()
        assert failed.value.permanent is permanent
        assert str(failed.value) == f"{what} answered HTTP {status}"


async def test_a_webhook_redirect_is_not_followed() -> None:
    """A signed event must not be bounced elsewhere: the redirect's target never hears of it."""
    async with (
        answering(200) as (elsewhere, bounced, _),
        answering(307, location=elsewhere + "/stolen") as (url, seen, _),
    ):
        sender = WebhookSender(timeout=2)
        try:
            with pytest.raises(SendError) as failed:
                await sender.send(hook_message(url + "/hook"))
        finally:
            await sender.close()
    assert failed.value.permanent
    assert len(seen) == 1 and bounced == []


async def test_an_unreachable_party_is_retried_and_named_without_the_address() -> None:
    port = free_port()  # nothing listens there
    for sender, message, what in (
        (WebhookSender(timeout=2), hook_message(f"http://127.0.0.1:{port}/hook"), "webhook receiver"),
        (HttpSmsSender(f"http://127.0.0.1:{port}", "key", timeout=2), sms_message(), "SMS provider"),
    ):
        try:
            with pytest.raises(SendError) as failed:
                await sender.send(message)
        finally:
            await sender.close()
        assert not failed.value.permanent
        assert str(failed.value).startswith(f"{what} unreachable: ")
        assert str(port) not in str(failed.value)


async def test_what_the_senders_put_on_the_wire() -> None:
    """SMS: bearer key, idempotency key and JSON; webhooks: the body as given, signed, with the event id."""
    async with answering(202, b'{"message_id": "m-1"}', "application/json") as (url, seen, bodies):
        sms = HttpSmsSender(url + "/", "sms-key", timeout=2)
        hook = WebhookSender(timeout=2)
        try:
            await sms.send(sms_message())
            before = int(time.time())
            await hook.send(hook_message(url + "/hooks/1"))
        finally:
            await sms.close()
            await hook.close()
    sent_sms, sent_hook = seen
    assert sent_sms.path == "/messages"
    assert sent_sms.headers["Authorization"] == "Bearer sms-key"
    assert sent_sms.headers["Idempotency-Key"] == "n-2"
    assert sent_sms.headers["Content-Type"] == "application/json"
    assert json.loads(bodies[0]) == {"to": PHONE, "text": "code 482913", "reference": "n-2"}
    assert sent_hook.path == "/hooks/1"
    assert sent_hook.headers["Content-Type"] == "application/json"
    assert sent_hook.headers["X-Finmesh-Event-Id"] == "e-1"
    assert bodies[1] == b'{"event_id": "e-1"}'
    stamp = sent_hook.headers["X-Finmesh-Timestamp"]
    assert int(stamp) >= before
    assert signing.verify("whsec_test", stamp, sent_hook.headers["X-Finmesh-Signature"], bodies[1], time.time()) == ""
