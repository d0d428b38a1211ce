"""The HTTP interface: the FastAPI app and the service it fronts."""

from dispatcher.api.app import create_app

__all__ = ["create_app"]
