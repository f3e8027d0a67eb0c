"""Event text from the data: one line, bounded, whatever a producer names a file.

Risk guarded: a file name of any length or with control characters making an event too large for
Prefect (it refuses it whole) or a resource id that spans lines in a notification.
"""

from __future__ import annotations

import pytest

from tasks import events


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("interactions-week003.csv", "interactions-week003.csv"),
        ("interactions-\nweek\x1b[31m.csv", "interactions-\\nweek\\x1b[31m.csv"),
        ("interactions-" + "x" * 5000 + ".csv", "interactions-" + "x" * (events.MAX_NAME_CHARS - len("interactions-") - 3) + "..."),
    ],
    ids=["plain", "control-characters", "very-long"],
)
def test_a_landing_resource_names_the_file_on_one_bounded_line(name, expected):
    resource = events.landing_resource(name)
    assert resource == {"prefect.resource.id": f"freshrec.landing.{expected}", "prefect.resource.name": expected}
    assert len(resource["prefect.resource.name"]) <= events.MAX_NAME_CHARS


def test_event_text_is_cut_to_its_limit():
    assert events.event_text("a" * 10, 10) == "a" * 10
    assert events.event_text("a" * 11, 10) == "a" * 7 + "..."
