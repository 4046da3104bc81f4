"""The job page's pure parts: page sessions and CSRF, the playlist rewrite, and the page
itself — everything a client or a worker wrote comes out as text (pure)."""
from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest

from chalicelib.errors import InvalidRequest
from chalicelib.identity import pages, sessions
from chalicelib.ui import html, playlists, timeline

RING = sessions.KeyRing.generate()
DID = "did:pkh:eip155:31337:0x" + "ab" * 20
XSS = "<script>window.pwned=1</script><img src=x onerror=alert(1)>"


# -- page sessions -----------------------------------------------------------------------------
def test_a_link_a_page_session_and_a_bearer_token_are_not_accepted_for_one_another():
    link, _ = sessions.issue(RING, DID, audience=pages.link_audience("d"), now=1000,
                             lifetime_s=pages.LINK_SECONDS)
    page, _ = sessions.issue(RING, DID, audience=pages.page_audience("d"), now=1000)
    bearer, _ = sessions.issue(RING, DID, audience="d", now=1000)
    assert sessions.read(RING, page, audience=pages.page_audience("d"), now=1001).did == DID
    for token, audience in ((link, pages.page_audience("d")), (bearer, pages.page_audience("d")),
                            (page, "d"), (page, pages.link_audience("d"))):
        with pytest.raises(Exception) as refused:
            sessions.read(RING, token, audience=audience, now=1001)
        assert refused.value.reason == "session_invalid"
    with pytest.raises(Exception) as late:                 # a link lives two minutes
        sessions.read(RING, link, audience=pages.link_audience("d"), now=1000 + 121)
    assert late.value.reason == "session_expired"


def test_the_cookie_is_http_only_strict_and_secure_over_https_and_is_read_back():
    cookie = pages.set_cookie("tok.en", max_age=3600, secure=True)
    assert cookie.startswith(f"{pages.COOKIE}=tok.en;")
    assert {"HttpOnly", "SameSite=Strict", "Secure", "Path=/", "Max-Age=3600"} <= \
        set(cookie.split("; "))
    assert "Secure" not in pages.set_cookie("t", max_age=1, secure=False)
    assert "Max-Age=0" in pages.clear_cookie(secure=False)
    assert pages.cookie_token({"Cookie": f"a=b; {pages.COOKIE}=tok.en; c=d"}) == "tok.en"
    assert pages.cookie_token({"cookie": "a=b"}) is None
    assert pages.cookie_token({}) is None
    assert pages.cookie_token({"Cookie": '\x00;;=="'}) is None


def test_the_csrf_token_belongs_to_one_page_session_and_survives_a_key_rotation():
    _, mine = sessions.issue(RING, DID, audience="d", now=1)
    _, other = sessions.issue(RING, DID, audience="d", now=1)
    token = pages.csrf_token(RING, mine)
    assert pages.csrf_valid(RING, mine, token)
    assert not pages.csrf_valid(RING, other, token)
    flipped = token[:-1] + ("1" if token[-1] == "0" else "0")
    for wrong in (None, "", flipped, 7, token * 3):
        assert not pages.csrf_valid(RING, mine, wrong)
    rotated = sessions.KeyRing((("k2", b"\x07" * 32), *RING.keys))
    assert pages.csrf_valid(rotated, mine, token)
    assert not pages.csrf_valid(sessions.KeyRing.generate(), mine, token)


# -- playlists ---------------------------------------------------------------------------------
MASTER = """#EXTM3U
#EXT-X-VERSION:3
#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="aac",NAME="audio",DEFAULT=YES,URI="audio/audio.m3u8"
#EXT-X-STREAM-INF:BANDWIDTH=984000,RESOLUTION=640x360,CODECS="avc1.4d401e,mp4a.40.2",AUDIO="aac"
360p/index.m3u8
"""
MEDIA = """#EXTM3U
#EXT-X-VERSION:3
#EXT-X-TARGETDURATION:4
#EXT-X-PLAYLIST-TYPE:VOD
#EXTINF:4.000000,
seg_00000.ts
#EXTINF:4.000000,
seg_00001.ts
#EXT-X-ENDLIST
"""
LISTING = {"entry": "master.m3u8", "files": [{"path": p} for p in (
    "master.m3u8", "360p/index.m3u8", "360p/seg_00000.ts", "360p/seg_00001.ts",
    "audio/audio.m3u8")]}


def test_the_master_points_at_the_page_route_and_segments_at_presigned_links():
    known = playlists.playlist_paths(LISTING)
    master = playlists.rewrite(MASTER, "master.m3u8", playlists=known, link=lambda p: 1 / 0)
    assert "playlist?path=360p%2Findex.m3u8" in master
    assert 'URI="playlist?path=audio%2Faudio.m3u8"' in master
    media = playlists.rewrite(MEDIA, "360p/index.m3u8", playlists=known,
                              link=lambda p: f"https://s3.example/{p}?X-Amz-Signature=1")
    assert re.findall(r"^https://\S+$", media, re.M) == [
        "https://s3.example/360p/seg_00000.ts?X-Amz-Signature=1",
        "https://s3.example/360p/seg_00001.ts?X-Amz-Signature=1"]
    assert "#EXT-X-ENDLIST" in media


@pytest.mark.parametrize("reference", ["../../secret.ts", "/etc/passwd",
                                       "https://evil.example/x.ts", "seg.ts?x=1"])
def test_a_reference_outside_the_package_is_refused(reference):
    with pytest.raises(InvalidRequest) as refused:
        playlists.rewrite(MEDIA.replace("seg_00001.ts", reference), "360p/index.m3u8",
                          playlists=set(), link=str)
    assert refused.value.reason == "bad_playlist"


# -- the page ----------------------------------------------------------------------------------
class _Scripts(HTMLParser):
    """Every element the browser would build, and every script and handler it would run."""

    def __init__(self):
        super().__init__()
        self.scripts, self.handlers, self.text = [], [], []

    def handle_starttag(self, tag, attrs):
        if tag == "script":
            self.scripts.append(dict(attrs).get("src"))
        self.handlers += [name for name, _ in attrs if name.startswith("on")]

    def handle_data(self, data):
        self.text.append(data)


def _document(**changes) -> dict:
    doc = {"job_id": "job-1", "kind": "generate_small", "state": "failed", "attempt": 2,
           "reason": XSS, "payment_policy": "escrow_before_start", "worker": XSS,
           "created_at": "2026-12-02T10:00:00Z", "updated_at": "2026-12-02T10:00:09Z",
           "manifest": {"client_did": DID, "prompt": XSS}, "outputs": [],
           "attempts": [{"number": 1, "worker": "pool:gpu", "state": "failed",
                         "reason": f"released by {DID}: {XSS}"}],
           "escrow": {"symbol": "PUSD", "decimals": 6},
           "payment": {"symbol": "PUSD", "max_price": "0.05", "price": "0.01", "held": "0",
                       "charged": "0", "fee": "0", "refunded": "0.05"},
           "verification": {}}
    return {**doc, **changes}


EVENTS = [
    {"type": "job.created", "at": "2026-12-02T10:00:00Z", "state": "requested",
     "data": {"source": "http", "kind": "generate_small"}},
    {"type": "escrow.funded", "at": "2026-12-02T10:00:01Z", "state": "requested",
     "data": {"tx_hash": "0x" + "1f" * 32, "amount": "50000", "client": XSS}},
    {"type": "job.assigned", "at": "2026-12-02T10:00:02Z", "state": "assigned",
     "data": {"attempt": 1, "worker": "pool:gpu", "reason": XSS, "ranking": {
         "chosen": ["pool:gpu"], "reason": XSS, "ranked": [
             {"worker": "pool:gpu", "score": 0.9, "price": "0.01", "factors": {XSS: 1}}],
         "excluded": {XSS: {"count": 3, "first": [XSS]}}}}},
    {"type": "job.retrying", "at": "2026-12-02T10:00:05Z", "state": "requested",
     "data": {"reason": f"released by {DID}: {XSS}", "tx_hash": "<b>not a hash</b>"}},
    {"type": "validation.failed", "at": "2026-12-02T10:00:08Z", "state": "failed",
     "data": {"policy": "generation", "reason": XSS, "checks": {XSS: False},
              "measured": {XSS: XSS}}},
    {"type": "segment.released", "task": "360p-00000", "at": "2026-12-02T10:00:06Z",
     "state": "running", "data": {"rendition": "360p", "index": 0, "message": XSS,
                                  "worker": "did:pkh:eip155:1:0x" + "cd" * 20}},
]


def test_everything_a_client_or_a_worker_wrote_is_text_on_the_page():
    page = html.page(_document(), EVENTS, csrf="c" * 64, explorer_url=None, player=None)
    parsed = _Scripts()
    parsed.feed(page)
    assert parsed.scripts == ["../assets/hls.min.js", "../assets/job.js"]
    assert parsed.handlers == []
    assert XSS in "".join(parsed.text)                  # shown, as text
    assert page.count("<script") == 2


def test_the_timeline_puts_money_and_transactions_on_the_line_of_time():
    rows = timeline.job_rows(EVENTS, timeline._parse("2026-12-02T10:00:00Z"),
                             timeline.Money("PUSD", 6))
    funded = next(r for r in rows if r.type == "escrow.funded")
    assert (funded.at_s, funded.money, funded.tx) == (1.0, "amount 0.05 PUSD", "0x" + "1f" * 32)
    retrying = next(r for r in rows if r.type == "job.retrying")
    assert retrying.tx is None                           # not a hash: never a link
    assert all(r.type != "segment.released" for r in rows)   # a task's: in the task table
    page = html.page(_document(), EVENTS, csrf="c", explorer_url="https://explorer.example",
                     player=None)
    assert f"href='https://explorer.example/tx/0x{'1f' * 32}'" in page
    [task] = timeline.task_rows(EVENTS)
    assert task.notes and XSS in task.notes[0]


def test_a_running_job_offers_cancel_and_every_form_carries_the_csrf_token():
    running = html.page(_document(state="running", reason=None), EVENTS, csrf="tok",
                        explorer_url=None, player=None)
    forms = re.findall(r"<form[^>]*action='([^']+)'>(.*?)</form>", running)
    assert [action for action, _ in forms] == ["job-1/cancel", "../sign-out"]
    assert all("name=csrf value='tok'" in body for _, body in forms)
    done = html.page(_document(state="settled", reason=None), EVENTS, csrf="tok",
                     explorer_url=None, player=None)
    assert "job-1/cancel" not in done
