"""Rows of the `providers` table in COPY's binary format: NUL, odd values, timestamps, counts."""
from __future__ import annotations

import struct
from datetime import datetime, timedelta, timezone

import orjson

from app.snapshot.rows import COLUMNS, Counts, RowBuilder, effective_status, jsonb_text, text_value

NOW = 1_790_000_000_000


def fields(**extra: str) -> dict[str, str]:
    base = {
        "id": "p1", "owner_id": "o", "name": "n", "status": "busy",
        "registered_at": str(NOW - 5000), "last_seen_at": str(NOW - 1000),
        "lease_expires_at": str(NOW + 29000), "gpus": '[{"model_name":"A100"}]',
        "metadata": "{}", "gpu_keys": "a100|ampere",
    }
    return {**base, **extra}


def columns(data: bytes) -> dict[str, bytes | None]:
    """Split one row of COPY's binary format into its columns' bytes (None for NULL)."""
    (count,) = struct.unpack_from(">h", data)
    assert count == len(COLUMNS)
    values, at = [], 2
    for _ in range(count):
        (length,) = struct.unpack_from(">i", data, at)
        at += 4
        values.append(None if length < 0 else data[at : at + length])
        at += max(length, 0)
    assert at == len(data)
    return dict(zip(COLUMNS, values))


def timestamp(value: bytes | None) -> datetime | None:
    """Decode a binary timestamptz: microseconds since 2000-01-01 UTC."""
    if value is None:
        return None
    return datetime(2000, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=struct.unpack(">q", value)[0])


def test_text_values_keep_every_character_but_nul_which_becomes_the_replacement_character() -> None:
    assert text_value("a\\b\tc\nd\re\x00f") == "a\\b\tc\nd\re\ufffdf"
    assert text_value(None) is None


def test_effective_status_is_offline_from_the_lease_deadline_on() -> None:
    assert effective_status(fields(), NOW) == "busy"
    assert effective_status(fields(lease_expires_at=str(NOW)), NOW) == "offline"
    assert effective_status(fields(lease_expires_at="garbage"), NOW) == "offline"


def test_effective_status_is_idle_again_once_an_unconfirmed_claim_lapsed() -> None:
    claimed = fields(claim_id="c1", claimant="s", claim_expires_at=str(NOW - 1))
    assert effective_status(claimed, NOW) == "idle"
    assert effective_status({**claimed, "claim_confirmed": "1"}, NOW) == "busy"
    assert effective_status({**claimed, "claim_expires_at": str(NOW + 1)}, NOW) == "busy"


def test_jsonb_text_replaces_nul_escapes_and_strict_mode_drops_invalid_json() -> None:
    assert jsonb_text('{"a":"x\\u0000y"}') == '{"a":"x\ufffdy"}'
    assert jsonb_text('{"a":"\\\\u0000 is text"}') == '{"a":"\\\\u0000 is text"}'
    assert jsonb_text("[{not json", strict=True) is None


def test_a_row_keeps_the_whole_hash_and_formats_timestamps_in_utc() -> None:
    builder = RowBuilder(NOW)
    row = builder.read("p1", fields(name="tab\there", extra_field="kept"), NOW)

    out = columns(builder.data(row))
    assert out["name"] == b"tab\there"
    assert timestamp(out["registered_at"]) == datetime(2026, 9, 21, 14, 13, 15, tzinfo=timezone.utc)
    assert timestamp(out["snapshot_at"]) == datetime(2026, 9, 21, 14, 13, 20, tzinfo=timezone.utc)
    assert out["gpus"] == b"\x01" + fields()["gpus"].encode()  # jsonb: a version byte, then the text
    assert orjson.loads(out["redis_hash"])["extra_field"] == "kept"
    assert struct.unpack(">i", out["gpu_count"]) == (1,)
    assert out["digest"] == row.digest
    assert (row.status, row.models) == ("busy", ("a100",))


def test_a_minimal_row_keeps_only_what_a_restore_needs() -> None:
    builder = RowBuilder(NOW)
    row = builder.read("p1", fields(), NOW)

    out = columns(builder.data(row, minimal=True))
    assert [name for name, value in out.items() if value is None] == [
        "owner_id", "name", "hostname", "ip_address", "location", "gpus", "metadata",
        "registered_at", "last_seen_at", "lease_expires_at",
    ]
    assert orjson.loads(out["redis_hash"]) == fields()


def test_timestamps_out_of_range_become_null_rather_than_failing_the_row() -> None:
    builder = RowBuilder(NOW)
    row = builder.read("p1", fields(registered_at="99999999999999999999", last_seen_at="x"), NOW)

    out = columns(builder.data(row))
    assert (out["registered_at"], out["last_seen_at"]) == (None, None)
    year_one = builder.read("p1", fields(registered_at="-62135596800000"), NOW)
    assert timestamp(columns(builder.data(year_one))["registered_at"]) == datetime(1, 1, 1, tzinfo=timezone.utc)
    year_10000 = builder.read("p1", fields(registered_at="253402300800000"), NOW)
    assert columns(builder.data(year_10000))["registered_at"] is None


def test_the_digest_changes_with_the_hash_and_with_the_effective_status() -> None:
    builder = RowBuilder(NOW)
    first = builder.read("p1", fields(), NOW).digest
    assert builder.read("p1", dict(reversed(list(fields().items()))), NOW).digest == first
    assert builder.read("p1", fields(name="other"), NOW).digest != first
    assert builder.read("p1", fields(), NOW + 60_000).digest != first  # the lease lapsed


def test_counts_group_providers_and_gpus_by_status_and_model() -> None:
    builder, counts = RowBuilder(NOW), Counts()
    for gpu_keys in ("a100|x a100|x", "a100|x h100|y", "a100|x a100|x"):
        counts.add(builder.read("p", fields(gpu_keys=gpu_keys), NOW))

    assert counts.rows() == [
        ("busy", None, 3, 6), ("busy", "a100", 3, 5), ("busy", "h100", 1, 1),
    ]
    assert counts.total_gpus == 6
