"""Progress of a long run: a bar on a terminal, a log line every few seconds otherwise."""
from __future__ import annotations

import logging
import sys
import time
from typing import TextIO

log = logging.getLogger(__name__)

BAR_WIDTH = 30


class Progress:
    """Count items done out of `total`; draw a bar on a TTY, else log at `interval_s`."""

    def __init__(
        self,
        what: str,
        total: int,
        *,
        stream: TextIO | None = None,
        interval_s: float = 5.0,
    ) -> None:
        self.what = what
        self.total = total
        self.done = 0
        self.stream = stream if stream is not None and stream.isatty() else None
        self.interval_s = interval_s
        self.started = time.monotonic()
        # A bar shows at the first item; log lines only after the first interval.
        self._last = float("-inf") if self.stream is not None else self.started

    @classmethod
    def for_terminal(cls, what: str, total: int) -> "Progress":
        """Draw on stderr when it is a terminal, log otherwise."""
        return cls(what, total, stream=sys.stderr)

    def advance(self, n: int) -> None:
        """Record `n` more items done."""
        self.done += n
        now = time.monotonic()
        if self.stream is not None:
            if now - self._last >= 0.1 or self.done >= self.total:
                self._draw()
                self._last = now
        elif now - self._last >= self.interval_s:
            self._last = now
            log.info(
                f"{self.what}: {self.done} of {self.total}",
                extra={"done": self.done, "total": self.total, "elapsed_s": round(now - self.started, 1)},
            )

    def _draw(self) -> None:
        assert self.stream is not None
        share = self.done / self.total if self.total else 1.0
        filled = int(BAR_WIDTH * min(share, 1.0))
        self.stream.write(
            f"\r{self.what} [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] "
            f"{self.done}/{self.total} {time.monotonic() - self.started:.1f}s"
        )
        self.stream.flush()

    def close(self) -> None:
        """End the bar's line."""
        if self.stream is not None:
            self._draw()
            self.stream.write("\n")
            self.stream.flush()
