"""The parent message's blocks as Slack will accept them."""

from __future__ import annotations

import pytest

from incident.integrations.slack_blocks import render_parent
from tests.integrations.conftest import make_incident


def section_texts(blocks: list[dict]) -> list[str]:
    return [b["text"]["text"] for b in blocks if b["type"] == "section" and "text" in b]


@pytest.mark.parametrize("blank", ["", " ", "  \n\t ", "\n"])
def test_a_blank_description_adds_no_section(blank: str) -> None:
    incident = make_incident(summary=None, annotations={"description": blank})
    _, blocks = render_parent(incident)
    # Slack refuses a section whose text is blank, and the whole message with it.
    assert all(text.strip() for text in section_texts(blocks)), blocks


def test_a_blank_description_leaves_the_summary_alone() -> None:
    incident = make_incident(summary="5xx above 5%", annotations={"description": " \n "})
    _, blocks = render_parent(incident)
    assert "*5xx above 5%*" in section_texts(blocks)


def test_a_blank_summary_adds_nothing_either() -> None:
    incident = make_incident(summary="  ", annotations={"description": "The api answers 5xx."})
    _, blocks = render_parent(incident)
    assert "The api answers 5xx." in section_texts(blocks)
    assert all(text.strip(" *\n") for text in section_texts(blocks)), blocks


def test_a_description_keeps_its_text_without_surrounding_blanks() -> None:
    incident = make_incident(summary=None, annotations={"description": "\n  Disk full on db-1.\n"})
    _, blocks = render_parent(incident)
    assert "Disk full on db-1." in section_texts(blocks)
