"""The status page drawn from a status document (pure): each class's two plots say which
window they are and carry its figures, the queues' oldest messages show their age or "–",
and every value is escaped."""
from __future__ import annotations

from html.parser import HTMLParser

from chalicelib.status import aggregates, html

SERIES = ("settled", "failed", "rejected", "validation_failed")
VOID = {"meta", "link", "br", "img", "input"}                # no end tag to pop


class Plots(HTMLParser):
    """Each svg's class → its title, and each bar's title (`settled: 2`) in order."""

    def __init__(self):
        super().__init__()
        self.plots: dict[str, dict] = {}
        self.captions: list[str] = []
        self._svg: str | None = None
        self._in: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag in VOID:
            return
        self._in.append(tag)
        if tag == "svg":
            self._svg = dict(attrs)["class"]
            self.plots[self._svg] = {"title": "", "bars": []}

    def handle_endtag(self, tag):
        self._in.pop()
        if tag == "svg":
            self._svg = None

    def handle_data(self, data):
        if self._in[-1:] == ["figcaption"]:
            self.captions.append(data)
        elif self._svg and self._in[-1:] == ["title"]:
            plot = self.plots[self._svg]
            if self._in[-2:-1] == ["rect"]:
                plot["bars"].append(data)
            else:
                plot["title"] += data


def document(per_hour: dict[str, list[int]], queues: dict[str, dict]) -> dict:
    day = aggregates.figures({name: sum(points) for name, points in per_hour.items()})
    return {"generated_at": "2026-12-02T14:30:00+00:00",
            "classes": {"media_probe": {
                "last_hour": aggregates.figures({}), "last_day": day,
                "per_minute": {name: [0] * 60 for name in SERIES}, "per_hour": per_hour}},
            "workers": [], "queues": queues,
            "settlement": {"enabled": False}}


def bar_totals(bars: list[str]) -> dict[str, int]:
    found: dict[str, int] = {}
    for bar in bars:
        name, _, value = bar.partition(": ")
        found[name] = found.get(name, 0) + int(value)
    return found


def test_the_day_is_drawn_hour_by_hour_beside_the_hour_each_captioned():
    per_hour = {name: [0] * 24 for name in SERIES}
    per_hour["settled"][0], per_hour["settled"][23], per_hour["failed"][10] = 2, 5, 1
    parsed = Plots()
    parsed.feed(html.page(document(per_hour, {})))
    assert parsed.captions == ["Last hour, a bar per minute", "Last day, a bar per hour"]
    assert list(parsed.plots) == ["hour", "day"]
    day = parsed.plots["day"]
    assert day["title"] == "last day per hour: settled 7, failed 1, rejected 0"
    assert bar_totals(day["bars"]) == {"settled": 7, "failed": 1}
    assert len(day["bars"]) == 3                       # a bar per hour and series with any
    assert parsed.plots["hour"]["bars"] == []


def test_each_queue_shows_its_oldest_message_or_a_dash():
    queues = {"checks": {"waiting": 3, "in_flight": 1, "dead_letters": 0, "oldest_age_s": 754.0},
              "media": {"waiting": 0, "in_flight": 0, "dead_letters": 2, "oldest_age_s": None},
              "verify": {"waiting": 0, "in_flight": 0, "dead_letters": 0, "oldest_age_s": 42.4},
              "settlement": {"waiting": 0, "in_flight": 0, "dead_letters": 0,
                             "oldest_age_s": 9000.0}}
    page = html.page(document({name: [0] * 24 for name in SERIES}, queues))
    assert "<th class=n>oldest message</th>" in page
    assert "<td>checks</td><td class=n>3</td><td class=n>1</td><td class=n>13 min</td>" in page
    assert "<td>media</td><td class=n>0</td><td class=n>0</td><td class=n>–</td>" in page
    assert "<td class=n>42 s</td>" in page and "<td class=n>2.5 h</td>" in page


def test_every_value_is_escaped():
    hostile = "<img src=x onerror=alert(1)>"
    doc = document({name: [0] * 24 for name in SERIES},
                   {hostile: {"waiting": 0, "in_flight": 0, "dead_letters": 0,
                              "oldest_age_s": None}})
    doc["classes"][hostile] = doc["classes"]["media_probe"]
    page = html.page(doc)
    assert hostile not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "<script" not in page
