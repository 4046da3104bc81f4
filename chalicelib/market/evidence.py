"""A marketplace worker's output, frozen when it commits to its result.

A lease's presigned PUT stays valid after the result is handed in (S3 cannot revoke it), so
the control plane copies the upload out of the worker's reach at submission, under the hash
the worker signed. Everything after (measuring, re-execution, promotion) reads that copy:
what a worker uploads later changes nothing that is judged or delivered, and a second claim
of other bytes lands under another key.
"""
from __future__ import annotations

from chalicelib.aws.blobs import S3Uri, evidence_key
from chalicelib.context import Ports
from chalicelib.errors import InvalidRequest
from chalicelib.models import Output


def frozen(ports: Ports, output: Output) -> Output:
    """`output` as committed, now at its evidence key; 400 output_missing when nothing of the
    claimed size was uploaded."""
    upload = S3Uri.parse(output.uri)
    evidence = S3Uri(upload.bucket, evidence_key(upload.key, output.sha256))
    stored = ports.blobs.freeze(upload, evidence)
    if stored is None or stored["ContentLength"] != output.size_bytes:
        raise InvalidRequest(f"{output.name} is not uploaded (or not {output.size_bytes} "
                             "bytes) at the lease's URL", reason="output_missing")
    return output.model_copy(update={"uri": str(evidence)})
