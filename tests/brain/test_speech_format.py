"""Numbers, times, dates and prices in French words, as the TTS must read them."""

from __future__ import annotations

from datetime import date

import pytest

from agent.speech_format import say_clock, say_date, say_number, say_opening_hours, say_price


@pytest.mark.parametrize(
    ("n", "words"),
    [
        (0, "zéro"), (1, "un"), (16, "seize"), (17, "dix-sept"), (21, "vingt et un"), (30, "trente"),
        (71, "soixante et onze"), (77, "soixante-dix-sept"), (80, "quatre-vingts"), (81, "quatre-vingt-un"),
        (91, "quatre-vingt-onze"), (100, "cent"), (200, "deux cents"), (250, "deux cent cinquante"),
        (1000, "mille"), (2026, "deux mille vingt-six"), (80000, "quatre-vingt mille"),
    ],
)  # fmt: skip
def test_numbers_in_words(n: int, words: str) -> None:
    assert say_number(n) == words


def test_times_dates_and_prices_as_said() -> None:
    assert say_clock("06:00") == "six heures"
    assert say_clock("01:00") == "une heure"
    assert say_clock("21:01") == "vingt et une heures une"
    assert say_clock("18:45") == "dix-huit heures quarante-cinq"
    assert (say_clock("12:00"), say_clock("00:00")) == ("midi", "minuit")
    assert say_date(date(2026, 12, 1)) == "mardi premier décembre"
    assert say_price(29.90) == "vingt-neuf euros quatre-vingt-dix"
    assert say_price(1.5) == "un euro cinquante"
    assert say_price(45) == "quarante-cinq euros"


def test_opening_hours_group_days_with_the_same_hours() -> None:
    week = {d: [["06:00", "23:00"]] for d in ("mon", "tue", "wed", "thu")} | {"sat": [["09:00", "12:30"]]}
    assert say_opening_hours(week) == (
        "du lundi au jeudi de six heures à vingt-trois heures, vendredi fermé, "
        "samedi de neuf heures à douze heures trente, dimanche fermé"
    )
    assert say_opening_hours({}) == ""
