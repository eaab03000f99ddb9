"""The rules of a provider's state and the names the store gives them, defined once.

Python uses them directly; the Lua scripts get the constants from `lua_prelude()`, generated
from this module when the scripts are loaded. The two rules that must also be written in Lua
(`effective` and `is_irregular` in lib.lua, which run inside scripts) are checked against
these on a table of cases by tests/test_rules.py.
"""
from __future__ import annotations

from typing import Any, Mapping

STATUSES = ("idle", "busy", "maintenance", "error", "offline")
LIVE_STATUSES = ("idle", "busy", "maintenance", "error")
OFFLINE, IDLE = "offline", "idle"

# Hash fields of a claim: a claim ends by removing them all (lib.lua's clear_claim), and a
# restore drops them (claims do not survive a restore).
CLAIM_FIELDS = ("claim_id", "claimant", "claim_expires_at", "claim_ttl_ms", "claim_confirmed")
# The fields every state transition needs, read in one HMGET (status first: lib.lua).
STATE_FIELDS = ("status", "lease_expires_at", "claim_id", "claimant", "claim_expires_at",
                "claim_confirmed", "summary", "version", "index_keys", "bucket_stems", "grace_until")

# Capacity counters: field "<status>|<kind>|<name>" of the counts hash. A provider's "summary"
# field lists its [kind, name, amount] contributions (indexing.summary_contribution).
COUNTER_SEP = "|"
COUNTER_KINDS = {
    "n": "providers",
    "mp": "providers per GPU model",
    "mg": "GPUs per GPU model",
    "mv": "VRAM (MB) per GPU model",
    "lp": "providers per location",
    "lg": "GPUs per location",
}

# Key suffixes after the registry's prefix that Lua needs besides the ones passed as
# arguments (keys.py builds every key from these).
PROVIDER_SUFFIX = "provider:"
NO_KEY_SUFFIX = "tmp:none"
# A GPU bucket is "<GPU index>:<vram>:<status>" (Keys.bucket, lib.lua's bucket_add).
BUCKET_SEP = ":"
# Live GPU fields a heartbeat may update; the rest of a GPU changes only with its details.
LIVE_GPU_FIELDS = (
    "utilization_gpu_percent",
    "utilization_memory_percent",
    "temperature_c",
    "power_draw_w",
    "is_healthy",
)
# Separates the GPUs' JSON fragments in `gpu_specs` and `gpu_live` (gpu_fragments.py): JSON
# text never holds this control character raw.
GPU_SEP = "\x1e"
# A GPU token is "<model>|<architecture>|<vram>[!]" ("!": unhealthy), see indexing.gpu_token.
UNHEALTHY_MARK = "!"


def counter_field(status: str, kind: str, name: str) -> str:
    """Return the counts hash field of a counter."""
    return f"{status}{COUNTER_SEP}{kind}{COUNTER_SEP}{name}"


def parse_counter_field(field: str) -> tuple[str, str, str]:
    """Return (status, kind, name) of a counts hash field."""
    status, kind, name = field.split(COUNTER_SEP, 2)
    return status, kind, name


def effective_status(
    status: str | None, lease_expires_at_ms: int | None, claim_id: str | None,
    claim_confirmed: bool, claim_expires_at_ms: int | None, now_ms: int,
) -> str:
    """Return the status a provider shows at `now_ms` (lib.lua's `effective`).

    Offline from its lease deadline on; idle again from the deadline of an unconfirmed claim
    on; else the stored status.
    """
    status = status or OFFLINE
    if status == OFFLINE or (lease_expires_at_ms or 0) <= now_ms:
        return OFFLINE
    if claim_id is not None and not claim_confirmed and (claim_expires_at_ms or 0) <= now_ms:
        return IDLE
    return status


def _ms(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0


def effective_status_of_hash(fields: Mapping[str, str], now_ms: int) -> str:
    """Return `effective_status` of a provider's raw hash fields."""
    return effective_status(
        fields.get("status"), _ms(fields.get("lease_expires_at")), fields.get("claim_id"),
        fields.get("claim_confirmed") == "1", _ms(fields.get("claim_expires_at")), now_ms,
    )


def is_irregular(gpu_keys: str, gpus: Any = None) -> bool:
    """Return whether a provider belongs in the irregular set (lib.lua's `is_irregular`).

    Index arithmetic alone cannot answer a per-GPU filter for it: a GPU is unhealthy, or its
    GPUs differ in canonical model or architecture. `gpu_keys` holds one GPU token per GPU.
    """
    tokens = gpu_keys.split()
    kinds = {token.rsplit("|", 1)[0] for token in tokens}
    return len(kinds) > 1 or any(token.endswith(UNHEALTHY_MARK) for token in tokens)


def is_claim_field(name: str) -> bool:
    """Return whether a hash field belongs to a claim (a restore drops them: claims end)."""
    return name in CLAIM_FIELDS or name.startswith("claim_")


def _lua(value: Any) -> str:
    if isinstance(value, str):
        text = value.replace("\\", "\\\\").replace("'", "\\'")
        # Control characters as Lua's three-digit escapes (a newline would end the literal).
        return "'" + "".join(f"\\{ord(c):03d}" if c < " " else c for c in text) + "'"
    if isinstance(value, (tuple, list)):
        return "{" + ", ".join(_lua(v) for v in value) + "}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"[{_lua(k)}] = {_lua(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no Lua form for {value!r}")


def lua_prelude() -> str:
    """Return the Lua constants generated from this module, put before lib.lua in every script."""
    constants = {
        "STATUSES": STATUSES,
        "LIVE_STATUSES": LIVE_STATUSES,
        "OFFLINE": OFFLINE,
        "IDLE": IDLE,
        "CLAIM_FIELDS": CLAIM_FIELDS,
        "STATE_FIELDS": STATE_FIELDS,
        "COUNTER_SEP": COUNTER_SEP,
        "COUNTER_KINDS": {kind: kind for kind in COUNTER_KINDS},
        "PROVIDER_SUFFIX": PROVIDER_SUFFIX,
        "NO_KEY_SUFFIX": NO_KEY_SUFFIX,
        "BUCKET_SEP": BUCKET_SEP,
        "UNHEALTHY_MARK": UNHEALTHY_MARK,
        "LIVE_GPU_FIELDS": LIVE_GPU_FIELDS,
        "GPU_SEP": GPU_SEP,
    }
    lines = ["-- Generated from app/rules.py when the scripts are loaded: edit it there."]
    lines += [f"local {name} = {_lua(value)}" for name, value in constants.items()]
    lines.append("local function counter_field(status, kind, name)\n"
                 "  return status .. COUNTER_SEP .. kind .. COUNTER_SEP .. name\nend")
    return "\n".join(lines) + "\n"
