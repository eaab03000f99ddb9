"""The Flask class of the registry: OPTIONS answers 204 with the route's methods."""
from __future__ import annotations

from flask import Flask, Response
from flask.globals import request_ctx


class RegistryFlask(Flask):
    """Flask, but an automatic OPTIONS answer is `204 No Content` with `Allow`, not an empty page."""

    def make_default_options_response(self) -> Response:
        """Answer OPTIONS with the methods the matched route allows."""
        adapter = request_ctx.url_adapter
        assert adapter is not None  # OPTIONS is answered only for a matched route
        response = self.response_class(status=204)
        response.allow.update(adapter.allowed_methods())
        # An empty 204 has no media type; Flask would otherwise call it text/html.
        del response.headers["Content-Type"]
        return response
