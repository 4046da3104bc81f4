"""The job page's service: the page itself (the job document, its timeline and, for a paid
transcode, a player), and the package's playlists rewritten for that player."""
from __future__ import annotations

import hashlib
import json
from urllib.parse import urlsplit

from chalicelib.aws.blobs import S3Uri
from chalicelib.aws.store import JobView
from chalicelib.context import Ports
from chalicelib.errors import Conflict, NotFound, Unavailable
from chalicelib.jobs.documents import PACKAGE_LIMIT, handed_out, job_document
from chalicelib.ui import html, playlists

PACKAGE = "package.json"


def job_page(ports: Ports, view: JobView, *, csrf: str) -> tuple[str, set[str]]:
    """The page, and the origins its player fetches from (the storage endpoint of the
    presigned links), for the page's Content-Security-Policy."""
    document = job_document(ports, view)
    events = [e.model_dump(mode="json") for e in view.events]
    player = _player(view, document)
    origins = {_origin(o["download_url"]) for o in document["outputs"] if o.get("download_url")}
    return (html.page(document, events, csrf=csrf, explorer_url=ports.settings.explorer_url,
                      player=player), origins)


def _player(view: JobView, document: dict) -> dict | None:
    """A player for a transcode's verified package once its outputs are handed out."""
    package = next((o for o in document["outputs"] if o["name"] == PACKAGE), None)
    if package is None or not package.get("download_url") or view.job.plan is None:
        return None
    renditions = [{"name": r["name"], "width": r["width"], "height": r["height"]}
                  for r in view.job.plan.renditions]
    # Highest first, as the master playlist lists them (and hls.js numbers its levels).
    renditions.sort(key=lambda r: r["width"] * r["height"], reverse=True)
    return {"src": f"{view.job.job_id}/{playlists.route_uri('master.m3u8')}",
            "renditions": renditions}


def playlist(ports: Ports, view: JobView, path: str) -> str:
    """A playlist of the job's verified package with its references made playable: other
    playlists through this route, segments as presigned links. The file is checked against
    the hash the package listing pins (the listing is pinned by the job's output hash)."""
    output = next((o for o in view.job.outputs if o.name == PACKAGE), None)
    if output is None:
        raise Conflict(f"job {view.job.job_id} has no verified package", reason="no_package")
    if not handed_out(view):
        raise Conflict(f"job {view.job.job_id}'s package is handed out once it is paid for",
                       reason="payment_pending")
    listing_uri = S3Uri.parse(output.uri)
    listing = json.loads(_pinned(ports, listing_uri, output.sha256))
    known = playlists.playlist_paths(listing)
    if path not in known:
        raise NotFound(f"the package has no playlist {path!r}", reason="no_such_playlist")
    prefix = listing_uri.key.rsplit("/", 1)[0]
    pinned = {f["path"]: f["sha256"] for f in listing["files"]}
    text = _pinned(ports, S3Uri(listing_uri.bucket, f"{prefix}/{path}"), pinned.get(path))

    def link(file: str) -> str:
        if file not in pinned:
            raise Unavailable(f"{path} names {file}, which the package does not list",
                              reason="package_inconsistent")
        return ports.blobs.presign_get(S3Uri(listing_uri.bucket, f"{prefix}/{file}"),
                                       ports.settings.presign_seconds)
    return playlists.rewrite(text.decode("utf-8"), path, playlists=known, link=link)


def _pinned(ports: Ports, uri: S3Uri, sha256: str | None) -> bytes:
    data = ports.blobs.read(uri, max(PACKAGE_LIMIT, playlists.MAX_PLAYLIST_BYTES))
    if sha256 is None or "sha256:" + hashlib.sha256(data).hexdigest() != sha256:
        raise Unavailable(f"{uri} does not hold the bytes its package pins",
                          reason="package_inconsistent")
    return data


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"
