"""A verified HLS package made playable in a browser: its playlists with every reference
rewritten, the master's to the page's own playlist route (which checks the page session)
and each media playlist's segments to short-lived presigned links. The package in the bucket
is not touched; its files stay private. Pure: text in, text out."""
from __future__ import annotations

import posixpath
from typing import Callable
from urllib.parse import quote

import m3u8

from chalicelib.errors import InvalidRequest

MAX_PLAYLIST_BYTES = 1024 * 1024


def playlist_paths(listing: dict) -> set[str]:
    """The playlists of a package listing (package.json): the only paths the route serves."""
    return {f["path"] for f in listing["files"] if f["path"].endswith(".m3u8")} | \
        {listing["entry"]}


def route_uri(path: str) -> str:
    """Where the page's player fetches a playlist of the package, relative to the page's
    playlist route (so a stage behind a path prefix works unchanged)."""
    return f"playlist?path={quote(path, safe='')}"


def rewrite(text: str, path: str, *, playlists: set[str], link: Callable[[str], str]) -> str:
    """The playlist at `path` in the package, its references rewritten: a playlist → the
    page's route, anything else (segments, init sections) → `link(package path)`. A
    reference outside the package (absolute, or climbing out of it) is refused: 400."""
    try:
        document = m3u8.loads(text)
    except Exception as exc:  # noqa: BLE001 - m3u8 raises bare errors on malformed input
        raise InvalidRequest(f"{path} is not a playlist: {exc}", reason="bad_playlist") from None
    base = posixpath.dirname(path)

    def target(uri: str) -> str:
        resolved = _inside(base, uri)
        return route_uri(resolved) if resolved in playlists else link(resolved)

    for variant in document.playlists:
        variant.uri = target(variant.uri)
    for media in document.media:
        if media.uri:
            media.uri = target(media.uri)
    for segment in document.segments:
        segment.uri = target(segment.uri)
        if segment.init_section is not None and segment.init_section.uri:
            segment.init_section.uri = target(segment.init_section.uri)
    return document.dumps()


def _inside(base: str, uri: str) -> str:
    if "://" in uri or uri.startswith("/") or "?" in uri or "#" in uri:
        raise InvalidRequest(f"playlist reference {uri!r} is not a file of the package",
                             reason="bad_playlist")
    resolved = posixpath.normpath(posixpath.join(base, uri))
    if resolved.startswith("../") or resolved == "..":
        raise InvalidRequest(f"playlist reference {uri!r} leaves the package",
                             reason="bad_playlist")
    return resolved
