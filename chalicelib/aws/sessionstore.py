"""Session revocations: per DID, the time before which its sessions are void. One item per
DID in the idempotency table, kept (by its TTL) only as long as a session could outlive it."""
from __future__ import annotations

from botocore.exceptions import ClientError


class DynamoRevocations:
    def __init__(self, client, table: str):
        self._db = client
        self._table = table

    def revoked_before(self, did: str) -> float | None:
        item = self._db.get_item(TableName=self._table, ConsistentRead=True,
                                 Key={"id": {"S": _id(did)}}).get("Item")
        return float(item["before"]["N"]) if item else None

    def revoke(self, did: str, before: float, keep_until: int) -> None:
        # Never moves backwards: a late, older revocation must not revive sessions.
        try:
            self._db.update_item(TableName=self._table, Key={"id": {"S": _id(did)}},
                                 UpdateExpression="SET #b = :b, expiration = :e",
                                 ConditionExpression="attribute_not_exists(#b) OR #b < :b",
                                 ExpressionAttributeNames={"#b": "before"},
                                 ExpressionAttributeValues={":b": {"N": repr(before)},
                                                            ":e": {"N": str(int(keep_until))}})
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise


def _id(did: str) -> str:
    return f"revoked#{did}"
