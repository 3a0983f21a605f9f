"""The dashboard: server-rendered pages over a read-only attribute store (``churnsync serve``)."""

from churnsync.web.app import create_app

__all__ = ["create_app"]
