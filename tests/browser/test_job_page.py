"""A job's page, opened the way a client opens it (`proofline ui` → a one-time link → an
HttpOnly page session), in a real browser: a paid transcode's timeline with its money, its
verdicts, and its ladder playing level by level; and what the page refuses — a spent link,
another client, a write without the page's CSRF token, a script in a prompt."""
from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pytest
import requests
from eth_account import Account
from selenium.webdriver.common.by import By

from chalicelib.identity import pages
from chalicelib.identity.signing import did_for
from proofline import clips
from proofline.client import Api, ApiError
from tests.conftest import fund_job, wait_for

pytestmark = pytest.mark.stack

XSS = "<script>window.pwned = 1</script><img src=x onerror='window.pwned = 2'>"


@pytest.fixture(scope="module")
def paid(stack, client_api, media_dir) -> dict:
    """The development client's transcode, paid through the escrow in PUSD: 8 s of 640x480
    (a size no other test encodes), two segments, a 480p and a 360p rung and audio."""
    source = clips.make_gop_clip(media_dir / "job-page.mp4", seconds=8.0, gop=100, width=640,
                                 height=480, fps=25)
    slot = client_api.upload(source)
    job, _ = client_api.submit({"kind": "ffmpeg_hls", "input_uri": slot["input_uri"],
                                "input_hash": slot["input_hash"], "profile": "hls-abr",
                                "payment_policy": "escrow_before_start", "max_price": "0.05",
                                "payment_token": "PUSD"}, idempotency_key=str(uuid.uuid4()))
    fund_job(stack, job)
    final = wait_for(client_api, job["job_id"], timeout=240)
    assert final["state"] == "settled", client_api.events(job["job_id"])
    return final


def open_page(browser, api: Api, job_id: str) -> None:
    browser.get(api.page_link(job_id)["url"])


def stranger(stack) -> Api:
    account = Account.create()
    return Api(stack.info.api_url, signer=(account, did_for(account.address,
                                                            stack.info.chain_id)))


def page_session(api: Api, job_id: str) -> requests.Session:
    """A browser-like client holding the page session a one-time link opened."""
    http = requests.Session()
    opened = http.get(api.page_link(job_id)["url"], allow_redirects=False, timeout=30)
    assert opened.status_code == 303 and opened.headers["Location"] == job_id
    return http


def test_the_owner_sees_the_timeline_the_charge_and_the_verdicts(browser, stack, client_api,
                                                                   paid):
    open_page(browser, client_api, paid["job_id"])
    assert browser.current_url.endswith(f"/ui/jobs/{paid['job_id']}")    # the code is gone
    assert browser.find_element(By.ID, "state").text == "settled"
    cookie = browser.get_cookie(pages.COOKIE)
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert pages.COOKIE not in browser.execute_script("return document.cookie")

    rows = {tr.find_elements(By.TAG_NAME, "td")[2].text: tr.find_elements(By.TAG_NAME, "td")
            for tr in browser.find_elements(By.CSS_SELECTOR, "#timeline tr")[1:]}
    payment, escrow = paid["payment"], paid["escrow"]
    assert "amount 0.05 PUSD" in rows["escrow.funded"][4].text
    assert rows["escrow.funded"][5].text.startswith(escrow["funded_tx"][:12])
    assert f"charged {payment['charged']} PUSD" in rows["settlement.released"][4].text
    assert f"refunded {payment['refunded']} PUSD" in rows["settlement.released"][4].text
    charge = {tr.find_element(By.TAG_NAME, "th").text: tr.find_element(By.TAG_NAME, "td").text
              for tr in browser.find_elements(By.CSS_SELECTOR, "#charge tr")}
    assert charge["charged"] == f"{payment['charged']} PUSD"
    assert charge["refunded"] == f"{payment['refunded']} PUSD"
    assert charge["held on chain now"] == "0 PUSD"
    routing = browser.find_element(By.CSS_SELECTOR, ".routing").text
    assert paid["attempts"][-1]["worker"] in routing and "ranked first" in routing
    verdict = browser.find_element(By.CSS_SELECTOR, ".verdict").text
    assert verdict.startswith("hls_package: passed") and "✓ segment_count" in verdict
    tasks = browser.find_elements(By.CSS_SELECTOR, "#tasks tr")[1:]
    assert len(tasks) == paid["progress"]["total"]
    assert {t.find_elements(By.TAG_NAME, "td")[4].text for t in tasks} == {"passed"}
    assert browser.find_element(By.ID, "guarantee").text.startswith("Audited ")


def test_each_rendition_of_the_ladder_plays_in_the_page(browser, client_api, paid):
    browser.get_log("browser")               # what earlier pages logged is theirs
    open_page(browser, client_api, paid["job_id"])
    assert browser.execute_script(
        "return window.MediaSource !== undefined && "
        "MediaSource.isTypeSupported('video/mp4; codecs=\"avc1.4d401e,mp4a.40.2\"')"), \
        "this Chromium cannot play H.264 through Media Source Extensions"
    levels = wait(browser, "return window.prooflinePlayer.levels.length || null", 30)
    assert levels == len(paid["plan"]["renditions"]) == 2
    for level in range(levels):
        browser.find_element(By.CSS_SELECTOR, f"#levels button[data-level='{level}']").click()
        wait(browser, f"return window.prooflinePlayer.hls.currentLevel === {level} || null", 20)
        browser.execute_script("document.getElementById('player').currentTime = 0;"
                               "document.getElementById('player').play();")
        start = wait(browser, "var v = document.getElementById('player');"
                              "return v.currentTime > 0.2 ? v.currentTime : null", 30)
        played = wait(browser, "var v = document.getElementById('player');"
                               f"return v.currentTime >= {start} + 3 ? v.currentTime : null", 30)
        assert played - start >= 3
        loaded = browser.execute_script("return window.prooflinePlayer.fragments")
        assert any(f["level"] == level for f in loaded), loaded
    errors = browser.execute_script("return window.prooflinePlayer.errors")
    assert not [e for e in errors if e["fatal"]], errors
    assert not [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    if os.environ.get("PROOFLINE_SCREENSHOTS"):        # the README's picture, on request
        browser.execute_script("document.getElementById('player').pause()")
        browser.save_screenshot(str(Path(os.environ["PROOFLINE_SCREENSHOTS"]) / "job-page.png"))


def wait(browser, script: str, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = browser.execute_script(script)
        if value is not None:
            return value
        time.sleep(0.2)
    raise AssertionError(f"still null after {timeout} s: {script}")


def test_a_link_opens_once_and_another_client_gets_nothing(stack, client_api, paid):
    url = stack.info.api_url
    link = client_api.page_link(paid["job_id"])["url"]
    assert requests.get(link, allow_redirects=False, timeout=30).status_code == 303
    again = requests.get(link, allow_redirects=False, timeout=30)
    assert again.status_code == 401 and "link_used" in again.text
    assert "Set-Cookie" not in again.headers

    other = stranger(stack)
    with pytest.raises(ApiError) as refused:
        other.page_link(paid["job_id"])
    assert refused.value.status == 404
    # B's own page session, opened on a job of B's, reads nothing of A's.
    own = other.submit({"kind": "generate_small", "prompt": "hello",
                        "payment_policy": "escrow_before_start", "max_price": "0.05",
                        "payment_token": "PUSD"}, idempotency_key=str(uuid.uuid4()))[0]
    http = page_session(other, own["job_id"])
    for path in (f"/ui/jobs/{paid['job_id']}",
                 f"/ui/jobs/{paid['job_id']}/playlist?path=master.m3u8"):
        answer = http.get(url + path, timeout=30)
        assert answer.status_code == 404 and "X-Amz" not in answer.text
        assert paid["outputs"][0]["sha256"] not in answer.text
    # No page session: a bearer token is not one, and no cookie is nothing.
    for headers in ({}, client_api.session_headers()):
        answer = requests.get(f"{url}/ui/jobs/{paid['job_id']}", headers=headers, timeout=30)
        assert answer.status_code == 401 and "missing_session" in answer.text
    mine = page_session(client_api, paid["job_id"])
    outside = mine.get(f"{url}/ui/jobs/{paid['job_id']}/playlist",
                       params={"path": "../../inputs/x.m3u8"}, timeout=30)
    assert outside.status_code == 404 and outside.json()["reason"] == "no_such_playlist"


def test_the_pages_media_playlists_link_the_packages_own_segments(stack, client_api, paid):
    http = page_session(client_api, paid["job_id"])
    base = f"{stack.info.api_url}/ui/jobs/{paid['job_id']}/playlist"
    master = http.get(base, params={"path": "master.m3u8"}, timeout=30)
    assert master.headers["Content-Type"] == "application/vnd.apple.mpegurl"
    variants = [line for line in master.text.splitlines() if line.startswith("playlist?path=")]
    assert len(variants) == 2
    media = http.get(f"{stack.info.api_url}/ui/jobs/{paid['job_id']}/{variants[0]}", timeout=30)
    links = [line for line in media.text.splitlines() if line.startswith("http")]
    assert len(links) == len(paid["plan"]["segments"]) and all("X-Amz-Signature" in link
                                                                  for link in links)
    # Read from the page's origin, as the player reads it: the bucket's CORS lets it.
    segment = requests.get(links[0], headers={"Origin": stack.info.api_url}, timeout=30)
    assert segment.status_code == 200 and segment.content[:1] == b"\x47"     # MPEG-TS sync
    assert segment.headers["Access-Control-Allow-Origin"] in ("*", stack.info.api_url)


def test_what_a_page_writes_needs_its_csrf_token(stack, client_api):
    job = client_api.submit({"kind": "generate_small", "prompt": XSS,
                             "payment_policy": "escrow_before_start", "max_price": "0.05",
                             "payment_token": "PUSD"}, idempotency_key=str(uuid.uuid4()))[0]
    assert job["state"] == "requested"                # unfunded: it waits for its escrow
    http = page_session(client_api, job["job_id"])
    page_url = f"{stack.info.api_url}/ui/jobs/{job['job_id']}"
    cancel = f"{page_url}/cancel"
    for form in ({"cancel": "yes"}, {"csrf": "0" * 64}):
        refused = http.post(cancel, data=form, allow_redirects=False, timeout=30)
        assert refused.status_code == 403 and "csrf_failed" in refused.text
    assert client_api.job(job["job_id"])["state"] == "requested"
    page = http.get(page_url, timeout=30).text
    token = page.split("name=csrf value='", 1)[1].split("'", 1)[0]
    done = http.post(cancel, data={"csrf": token}, allow_redirects=False, timeout=30)
    assert done.status_code == 303 and done.headers["Location"] == f"../{job['job_id']}"
    assert client_api.job(job["job_id"])["state"] == "cancelled"
    cookie = "; ".join(f"{c.name}={c.value}" for c in http.cookies)
    out = http.post(f"{stack.info.api_url}/ui/sign-out", data={"csrf": token}, timeout=30)
    assert out.status_code == 200 and "Max-Age=0" in out.headers["Set-Cookie"]
    # The cookie's token is void too, wherever it was copied to; the client's own
    # bearer session is not.
    stolen = requests.get(page_url, headers={"Cookie": cookie}, timeout=30)
    assert stolen.status_code == 401 and "session_revoked" in stolen.text
    assert client_api.job(job["job_id"])["state"] == "cancelled"


def test_a_prompt_with_a_script_is_shown_as_text(browser, stack, client_api):
    job = client_api.submit({"kind": "generate_small", "prompt": XSS,
                             "payment_policy": "escrow_before_start", "max_price": "0.05",
                             "payment_token": "PUSD"}, idempotency_key=str(uuid.uuid4()))[0]
    open_page(browser, client_api, job["job_id"])
    prompt = {tr.find_element(By.TAG_NAME, "th").text: tr.find_element(By.TAG_NAME, "td").text
              for tr in browser.find_elements(By.CSS_SELECTOR, "#job tr")}["prompt"]
    assert prompt == XSS
    assert browser.execute_script("return window.pwned === undefined")
    # The same browser signed in as another client (a link to a job of its own) is refused
    # the first client's page, as if it did not exist.
    other = stranger(stack)
    own = other.submit({"kind": "generate_small", "prompt": "hello",
                        "payment_policy": "escrow_before_start", "max_price": "0.05",
                        "payment_token": "PUSD"}, idempotency_key=str(uuid.uuid4()))[0]
    open_page(browser, other, own["job_id"])
    assert browser.find_element(By.ID, "state").text == "requested"
    browser.get(f"{stack.info.api_url}/ui/jobs/{job['job_id']}")
    assert browser.title == "404 · Proofline"
    assert "window.pwned" not in browser.page_source          # nothing of its prompt
    client_api.cancel(job["job_id"])
