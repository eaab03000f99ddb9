"""The Redis store: key layout, Lua scripts and the provider store built on them."""
from .keys import Keys, canonical_name
from .providers import ProviderStore

__all__ = ["Keys", "ProviderStore", "canonical_name"]
