"""The rules written in both languages agree: rules.py's and lib.lua's, on a table of cases."""
from __future__ import annotations

import json
from importlib import resources

import pytest

from app import rules
from app.store.indexing import gpu_token

NOW = 1_000_000


def lib_script(redis_db, body: str):
    """Register the prelude, lib.lua and `body` as one script (as scripts.py composes them)."""
    lib = resources.files("app.store").joinpath("lua", "lib.lua").read_text()
    return redis_db.register_script("\n".join([rules.lua_prelude(), lib, body]))


# (stored status, lease deadline, claim ID, claim confirmed, claim deadline) -> shown at NOW
EFFECTIVE_CASES = [
    (("idle", NOW + 1, None, False, None), "idle"),
    (("busy", NOW + 1, None, False, None), "busy"),
    (("maintenance", NOW + 1, None, False, None), "maintenance"),
    (("error", NOW + 5000, None, False, None), "error"),
    (("idle", NOW, None, False, None), "offline"),  # the deadline counts from its instant
    (("busy", NOW - 1, "c", True, None), "offline"),
    (("offline", NOW + 1000, None, False, None), "offline"),
    (("busy", None, None, False, None), "offline"),  # no lease at all
    (("busy", NOW + 1000, "c", False, NOW + 1), "busy"),
    (("busy", NOW + 1000, "c", False, NOW), "idle"),  # an unconfirmed claim lapsed
    (("busy", NOW + 1000, "c", False, None), "idle"),
    (("busy", NOW + 1000, "c", True, NOW - 10), "busy"),  # a confirmed claim has no deadline
    (("busy", NOW - 5, "c", False, NOW - 10), "offline"),
]


def test_effective_status_is_the_same_rule_in_python_and_lua(redis_db):
    script = lib_script(redis_db, """
ctx.now = tonumber(ARGV[1])
local out = {}
for i, c in ipairs(cjson.decode(ARGV[2])) do
  local h = {status = c[1]}
  if c[2] ~= cjson.null then h.lease_expires_at = tostring(c[2]) end
  if c[3] ~= cjson.null then h.claim_id = c[3] end
  if c[4] then h.claim_confirmed = '1' end
  if c[5] ~= cjson.null then h.claim_expires_at = tostring(c[5]) end
  out[i] = effective(h)
end
return out
""")
    cases = [case for case, _ in EFFECTIVE_CASES]
    lua = script(keys=[], args=[NOW, json.dumps(cases)])
    python = [rules.effective_status(*case, NOW) for case in cases]
    assert python == [expected for _, expected in EFFECTIVE_CASES]
    assert lua == python


def test_effective_status_of_a_hash_reads_the_stored_fields():
    fields = {"status": "busy", "lease_expires_at": str(NOW + 10), "claim_id": "c",
              "claim_expires_at": str(NOW - 1)}
    assert rules.effective_status_of_hash(fields, NOW) == "idle"
    assert rules.effective_status_of_hash({**fields, "claim_confirmed": "1"}, NOW) == "busy"
    assert rules.effective_status_of_hash({"lease_expires_at": "junk"}, NOW) == "offline"


def gpu(model: str, vram: int = 81920, arch: str = "ampere", healthy: bool = True) -> dict:
    return {"model_name": model, "vram_mb": vram, "architecture": arch, "is_healthy": healthy}


IRREGULAR_CASES = [
    ([gpu("A100")], False),
    ([gpu("A100"), gpu("a100 ", 40960)], False),  # one canonical model, VRAM may differ
    ([gpu("A100"), gpu("H100", arch="hopper")], True),
    ([gpu("A100"), gpu("A100", arch="hopper")], True),
    ([gpu("A100"), gpu("A100", healthy=False)], True),
    ([gpu("RTX*4090 ünï", 24576), gpu("RTX*4090 ÜNÏ", 24576)], False),
    ([gpu("A|B:2", arch="")], False),
    ([], False),
]


def test_irregular_is_the_same_rule_in_python_and_lua(redis_db):
    script = lib_script(redis_db, """
local out = {}
for i, gpu_keys in ipairs(cjson.decode(ARGV[1])) do out[i] = is_irregular(gpu_keys) and 1 or 0 end
return out
""")
    tokens = [" ".join(gpu_token(g) for g in gpus) for gpus, _ in IRREGULAR_CASES]
    python = [rules.is_irregular(t) for t in tokens]
    assert python == [irregular for _, irregular in IRREGULAR_CASES]
    assert [bool(v) for v in script(keys=[], args=[json.dumps(tokens)])] == python


def test_the_lua_prelude_holds_the_python_constants(redis_db):
    script = lib_script(redis_db, """
return {STATUSES, LIVE_STATUSES, CLAIM_FIELDS, STATE_FIELDS,
  {OFFLINE, IDLE, COUNTER_SEP, PROVIDER_SUFFIX, NO_KEY_SUFFIX, BUCKET_SEP, UNHEALTHY_MARK},
  counter_field('idle', 'mg', 'a100')}
""")
    statuses, live, claim, state, scalars, field = script(keys=[], args=[])
    assert tuple(statuses) == rules.STATUSES and tuple(live) == rules.LIVE_STATUSES
    assert tuple(claim) == rules.CLAIM_FIELDS and tuple(state) == rules.STATE_FIELDS
    assert scalars == [rules.OFFLINE, rules.IDLE, rules.COUNTER_SEP, rules.PROVIDER_SUFFIX,
                       rules.NO_KEY_SUFFIX, rules.BUCKET_SEP, rules.UNHEALTHY_MARK]
    assert field == rules.counter_field("idle", "mg", "a100")
    assert rules.parse_counter_field(field) == ("idle", "mg", "a100")


@pytest.mark.parametrize("name", sorted(
    p.name for p in resources.files("app.store").joinpath("lua").iterdir() if p.name.endswith(".lua")
))
def test_no_script_redefines_a_generated_constant(name):
    text = resources.files("app.store").joinpath("lua", name).read_text()
    for constant in ("STATUSES", "CLAIM_FIELDS", "STATE_FIELDS", "COUNTER_SEP", "BUCKET_SEP"):
        assert f"local {constant} =" not in text


def test_the_counter_kinds_are_the_ones_a_provider_contributes():
    from app.store.indexing import summary_contribution

    kinds = {kind for kind, _, _ in summary_contribution(
        {"gpus": [gpu("A100")], "location": "eu-west"}
    )}
    assert kinds == set(rules.COUNTER_KINDS)
