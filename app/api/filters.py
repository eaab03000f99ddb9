"""Turning validated list or claim parameters into store filters and cursors."""
from __future__ import annotations

import uuid
from typing import Any

from ..errors import ValidationFailed
from ..models import Filters


def filters_from(args: dict[str, Any], statuses: tuple[str, ...] = ()) -> Filters:
    """Build the store's filters from loaded parameters (list query or claim body)."""
    sort = args.get("sort", "id")
    return Filters(
        gpu_model=args.get("gpu_model"),
        gpu_model_exact=args.get("gpu_model_exact"),
        min_vram=args.get("min_vram"),
        min_gpus=args.get("min_gpus", 1),
        architecture=args.get("architecture"),
        architecture_exact=args.get("architecture_exact"),
        healthy_only=args.get("healthy_only", False),
        statuses=statuses,
        location=args.get("location"),
        sort="" if sort == "id" else sort.lstrip("-"),
        descending=sort.startswith("-"),
    )


def encode_cursor(cursor: tuple[str, int | None]) -> str:
    """Return the cursor text of a page position: the ID, or "<sort value>_<ID>"."""
    provider_id, value = cursor
    return provider_id if value is None else f"{value}_{provider_id}"


def decode_cursor(text: str, sorted_by_value: bool) -> tuple[str, int | None]:
    """Parse a cursor made by `encode_cursor` for the same sort.

    Raises:
        ValidationFailed: the text is not a cursor of this kind of listing.
    """
    try:
        if sorted_by_value:
            value, _, provider_id = text.partition("_")
            return str(uuid.UUID(provider_id)), int(value)
        return str(uuid.UUID(text)), None
    except ValueError:
        raise ValidationFailed(
            "invalid query parameters", details={"cursor": ["Not a cursor of this listing."]}
        ) from None
