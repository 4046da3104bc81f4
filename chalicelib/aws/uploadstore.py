"""Upload records in the jobs table: each upload (`UPLOAD#<id>`) with its owner, claimed
hash and size and whether it was promoted; and, per content hash, who has proven to hold
those bytes (`INPUT#<sha>` / `OWNER#<did>`), which is what lets a client name it as an input.
"""
from __future__ import annotations

from dataclasses import dataclass

from botocore.exceptions import ClientError

ANONYMOUS = "-"                       # the owner of an unsigned upload (local stage only)
_SK = "UPLOAD"


@dataclass(frozen=True)
class Upload:
    upload_id: str
    owner: str | None
    sha256: str
    size: int
    state: str                        # pending | ready | failed
    created_at: str
    reason: str | None = None
    multipart_id: str | None = None   # S3's id of a multipart upload (objects past 5 GB)
    sensitivity: str = "public"       # the object's; jobs over it inherit "private"

    def public(self) -> dict:
        return {"upload_id": self.upload_id, "owner": self.owner, "sha256": self.sha256,
                "size": self.size, "state": self.state, "created_at": self.created_at,
                "reason": self.reason, "data_sensitivity": self.sensitivity}


class UploadStore:
    def __init__(self, client, table: str):
        self._db = client
        self._table = table

    def create(self, upload: Upload) -> None:
        self._db.put_item(TableName=self._table, ConditionExpression="attribute_not_exists(pk)",
                          Item={"pk": {"S": f"UPLOAD#{upload.upload_id}"}, "sk": {"S": _SK},
                                "owner": {"S": upload.owner or ANONYMOUS},
                                "sha256": {"S": upload.sha256}, "size": {"N": str(upload.size)},
                                "upload_state": {"S": upload.state},
                                "created_at": {"S": upload.created_at},
                                "sensitivity": {"S": upload.sensitivity},
                                **({"multipart_id": {"S": upload.multipart_id}}
                                   if upload.multipart_id else {})})

    def get(self, upload_id: str) -> Upload | None:
        item = self._db.get_item(TableName=self._table, ConsistentRead=True,
                                 Key={"pk": {"S": f"UPLOAD#{upload_id}"},
                                      "sk": {"S": _SK}}).get("Item")
        if not item:
            return None
        owner = item["owner"]["S"]
        return Upload(upload_id=upload_id, owner=None if owner == ANONYMOUS else owner,
                      sha256=item["sha256"]["S"], size=int(item["size"]["N"]),
                      state=item["upload_state"]["S"], created_at=item["created_at"]["S"],
                      reason=item.get("reason", {}).get("S"),
                      multipart_id=item.get("multipart_id", {}).get("S"),
                      sensitivity=item.get("sensitivity", {}).get("S", "public"))

    def finish(self, upload: Upload, state: str, reason: str | None = None) -> bool:
        """pending → ready|failed, once; a ready upload also records its owner as a holder of
        the content. False if the upload was not pending any more."""
        names = {"#s": "upload_state"}
        values = {":new": {"S": state}, ":pending": {"S": "pending"}}
        update = "SET #s = :new"
        if reason:
            update += ", reason = :r"
            values[":r"] = {"S": reason}
        items = [{"Update": {"TableName": self._table,
                             "Key": {"pk": {"S": f"UPLOAD#{upload.upload_id}"}, "sk": {"S": _SK}},
                             "UpdateExpression": update, "ConditionExpression": "#s = :pending",
                             "ExpressionAttributeNames": names,
                             "ExpressionAttributeValues": values}}]
        if state == "ready":
            items.append({"Put": {"TableName": self._table, "Item": {
                "pk": {"S": f"INPUT#{upload.sha256}"},
                "sk": {"S": f"OWNER#{upload.owner or ANONYMOUS}"},
                "upload_id": {"S": upload.upload_id}, "size": {"N": str(upload.size)},
                "sensitivity": {"S": upload.sensitivity}}}})
        try:
            self._db.transact_write_items(TransactItems=items)
            return True
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "TransactionCanceledException":
                return False
            raise

    def holds(self, sha256: str, owner: str | None) -> str | None:
        """The sensitivity under which `owner` holds bytes hashing to `sha256` (uploaded and
        promoted), or None when it does not hold them."""
        item = self._db.get_item(
            TableName=self._table, ConsistentRead=True,
            Key={"pk": {"S": f"INPUT#{sha256}"}, "sk": {"S": f"OWNER#{owner or ANONYMOUS}"}}
        ).get("Item")
        return item.get("sensitivity", {}).get("S", "public") if item else None
