"""Selection: the filter arguments of select.lua (shared by queries and claims) and the query."""
from __future__ import annotations

from typing import Any

from ..models import Filters, Page, Provider
from .keys import STATUSES, Keys, canonical_name, fold_name
from .scripts import pairs, wrap_errors


def filter_keys(keys: Keys, filters: Filters) -> list[str]:
    """Return the filter KEYS of select.lua for `filters`."""
    by_model = filters.gpu_model or filters.gpu_model_exact
    any_gpu = not by_model and (filters.min_vram or filters.min_gpus > 1)
    scratch = [keys.tmp(f"select:{i}") for i in range(3 + len(STATUSES))]
    return [
        keys.gpu_any(filters.min_gpus) if any_gpu else keys.no_key,
        keys.location(filters.location) if filters.location else keys.no_key,
        *scratch,
    ]


def filter_args(filters: Filters) -> list[Any]:
    """Return the filter ARGV of select.lua for `filters`.

    Substrings are matched against folded names, exact names as canonical ones.
    """
    def folded(name: str | None) -> str:
        return fold_name(name) if name else ""

    def canonical(name: str | None) -> str:
        return canonical_name(name) if name else ""

    return [
        ",".join(filters.statuses), filters.min_vram or 0, filters.min_gpus,
        folded(filters.gpu_model), canonical(filters.gpu_model_exact),
        folded(filters.architecture), canonical(filters.architecture_exact),
        "1" if filters.healthy_only else "0",
        filters.sort, "1" if filters.descending else "0",
    ]


class QueryMixin:
    """The provider store's paged query (query.lua over select.lua)."""

    keys: Keys
    _query: Any
    run_script: Any

    def filter_keys(self, filters: Filters) -> list[str]:
        """Return the filter KEYS of select.lua for `filters` (see `filter_keys`)."""
        return filter_keys(self.keys, filters)

    @staticmethod
    def filter_args(filters: Filters) -> list[Any]:
        """Return the filter ARGV of select.lua for `filters` (see `filter_args`)."""
        return filter_args(filters)

    @wrap_errors
    def query(self, filters: Filters, limit: int, cursor: tuple[str, int | None] | None = None) -> Page:
        """Return the page after `cursor` of providers that match `filters`.

        The order is ascending ID, or the sort of `filters` with ties broken by ID; `cursor`
        is the (ID, sort value) of the last provider of the previous page.
        """
        cursor_id, cursor_value = cursor if cursor else ("", None)
        now, total, has_more, *rows = self.run_script(
            self._query,
            self.filter_keys(filters),
            [*self.filter_args(filters), limit, cursor_id, "" if cursor_value is None else cursor_value],
            read_only=True,
        )
        providers = [Provider.from_hash(pairs(flat)) for _, flat, _ in rows]
        next_cursor = None
        if has_more and rows:
            last_id, _, last_value = rows[-1]
            next_cursor = (last_id, int(float(last_value)) if filters.sort else None)
        return Page(providers=providers, total=total, next_cursor=next_cursor, now_ms=now)
