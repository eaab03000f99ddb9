"""The framework's floor: a bare Flask app with one trivial JSON endpoint, nothing else."""
from __future__ import annotations

from flask import Flask, Response, jsonify

app = Flask(__name__, static_folder=None)


@app.get("/ping")
def ping() -> Response:
    """Answer a constant JSON object."""
    return jsonify({"status": "ok"})
