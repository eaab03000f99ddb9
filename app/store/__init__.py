"""The Redis store: key layout, Lua scripts and the stores built on them."""
from .claims import Claim, ClaimStore
from .events import EventFeed
from .keys import Keys, canonical_name
from .providers import ProviderStore
from .summary import CapacityStore

__all__ = ["CapacityStore", "Claim", "ClaimStore", "EventFeed", "Keys", "ProviderStore", "canonical_name"]
