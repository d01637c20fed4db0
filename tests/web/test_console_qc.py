"""The QC page and `/api/qc`: Levey-Jennings geometry (pure), the Westgard verdicts worked out
again from stored QC runs with the QC plan, and the page and API over a real store, per role."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from types import SimpleNamespace

import httpx
import pytest

from drivers.models import Patient, Result, SpecimenReport
from middleware.store import IncomingMessage, Store
from middleware.store.qc import QcHistoryPoint
from middleware.validation.qc_monitor import QcMonitor
from middleware.validation.qc_plan import QcPlan, load_qc_plan_text
from middleware.web.qc_chart import QcValue, Target, layout
from middleware.web.qc_pages import QcQuery, build_series
from web.conftest import StubGateway
from web.test_console_api import sign_in

PLAN = """
westgard:
  rules: [1-2s, 1-3s, 2-2s, R-4s, 4-1s, 10x]
targets:
  - {instrument: chem-1, test: GLU, lot: "L1", level: "1", mean: 5.5, sd: 0.2}
  - {instrument: chem-1, test: GLU, lot: "L2", level: "2", mean: 15.0, sd: 0.5}
  - {instrument: chem-1, test: K, lot: "K1", level: "1", mean: 4.1, sd: 0.06}
"""

DAY = datetime(2026, 11, 1, 8, 0, tzinfo=UTC)
# The window the tests look at: `until=2026-11-10` is the end of that day, 7 days back.
UNTIL = "2026-11-10"
START = datetime(2026, 11, 4, tzinfo=UTC)
END = datetime(2026, 11, 11, tzinfo=UTC)

# (day of November, minute past 08:00, level, value). Level 1: mean 5.5, SD 0.2; level 2:
# mean 15.0, SD 0.5. Expected verdicts, in the window:
#   04 L1 +2.5 SD  1-2s and 2-2s with the +2.25 of the 3rd (before the window, judged, not drawn)
#   06 L1 +3.5 SD  1-2s, 1-3s
#   07 L1 -2.5 SD  1-2s (a warning only), then L2 +2.5 SD in the same run: 1-2s, R-4s
RUNS = [
    (3, 0, "1", "5.95"),
    (4, 0, "1", "6.0"),
    (4, 1, "2", "15.1"),
    (5, 0, "1", "5.5"),
    (5, 1, "2", "14.9"),
    (6, 0, "1", "6.2"),
    (6, 1, "2", "15.0"),
    (7, 0, "1", "5.0"),
    (7, 1, "2", "16.25"),
    (8, 0, "1", "5.52"),
    (8, 1, "2", "15.0"),
]


def plan() -> QcPlan:
    return load_qc_plan_text(PLAN)


def when(day: int, minute: int = 0) -> datetime:
    return DAY.replace(day=day) + timedelta(minutes=minute)


def history() -> list[QcHistoryPoint]:
    lots = {"1": "L1", "2": "L2"}
    return [
        QcHistoryPoint("chem-1", "GLU", level, lots[level], Decimal(value), when(day, minute))
        for day, minute, level, value in RUNS
    ]


def qc_message(
    number: int,
    at: datetime,
    value: str,
    *,
    level: str = "1",
    lot: str = "L1",
    test: str = "GLU",
    instrument: str = "chem-1",
) -> IncomingMessage:
    """One QC run (one control result) as a stored analyser message."""
    result = Result(
        specimen_id=f"QC-{level}",
        test_code=test,
        value=value,
        numeric=Decimal(value),
        units="mmol/L",
        instrument=instrument,
        sequence=1,
        measured_at=at,
        is_qc=True,
        qc_level=level,
        qc_lot=lot,
    )
    report = SpecimenReport(f"QC-{level}", Patient(), (result,), is_qc=True)
    return IncomingMessage(
        message_id=f"qc-{instrument}-{number}",
        connection=instrument,
        protocol="astm",
        received_at=at,
        raw=b"\x021H|\\^&\r\x03AA\r\n",
        reports=(report,),
        decisions=(("", ()),),
        lis="lis",
        forward=False,
    )


def store_runs(store: Store) -> None:
    lots = {"1": "L1", "2": "L2"}
    for number, (day, minute, level, value) in enumerate(RUNS):
        store.save_message(
            qc_message(number, when(day, minute), value, level=level, lot=lots[level])
        )
    # A control of another analyser whose lot has no target in the plan.
    store.save_message(qc_message(99, when(5), "5.3", lot="P9", instrument="poc-1"))


def verdicts(series_points: tuple[QcValue, ...]) -> list[tuple[int, tuple[str, ...]]]:
    return [(p.at.day, p.violations) for p in series_points]


# --- the chart's geometry ----------------------------------------------------------------------


def test_the_target_lines_sit_at_mean_and_whole_sds_with_exact_values() -> None:
    chart = layout([], Target(Decimal("5.5"), Decimal("0.15")), START, END)
    by_k = {line.k: line for line in chart.lines}
    assert sorted(by_k) == [-3, -2, -1, 0, 1, 2, 3]
    middle = chart.top + chart.plot_height / 2
    assert by_k[0].y == pytest.approx(middle, abs=0.1)
    # ±4 SD fill the plot: one SD is an eighth of its height, +k above the mean.
    eighth = chart.plot_height / 8
    for k in (1, 2, 3):
        assert by_k[k].y == pytest.approx(middle - k * eighth, abs=0.1)
        assert by_k[-k].y == pytest.approx(middle + k * eighth, abs=0.1)
    assert (by_k[2].value, by_k[-3].value, by_k[0].label) == ("5.80", "5.05", "mean")
    assert by_k[3].label == "+3 SD" and by_k[3].kind == "sd3" and by_k[0].kind == "mean"


def test_a_value_goes_where_its_time_and_z_say() -> None:
    target = Target(Decimal("5.5"), Decimal("0.2"))
    halfway = START + (END - START) / 2
    chart = layout([QcValue(halfway, Decimal("6.0"))], target, START, END)
    [mark] = chart.marks
    assert mark.x == pytest.approx(chart.left + chart.plot_width / 2, abs=0.1)
    plus_2_5 = chart.top + chart.plot_height / 2 - 2.5 * chart.plot_height / 8
    assert mark.y == pytest.approx(plus_2_5, abs=0.1)
    assert mark.offscale == 0 and mark.state == "ok" and mark.label == ""
    assert chart.path == f"{mark.x},{mark.y}"


def test_a_value_beyond_the_axis_is_drawn_on_the_edge_and_says_so() -> None:
    target = Target(Decimal("5.5"), Decimal("0.2"))
    far = QcValue(START + timedelta(days=1), Decimal("9.5"), Decimal(20), ("1-2s", "1-3s"), True)
    low = QcValue(START + timedelta(days=2), Decimal("1.0"), Decimal(-22), ("1-3s",), True)
    chart = layout([low, far], target, START, END)
    high_mark, low_mark = chart.marks  # in time order whatever the input order
    assert (high_mark.offscale, high_mark.y) == (1, chart.top)
    assert (low_mark.offscale, low_mark.y) == (-1, chart.bottom)
    assert high_mark.state == "rejected" and high_mark.label == "1-2s, 1-3s"
    assert "9.5" in high_mark.title and "z +20.00" in high_mark.title


def test_rule_labels_of_points_close_together_do_not_overlap() -> None:
    target = Target(Decimal("5.5"), Decimal("0.2"))
    day = START + timedelta(days=1)
    close = [
        QcValue(day, Decimal("5.95"), Decimal("2.25"), ("1-2s",), False, True),
        QcValue(day + timedelta(hours=1), Decimal("6.0"), Decimal("2.5"), ("1-2s", "2-2s"), True),
        QcValue(day + timedelta(days=2), Decimal("5.0"), Decimal("-2.5"), ("1-2s",), False, True),
    ]
    first, second, low = layout(close, target, START, END).marks
    assert first.label_y < first.y and second.label_y < second.y  # above points over the mean
    assert abs(first.label_y - second.label_y) >= 12  # stacked, not written over each other
    assert low.label_y > low.y  # below a point under the mean


def test_without_a_target_the_axis_spans_the_values_and_no_sd_line_is_drawn() -> None:
    points = [QcValue(START + timedelta(days=d), Decimal(v)) for d, v in ((1, "10"), (2, "20"))]
    chart = layout(points, None, START, END)
    assert chart.lines == () and not chart.has_target
    low, high = chart.marks
    assert chart.top < high.y < low.y < chart.bottom


def test_points_outside_the_window_are_left_out_and_ticks_fall_inside() -> None:
    target = Target(Decimal("5.5"), Decimal("0.2"))
    inside = QcValue(START + timedelta(hours=5), Decimal("5.5"))
    before = QcValue(START - timedelta(hours=1), Decimal("5.5"))
    chart = layout([before, inside], target, START, END)
    assert [m.point for m in chart.marks] == [inside]
    assert 2 <= len(chart.ticks) <= 8
    assert all(chart.left <= t.x <= chart.right for t in chart.ticks)
    assert chart.ticks[0].label == "11-04"
    hourly = layout([], target, START, START + timedelta(hours=6))
    assert hourly.ticks[1].label == "11-04 01:00"
    with pytest.raises(ValueError):
        layout([], target, END, START)


# --- the verdicts, as the daemon reaches them --------------------------------------------------


def test_each_control_carries_the_westgard_rules_it_violated() -> None:
    query = QcQuery(until=END, days=7)
    series = {(s.test, s.level, s.lot): s for s in build_series(history(), plan(), query)}
    level_1 = series[("GLU", "1", "L1")]
    assert verdicts(level_1.points) == [
        (4, ("1-2s", "2-2s")),  # the 3rd's +2.25 SD is judged, not drawn
        (5, ()),
        (6, ("1-2s", "1-3s")),
        (7, ("1-2s",)),
        (8, ()),
    ]
    assert [p.rejected for p in level_1.points] == [True, False, True, False, False]
    assert level_1.points[3].warning and (level_1.rejected, level_1.warnings) == (2, 1)
    level_2 = series[("GLU", "2", "L2")]
    assert verdicts(level_2.points)[3] == (7, ("1-2s", "R-4s"))
    assert level_1.target == Target(Decimal("5.5"), Decimal("0.2"))
    # The plan's K control has no run in the window: listed, empty (a missing QC shows).
    assert series[("K", "1", "K1")].points == ()


def test_a_level_filter_narrows_the_drawing_not_the_judging() -> None:
    query = QcQuery(until=END, days=7, level="2")
    [only] = build_series(history(), plan(), query)
    assert (only.level, verdicts(only.points)[3]) == ("2", (7, ("1-2s", "R-4s")))


def test_without_a_qc_plan_values_are_shown_unjudged() -> None:
    series = build_series(history(), None, QcQuery(until=END, days=7))
    assert [s.level for s in series] == ["1", "2"]
    assert all(p.violations == () and p.z is None for s in series for p in s.points)
    assert all(s.target is None for s in series)


# --- over HTTP, from the store -----------------------------------------------------------------


@pytest.fixture
def qc_gateway(gateway: StubGateway) -> StubGateway:
    gateway.validation = SimpleNamespace(qc=QcMonitor(plan()))  # type: ignore[assignment]
    store_runs(gateway.store)
    return gateway


@pytest.mark.parametrize("path", ["/api/qc", "/qc"])
async def test_the_qc_views_need_a_session(http: httpx.AsyncClient, path: str) -> None:
    answer = await http.get(path)
    if path.startswith("/api/"):
        assert answer.status_code == 401
    else:
        assert answer.status_code == 303
        assert answer.headers["location"].startswith("/login?why=expired&next=/qc")


@pytest.mark.parametrize("role", ["technician", "biologist", "admin"])
async def test_every_role_reads_the_qc_from_the_stored_runs(
    http: httpx.AsyncClient, qc_gateway: StubGateway, role: str
) -> None:
    await sign_in(http, qc_gateway.store, role)
    answer = await http.get(f"/api/qc?until={UNTIL}&period=7")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["qc_plan"] is True and body["from"].startswith("2026-11-04")
    series = {(s["instrument"], s["test"], s["level"], s["lot"]): s for s in body["series"]}
    level_1 = series[("chem-1", "GLU", "1", "L1")]
    assert level_1["target"] == {"mean": "5.5", "sd": "0.2"}
    assert [p["violations"] for p in level_1["points"]] == [
        ["1-2s", "2-2s"],
        [],
        ["1-2s", "1-3s"],
        ["1-2s"],
        [],
    ]
    assert level_1["points"][2] | {"at": ""} == {
        "at": "",
        "value": "6.2",
        "z": "3.500",
        "violations": ["1-2s", "1-3s"],
        "rejected": True,
        "warning": True,
    }
    assert (level_1["runs"], level_1["rejected"], level_1["warnings"]) == (5, 2, 1)
    # The other analyser's lot has no target: every control of it is rejected (fail closed).
    orphan = series[("poc-1", "GLU", "1", "P9")]
    assert orphan["target"] is None
    assert [p["violations"] for p in orphan["points"]] == [["no_target"]]
    page = await http.get(f"/qc?until={UNTIL}&period=7")
    assert page.status_code == 200 and "<svg" in page.text


async def test_the_filters_of_the_query_string(
    http: httpx.AsyncClient, qc_gateway: StubGateway
) -> None:
    await sign_in(http, qc_gateway.store, "technician")
    body = (await http.get(f"/api/qc?until={UNTIL}&period=7&instrument=chem-1&level=2")).json()
    assert [(s["test"], s["level"], s["lot"]) for s in body["series"]] == [("GLU", "2", "L2")]
    body = (await http.get(f"/api/qc?until={UNTIL}&period=1&test=GLU&lot=L1")).json()
    assert [s["runs"] for s in body["series"]] == [0]  # nothing on the 10th
    assert (await http.get("/api/qc?period=0")).status_code == 422
    assert (await http.get("/api/qc?until=yesterday")).status_code == 422


async def test_the_page_marks_each_violation_in_inline_svg_without_inline_style(
    http: httpx.AsyncClient, qc_gateway: StubGateway
) -> None:
    await sign_in(http, qc_gateway.store, "technician")
    answer = await http.get(f"/qc?until={UNTIL}&period=7&instrument=chem-1&test=GLU")
    page = answer.text
    assert "script-src 'self'" in answer.headers["content-security-policy"]
    assert "style=" not in page and "<style" not in page and "<script>" not in page
    assert page.count('<svg class="lj"') == 2  # the two GLU levels
    level_1 = page.split('data-series="chem-1|GLU|1|L1"')[1].split("</section>")[0]
    points = re.findall(
        r'<g class="lj-point ([a-z ]+)" data-at="([^"]+)"[^>]*data-rules="([^"]*)"', level_1
    )
    assert [(state, rules) for state, _, rules in points] == [
        ("rejected", "1-2s, 2-2s"),
        ("ok", ""),
        ("rejected", "1-2s, 1-3s"),
        ("warning", "1-2s"),
        ("ok", ""),
    ]
    assert ">1-2s, 1-3s</text>" in level_1  # the rule written beside the point
    assert "lj-sd3" in level_1 and "+3 SD" in level_1 and ">6.1<" in level_1  # 5.5 + 3 × 0.2
    assert "<option selected>chem-1</option>" in page


async def test_a_lab_without_qc_plan_sees_values_and_says_why_nothing_is_judged(
    http: httpx.AsyncClient, gateway: StubGateway
) -> None:
    store_runs(gateway.store)
    await sign_in(http, gateway.store, "biologist")
    body = (await http.get(f"/api/qc?until={UNTIL}&period=7")).json()
    assert body["qc_plan"] is False
    assert all(p["violations"] == [] for s in body["series"] for p in s["points"])
    page = (await http.get(f"/qc?until={UNTIL}&period=7")).text
    assert "No QC plan is configured" in page and "lj-sd3" not in page
