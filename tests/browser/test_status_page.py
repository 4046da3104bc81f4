"""The public status page in a real browser: with JavaScript off it still shows every
figure, and they are literal counts of the jobs this test made."""
from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
import requests
from selenium.webdriver.common.by import By

from proofline import clips
from tests.conftest import wait_for

pytestmark = pytest.mark.stack

def cell(browser, kind: str, row: str, column: int) -> str:
    """The text of a figure in a class's card (column 1: last hour, 2: last day)."""
    card = browser.find_element(By.ID, f"class-{kind}")
    for tr in card.find_elements(By.TAG_NAME, "tr"):
        cells = tr.find_elements(By.TAG_NAME, "td")
        if cells and cells[0].text == row:
            return cells[column].text
    raise AssertionError(f"no row {row!r} in {kind}'s card")


def day_plot(browser, kind: str) -> dict:
    """A class's day plot as the browser has it: its caption, its title, and its bars'
    values summed by series (each bar's title reads `settled: 2`)."""
    svg = browser.find_element(By.CSS_SELECTOR, f"#class-{kind} svg.day")
    caption = svg.find_element(By.XPATH, "preceding-sibling::figcaption").text
    bars: dict[str, int] = {}
    for title in svg.find_elements(By.CSS_SELECTOR, "rect > title"):
        name, _, value = title.get_attribute("textContent").partition(": ")
        bars[name] = bars.get(name, 0) + int(value)
    title = svg.find_element(By.XPATH, "./*[local-name()='title']").get_attribute("textContent")
    return {"caption": caption, "title": title, "bars": bars}


def test_the_status_page_counts_the_jobs_that_ran(browser, stack, api, tmp_path):
    url = f"{stack.info.api_url}/status"
    browser.get_log("browser")               # what earlier pages logged is theirs
    browser.get(url)
    before = {row: int(cell(browser, "media_probe", row, 1)) for row in ("settled", "failed")}
    clip = clips.make_clip(tmp_path / "browser.mp4", seconds=1.0, width=240, height=136)
    slot = api.upload(clip)
    made = [api.submit({"kind": "media_probe", "input_uri": slot["input_uri"]},
                       idempotency_key=str(uuid.uuid4()))[0]["job_id"] for _ in range(2)]
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00not a video" * 64)
    broken = api.upload(garbage)
    failed = api.submit({"kind": "media_probe", "input_uri": broken["input_uri"],
                         "max_attempts": 1}, idempotency_key=str(uuid.uuid4()))[0]["job_id"]
    assert {wait_for(api, j)["state"] for j in made} == {"settled"}
    reason = wait_for(api, failed)["reason"]

    browser.get(url)
    assert browser.title == "Proofline status"
    assert int(cell(browser, "media_probe", "settled", 1)) - before["settled"] == 2
    assert int(cell(browser, "media_probe", "failed", 1)) - before["failed"] == 1
    assert int(cell(browser, "media_probe", f"failed: {reason}", 1)) >= 1
    plot = browser.find_element(By.CSS_SELECTOR, "#class-media_probe svg title")
    figures = requests.get(f"{url}.json", timeout=30).json()["classes"]["media_probe"]
    assert f"settled {figures['last_hour']['settled']}" in plot.get_attribute("textContent")
    # The day's plot, hour by hour: its title and its bars are the document's day.
    day, plotted = figures["last_day"], day_plot(browser, "media_probe")
    assert plotted["title"] == (f"last day per hour: settled {day['settled']}, "
                                f"failed {day['failed']}, rejected {day['rejected']}")
    assert plotted["bars"] == {name: day[name] for name in ("settled", "failed", "rejected")
                               if day[name]}
    assert plotted["bars"]["settled"] >= 2 and plotted["caption"] == "Last day, a bar per hour"
    queues = browser.find_elements(By.XPATH, "//h2[.='Queues']/following-sibling::table[1]//td")
    assert "checks" in [q.text for q in queues]
    assert not [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    if os.environ.get("PROOFLINE_SCREENSHOTS"):        # the README's picture, on request
        browser.save_screenshot(str(Path(os.environ["PROOFLINE_SCREENSHOTS"])
                                    / "status-page.png"))
