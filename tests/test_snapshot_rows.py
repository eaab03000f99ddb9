"""Rows of the `providers` table as COPY text: escaping, NUL, odd values, counts."""
from __future__ import annotations

import orjson

from app.snapshot.rows import COLUMNS, Counts, RowBuilder, copy_text, effective_status, jsonb_text

NOW = 1_790_000_000_000


def fields(**extra: str) -> dict[str, str]:
    base = {
        "id": "p1", "owner_id": "o", "name": "n", "status": "busy",
        "registered_at": str(NOW - 5000), "last_seen_at": str(NOW - 1000),
        "lease_expires_at": str(NOW + 29000), "gpus": '[{"model_name":"A100"}]',
        "metadata": "{}", "gpu_keys": "a100|ampere",
    }
    return {**base, **extra}


def columns(line: str) -> dict[str, str]:
    values = line.rstrip("\n").split("\t")
    assert len(values) == len(COLUMNS)
    return dict(zip(COLUMNS, values))


def test_copy_text_escapes_what_copy_reads_specially_and_replaces_nul() -> None:
    assert copy_text("a\\b\tc\nd\re\x00f") == "a\\\\b\\tc\\nd\\re\ufffdf"
    assert copy_text(None) == r"\N"


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

    out = columns(builder.line(row))
    assert out["name"] == "tab\\there"
    assert out["registered_at"] == "2026-09-21 14:13:15.000+00"
    assert orjson.loads(out["redis_hash"].replace("\\\\", "\\"))["extra_field"] == "kept"
    assert (row.status, row.models) == ("busy", ("a100",))


def test_timestamps_out_of_range_become_null_rather_than_failing_the_row() -> None:
    builder = RowBuilder(NOW)
    row = builder.read("p1", fields(registered_at="99999999999999999999", last_seen_at="x"), NOW)

    out = columns(builder.line(row))
    assert (out["registered_at"], out["last_seen_at"]) == (r"\N", r"\N")


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
