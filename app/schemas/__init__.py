"""Validation schemas: every shape the API accepts is declared here, once."""
from .providers import GpuSchema, HeartbeatSchema, ListQuerySchema, ProviderDetailsSchema, RegisterSchema

__all__ = ["GpuSchema", "HeartbeatSchema", "ListQuerySchema", "ProviderDetailsSchema", "RegisterSchema"]
