"""The kmsbridge Web API (docs/architecture.md §1 item 10): FastAPI app factory, auth, models and routes."""

from __future__ import annotations

from producers.api.app import create_app

__all__ = ["create_app"]
