"""The HTTP API over raw ASGI: the app (:mod:`.app`), its route table (:mod:`.routes`), handlers,
request and response helpers, streaming, and middleware (CORS, the observer).

Nothing is re-exported here, so importing one module of the package never loads the others.
"""
