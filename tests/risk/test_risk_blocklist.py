"""Block lists over gRPC: add with expiry, list, remove; idempotent and refusing with reason codes."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from google.protobuf import timestamp_pb2

from finmesh.platform.rpc.guard import field_violations_of, reason_of
from finmesh.risk.v1 import risk_service_pb2 as pb
from tests.risk.harness import key, payment, risk_node


def at(moment: datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(moment)
    return ts


async def test_add_list_remove_and_expiry(databases, tmp_path: Path) -> None:
    """Entries block until removed or expired; list shows only active ones; retries replay the first answer."""
    async with risk_node(await databases.new("risk"), tmp_path) as risk:
        stub = risk.stub
        add = pb.AddBlockListEntryRequest(
            idempotency_key=key(), kind=pb.BLOCK_LIST_KIND_DEVICE, value="emulator-7", reason="device farm"
        )
        entry = (await stub.AddBlockListEntry(add)).entry
        assert (await stub.AddBlockListEntry(add)).entry == entry
        with pytest.raises(grpc.aio.AioRpcError) as duplicate:
            await stub.AddBlockListEntry(
                pb.AddBlockListEntryRequest(idempotency_key=key(), kind=pb.BLOCK_LIST_KIND_DEVICE, value="emulator-7")
            )
        assert (duplicate.value.code(), reason_of(duplicate.value)) == (
            grpc.StatusCode.ALREADY_EXISTS,
            "BLOCK_LIST_ENTRY_EXISTS",
        )

        soon = datetime.now(UTC) + timedelta(seconds=1)
        brief = (
            await stub.AddBlockListEntry(
                pb.AddBlockListEntryRequest(
                    idempotency_key=key(), kind=pb.BLOCK_LIST_KIND_IP, value="::ffff:192.0.2.9", expires_at=at(soon)
                )
            )
        ).entry
        assert brief.value == "192.0.2.9" and brief.HasField("expires_at")

        blocked = await risk.assess(payment(device_id="emulator-7", ip_address="192.0.2.9"))
        assert {r.code for r in blocked.reasons} == {"BLOCK_LISTED_DEVICE", "BLOCK_LISTED_IP"}
        assert blocked.warning_level == pb.WARNING_LEVEL_CRITICAL
        listed = await stub.ListBlockListEntries(pb.ListBlockListEntriesRequest())
        assert [e.entry_id for e in listed.entries] == [brief.entry_id, entry.entry_id]

        await asyncio.sleep(max(0.0, (soon - datetime.now(UTC)).total_seconds()) + 0.05)
        ips = await stub.ListBlockListEntries(pb.ListBlockListEntriesRequest(kind=pb.BLOCK_LIST_KIND_IP))
        assert list(ips.entries) == []
        assert {r.code for r in (await risk.assess(payment(ip_address="192.0.2.9"))).reasons} == set()

        remove = pb.RemoveBlockListEntryRequest(idempotency_key=key(), entry_id=entry.entry_id)
        await stub.RemoveBlockListEntry(remove)
        await stub.RemoveBlockListEntry(remove)  # replayed, not refused
        assert {r.code for r in (await risk.assess(payment(device_id="emulator-7"))).reasons} == set()
        with pytest.raises(grpc.aio.AioRpcError) as gone:
            await stub.RemoveBlockListEntry(
                pb.RemoveBlockListEntryRequest(idempotency_key=key(), entry_id=entry.entry_id)
            )
        assert (gone.value.code(), reason_of(gone.value)) == (grpc.StatusCode.NOT_FOUND, "BLOCK_LIST_ENTRY_NOT_FOUND")


async def test_bad_entries_are_invalid_argument(databases, tmp_path: Path) -> None:
    """No kind, no value, a malformed IP, a past expiry and a missing key each name their field."""
    async with risk_node(await databases.new("risk"), tmp_path) as risk:
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await risk.stub.AddBlockListEntry(
                pb.AddBlockListEntryRequest(expires_at=at(datetime.now(UTC) - timedelta(minutes=1)))
            )
        assert sorted(field_violations_of(bad.value)) == ["expires_at", "idempotency_key", "kind", "value"]
        with pytest.raises(grpc.aio.AioRpcError) as ip:
            await risk.stub.AddBlockListEntry(
                pb.AddBlockListEntryRequest(idempotency_key=key(), kind=pb.BLOCK_LIST_KIND_IP, value="999.1.1.1")
            )
        assert field_violations_of(ip.value) == ["value"]
        with pytest.raises(grpc.aio.AioRpcError) as no_key:
            await risk.stub.RemoveBlockListEntry(pb.RemoveBlockListEntryRequest())
        assert field_violations_of(no_key.value) == ["idempotency_key", "entry_id"]
