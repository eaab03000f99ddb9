"""Validation schemas: every shape the API accepts is declared here, once."""
from .claims import ClaimIdSchema, ClaimSchema, EventsQuerySchema
from .providers import GpuSchema, HeartbeatSchema, ListQuerySchema, ProviderDetailsSchema, RegisterSchema

__all__ = [
    "ClaimIdSchema", "ClaimSchema", "EventsQuerySchema", "GpuSchema", "HeartbeatSchema",
    "ListQuerySchema", "ProviderDetailsSchema", "RegisterSchema",
]
