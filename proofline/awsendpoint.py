"""moto server as the local AWS endpoint, with DynamoDB requests applied one at a time and
transactions that roll back only what they touched.

DynamoDB applies each request atomically: a conditional write or a transaction checks and
writes with nothing in between. moto serves requests on threads and does not lock its
tables, so two racing transactions could both pass their conditions, and its transaction
rollback snapshot can fail while another thread writes. Serializing DynamoDB requests
restores the semantics the control plane relies on; S3 and SQS stay concurrent. A ranged
S3 read costs its range, as on S3 (`rangedreads`).

moto's TransactWriteItems deep-copies a table for each item it writes before it starts (its
rollback), so a transaction's cost grows with the data already stored (docs/benchmarks.md:
a second at 10,000 items). The endpoint's DynamoDB backend (`ItemRollbackBackend`, installed when
the server starts) copies only the items the transaction touches, by table and key (an item
it would create is remembered as absent), and on any failure puts exactly those back, so a
transaction costs the same on a full table as on an empty one. Secondary indexes need
nothing: moto derives them from the items on every read. Its error responses are moto's own:
the loop below is moto 5.2.5's with the snapshot replaced, which is why pyproject pins moto
exactly (MOTO_VERSION).
"""
from __future__ import annotations

import copy
import importlib
import threading
from typing import Any

from moto.core.base_backend import backend_lock
from moto.dynamodb.comparisons import get_filter_expression
from moto.dynamodb.exceptions import (
    ConditionalCheckFailed,
    MockValidationException,
    MultipleTransactionsException,
    TooManyTransactionsException,
    TransactionCanceledException,
    TransactWriteSingleOpException,
)
from moto.dynamodb.models import DynamoDBBackend, dynamodb_backends
from moto.dynamodb.models.dynamo_type import DynamoType, Item
from moto.dynamodb.models.table import Table
from moto.moto_server.threaded_moto_server import ThreadedMotoServer
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import make_server

from .rangedreads import install_ranged_reads

MOTO_VERSION = "5.2.5"      # the moto whose transact_write_items ItemRollbackBackend replaces


class HostDispatcher(DomainDispatcherApplication):
    """moto's dispatcher with each host's backend remembered: moto lists its own package
    directory and tries every service's URL pattern again on every request, a millisecond of
    CPU each (called under the dispatcher's lock, so the cache needs none of its own)."""

    def __init__(self, create_app):
        super().__init__(create_app)
        self._backends: dict[str | None, Any] = {}

    def get_backend_for_host(self, host: str | None) -> Any:
        if host not in self._backends:
            self._backends[host] = super().get_backend_for_host(host)
        return self._backends[host]


class AwsEndpoint(ThreadedMotoServer):
    def _server_entry(self) -> None:
        install_item_rollback()
        install_ranged_reads()
        app = HostDispatcher(create_backend_app)
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


def install_item_rollback() -> None:
    """Serve DynamoDB from ItemRollbackBackend: the region backends moto creates from now on,
    and those it already holds. moto keeps its backends per process, so this holds for
    every moto server (and mock) in the process; they differ from stock moto only in how a
    failed transaction is undone."""
    with backend_lock:
        dynamodb_backends.backend = ItemRollbackBackend
        for account in dynamodb_backends.values():
            account.backend = ItemRollbackBackend
        for _, _, backend in dynamodb_backends.iter_backends():
            if type(backend) is DynamoDBBackend:
                backend.__class__ = ItemRollbackBackend


class ItemRollbackBackend(DynamoDBBackend):
    @property
    def _url_module(self) -> Any:
        """moto finds a backend's routes next to the module of its class."""
        return importlib.import_module("moto.dynamodb.urls")

    def transact_write_items(self, transact_items: list[dict[str, Any]]) -> None:
        if len(transact_items) > 100:
            raise TooManyTransactionsException()
        touched = TouchedItems(self)
        try:
            self._transact(transact_items, touched)
        except BaseException:
            touched.restore()
            raise

    def _transact(self, transact_items: list[dict[str, Any]], touched: TouchedItems) -> None:
        """moto 5.2.5's DynamoDBBackend.transact_write_items without its table snapshots
        and rollbacks (the caller restores `touched` on any exception); every item is
        remembered before anything reads or writes it."""
        target_items: set[tuple[str, str]] = set()

        def check_unicity(table_name: str, key: dict[str, Any]) -> None:
            item = (str(table_name), str(dict(sorted(key.items()))))
            if item in target_items:
                raise MultipleTransactionsException()
            target_items.add(item)

        errors: list[tuple[str | None, str | None, dict[str, Any] | None]] = []
        for item in transact_items:
            original_item: dict[str, Any] | None = None
            if len(list(item.keys())) > 1:
                raise TransactWriteSingleOpException
            try:
                op_type, op = next(iter(item.items()))
                if op_type not in {"ConditionCheck", "Put", "Delete", "Update"}:
                    raise ValueError("Unsupported transaction operation")

                table_name = op["TableName"]
                condition_expression = op.get("ConditionExpression")
                expression_attribute_names = op.get("ExpressionAttributeNames")
                expression_attribute_values = op.get("ExpressionAttributeValues")
                return_values_on_condition_check_failure = op.get(
                    "ReturnValuesOnConditionCheckFailure")

                if op_type == "Put":
                    attrs = op["Item"]
                    table = self.get_table(table_name)
                    key = {table.hash_key_attr: attrs[table.hash_key_attr]}
                    if table.range_key_attr is not None:
                        key[table.range_key_attr] = attrs[table.range_key_attr]
                else:
                    key = op["Key"]

                check_unicity(table_name, key)
                if op_type != "ConditionCheck":
                    touched.remember(table_name, key)

                current = self.get_item(table_name, key)
                if condition_expression is not None:
                    condition_op = get_filter_expression(
                        condition_expression, expression_attribute_names,
                        expression_attribute_values)
                    if not condition_op.expr(current):
                        if return_values_on_condition_check_failure == "ALL_OLD" and current:
                            original_item = current.to_json()["Attributes"]
                        raise ConditionalCheckFailed(item=original_item)

                if op_type == "Put":
                    self.put_item(
                        table_name, op["Item"], condition_expression=condition_expression,
                        expression_attribute_names=expression_attribute_names,
                        expression_attribute_values=expression_attribute_values)
                elif op_type == "Delete":
                    self.delete_item(
                        table_name, key, condition_expression=condition_expression,
                        expression_attribute_names=expression_attribute_names,
                        expression_attribute_values=expression_attribute_values)
                elif op_type == "Update":
                    self.update_item(
                        table_name, key, update_expression=op["UpdateExpression"],
                        condition_expression=condition_expression,
                        expression_attribute_names=expression_attribute_names,
                        expression_attribute_values=expression_attribute_values)
                errors.append((None, None, None))
            except (MultipleTransactionsException, MockValidationException):
                raise
            except ConditionalCheckFailed as e:
                errors.append(("ConditionalCheckFailed", str(e.message), original_item))
            except Exception as e:  # noqa: BLE001 - as moto: any other failure is the item's reason
                errors.append((type(e).__name__, str(e), original_item))

        if any(code is not None for code, _, _ in errors):
            raise TransactionCanceledException(errors)


class TouchedItems:
    """The items a transaction may write, as they were before it: a deep copy of each one
    that exists, None for one it may create; plus each table's stream length."""

    def __init__(self, backend: DynamoDBBackend):
        self._backend = backend
        self._items: dict[tuple[str, DynamoType, DynamoType | None],
                          tuple[Table, Item | None, bool]] = {}
        self._streams: dict[str, tuple[Any, list, int]] = {}

    def remember(self, table_name: str, key: dict[str, Any]) -> None:
        """Raises what moto's get_item raises for the same key, before anything is written."""
        table = self._backend.get_table(table_name)
        hash_key, range_key = self._backend.get_keys_value(table, key)
        slot = (table.name, hash_key, range_key)
        if slot in self._items:
            return
        had_hash = hash_key in table.items
        if range_key is None:
            current = table.items.get(hash_key)
        else:
            current = table.items[hash_key].get(range_key) if had_hash else None
        self._items[slot] = (table, copy.deepcopy(current), had_hash)
        shard = table.stream_shard
        if shard is not None and table.name not in self._streams:
            self._streams[table.name] = (shard, shard.items, len(shard.items))

    def restore(self) -> None:
        for (_, hash_key, range_key), (table, before, had_hash) in self._items.items():
            if range_key is None:
                if before is None:
                    table.items.pop(hash_key, None)
                else:
                    table.items[hash_key] = before
                continue
            if before is not None:
                table.items[hash_key][range_key] = before
                continue
            bucket = table.items.get(hash_key)
            if bucket is not None:
                bucket.pop(range_key, None)
                if not bucket and not had_hash:
                    del table.items[hash_key]
        for shard, records, length in self._streams.values():
            del records[length:]
            shard.items = records
