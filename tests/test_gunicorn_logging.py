"""gunicorn leaves the access line to the app, and does not build one only to drop it."""
from __future__ import annotations

from typing import Any

import pytest
from gunicorn.config import Config

from app import gunicorn_conf


def test_gunicorn_serves_with_the_logger_that_skips_its_access_line() -> None:
    assert gunicorn_conf.logger_class is gunicorn_conf.AppLogsAccess
    assert gunicorn_conf.accesslog is None


def test_gunicorn_builds_no_access_line_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = Config()
    cfg.set("logconfig_dict", gunicorn_conf.logconfig_dict)
    logger = gunicorn_conf.AppLogsAccess(cfg)
    built: list[Any] = []
    monkeypatch.setattr(logger, "atoms", lambda *args: built.append(args) or {})
    logger.access(None, None, {}, None)
    assert built == []
