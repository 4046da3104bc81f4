"""moto server as the local AWS endpoint, with DynamoDB requests applied one at a time.

DynamoDB applies each request atomically: a conditional write or a transaction checks and
writes with nothing in between. moto serves requests on threads and does not lock its
tables, so two racing transactions could both pass their conditions, and its transaction
rollback snapshot can fail while another thread writes. Serializing DynamoDB requests
restores the semantics the control plane relies on; S3 and SQS stay concurrent.
"""
from __future__ import annotations

import threading

from moto.moto_server.threaded_moto_server import ThreadedMotoServer
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import make_server


class AwsEndpoint(ThreadedMotoServer):
    def _server_entry(self) -> None:
        app = DomainDispatcherApplication(create_backend_app)
        dynamodb = threading.Lock()

        def serve(environ, start_response):
            if not environ.get("HTTP_X_AMZ_TARGET", "").startswith("DynamoDB_"):
                return app(environ, start_response)
            with dynamodb:
                body = app(environ, start_response)
                try:
                    return [b"".join(body)]
                finally:
                    getattr(body, "close", lambda: None)()

        self._server = make_server(self._ip_address, self._port, serve, True,
                                   request_handler=MotoRequestHandler)
        self._server_ready_event.set()
        self._server.serve_forever()
