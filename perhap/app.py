"""The HTTP API's old import path: the app now lives in :mod:`perhap.http.app`."""

from .http.app import PerhapApp, create_app

__all__ = ["PerhapApp", "create_app"]
