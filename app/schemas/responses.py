"""Schemas of what the API answers: used only to document the contract (`/openapi.json`).

Responses are built by `Provider.to_json` and the views; the contract tests check them
against these schemas, so a change on either side that the other does not follow fails.
"""
from __future__ import annotations

from marshmallow import INCLUDE, RAISE, Schema, fields, validate

from ..store.keys import STATUSES
from .providers import GpuSchema


class _Out(Schema):
    class Meta:
        unknown = RAISE  # documented as additionalProperties: false


class ClaimStateSchema(_Out):
    """Who holds a provider's claim and until when (the claim ID is the claimant's secret)."""

    claimant = fields.String(required=True, allow_none=True)
    confirmed = fields.Boolean(required=True)
    expires_at = fields.DateTime(required=True, allow_none=True)


class ProviderSchema(_Out):
    """A provider as the API shows it; `status` is effective (offline once the lease lapsed)."""

    id = fields.UUID(required=True)
    owner_id = fields.String(required=True)
    name = fields.String(required=True)
    hostname = fields.String(required=True, allow_none=True)
    ip_address = fields.String(required=True, allow_none=True)
    location = fields.String(required=True, allow_none=True)
    status = fields.String(required=True, validate=validate.OneOf(STATUSES))
    liveness = fields.String(
        required=True, validate=validate.OneOf(("live", "grace", "offline")),
        metadata={"description": "grace: the lease was extended after an outage of the registry and the daemon has not been heard since"},
    )
    gpus = fields.List(fields.Nested(GpuSchema), required=True)
    metadata = fields.Dict(required=True)
    registered_at = fields.DateTime(required=True)
    last_seen_at = fields.DateTime(required=True, allow_none=True)
    lease_expires_at = fields.DateTime(required=True, allow_none=True)
    version = fields.Integer(required=True)
    claim = fields.Nested(ClaimStateSchema, required=True, allow_none=True)


class LeaseSchema(_Out):
    """A heartbeat's answer: the status and lease after it, and the rhythm to keep."""

    id = fields.UUID(required=True)
    status = fields.String(required=True, validate=validate.OneOf(STATUSES))
    last_seen_at = fields.DateTime(required=True)
    lease_expires_at = fields.DateTime(required=True)
    version = fields.Integer(required=True)
    heartbeat_interval_s = fields.Float(required=True)
    heartbeat_ttl_s = fields.Float(required=True)


class RegisteredSchema(ProviderSchema):
    """A registration's answer; `provider_token` only when a token was issued (shown once)."""

    heartbeat_interval_s = fields.Float(required=True)
    heartbeat_ttl_s = fields.Float(required=True)

    provider_token = fields.String(
        metadata={"description": "the provider's credential; only its SHA-256 is kept"}
    )


class ClaimGrantSchema(_Out):
    """A granted claim: its ID (the claimant keeps it), its deadline, the providers taken."""

    claim_id = fields.UUID(required=True)
    expires_at = fields.DateTime(required=True)
    providers = fields.List(fields.Nested(ProviderSchema), required=True)


class EventSchema(Schema):
    """One change: `id` (stream ID), `type`, `provider_id`, `at`, then what changed."""

    class Meta:
        unknown = INCLUDE  # each type adds its own fields

    id = fields.String(required=True)
    type = fields.String(required=True)
    provider_id = fields.String(required=True)
    at = fields.Raw(required=True)


class EventsSchema(_Out):
    """A page of the change feed, and where to ask from next."""

    events = fields.List(fields.Nested(EventSchema), required=True)
    next = fields.String(required=True)
    truncated = fields.Boolean()


class SummarySchema(_Out):
    """Capacity at a glance, by effective status."""

    by_status = fields.Dict(keys=fields.String(), values=fields.Integer(), required=True)
    in_grace = fields.Integer(
        required=True, metadata={"description": "live providers whose lease runs under outage grace"}
    )
    by_gpu_model = fields.Dict(keys=fields.String(), values=fields.Dict(), required=True)
    by_location = fields.Dict(keys=fields.String(), values=fields.Dict(), required=True)


class TokenSchema(_Out):
    """A rotated provider token (shown once)."""

    provider_id = fields.UUID(required=True)
    provider_token = fields.String(required=True)


class HealthSchema(_Out):
    """The instance's health."""

    status = fields.String(required=True, validate=validate.OneOf(("ok", "unavailable")))
    redis = fields.String(required=True, validate=validate.OneOf(("ok", "unreachable")))
    data = fields.String(
        required=True,
        validate=validate.OneOf(("ok", "restoring", "lost", "unknown")),
        metadata={
            "description": "whether Redis holds the data set the snapshots hold: ok; restoring "
            "(it lost its data and the latest snapshot is being restored); lost (it lost its "
            "data and nothing restores it: restore_on_empty is off or the restore failed); "
            "unknown (Redis does not answer)"
        },
    )
    version = fields.String(required=True)


class ErrorSchema(_Out):
    """Every error: a message for people, a stable code for programs, sometimes details."""

    error = fields.String(required=True)
    code = fields.String(required=True)
    details = fields.Dict()
