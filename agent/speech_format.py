"""Turn data into French the way it is said aloud: the TTS reads what the LLM writes.

"18:45" → "dix-huit heures quarante-cinq", 29.90 € → "vingt-neuf euros quatre-vingt-dix".
Used by the prompt and by the tools' results so that every figure the member hears is already in spoken form.
"""

from __future__ import annotations

from datetime import date, datetime

from kyutai_tts.normalize import number_to_words

DAY_KEYS: tuple[str, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
DAY_NAMES: dict[str, str] = {
    "mon": "lundi",
    "tue": "mardi",
    "wed": "mercredi",
    "thu": "jeudi",
    "fri": "vendredi",
    "sat": "samedi",
    "sun": "dimanche",
}
MONTH_NAMES: tuple[str, ...] = (
    "janvier",
    "février",
    "mars",
    "avril",
    "mai",
    "juin",
    "juillet",
    "août",
    "septembre",
    "octobre",
    "novembre",
    "décembre",
)


def say_number(n: int, feminine: bool = False) -> str:
    """Integers in French words, 0 to 999 999: 21 → 'vingt et un', 80 → 'quatre-vingts'.

    Larger figures stay digits (the TTS normaliser spells those as it reads them).
    """
    if n < 0:
        return f"moins {say_number(-n, feminine)}"
    if n >= 1_000_000:
        return str(n)
    return number_to_words(n, feminine)


def say_clock(hhmm: str) -> str:
    """'06:00' → 'six heures', '18:45' → 'dix-huit heures quarante-cinq', '12:00' → 'midi'."""
    hours_text, _, minutes_text = hhmm.partition(":")
    hours, minutes = int(hours_text), int(minutes_text or "0")
    if minutes == 0 and hours in (0, 24):
        return "minuit"
    if minutes == 0 and hours == 12:
        return "midi"
    text = f"{say_number(hours, feminine=True)} heure" + ("s" if hours > 1 else "")
    return f"{text} {say_number(minutes, feminine=True)}" if minutes else text


def say_time(moment: datetime) -> str:
    return say_clock(f"{moment.hour:02d}:{moment.minute:02d}")


def say_date(day: date) -> str:
    """2026-11-27 → 'vendredi vingt-sept novembre' (the year is implied in a conversation)."""
    first = "premier" if day.day == 1 else say_number(day.day)
    return f"{DAY_NAMES[DAY_KEYS[day.weekday()]]} {first} {MONTH_NAMES[day.month - 1]}"


def say_datetime(moment: datetime) -> str:
    return f"{say_date(moment.date())} à {say_time(moment)}"


def say_price(eur: float) -> str:
    """29.90 → 'vingt-neuf euros quatre-vingt-dix', 45.0 → 'quarante-cinq euros'."""
    euros, cents = divmod(round(eur * 100), 100)
    unit = "euro" if euros <= 1 else "euros"
    text = f"{say_number(euros)} {unit}"
    return f"{text} {say_number(cents)}" if cents else text


def say_opening_hours(opening_hours: dict[str, list[list[str]]]) -> str:
    """One spoken sentence per day, days with the same hours grouped: 'du lundi au jeudi de 6 h à 23 h'."""
    if not opening_hours:
        return ""
    spans: list[tuple[str, str]] = []  # (hours text, day key) in week order
    for key in DAY_KEYS:
        ranges = opening_hours.get(key) or []
        text = " et ".join(f"de {say_clock(r[0])} à {say_clock(r[1])}" for r in ranges if len(r) == 2)
        spans.append((text or "fermé", key))
    parts: list[str] = []
    index = 0
    while index < len(spans):
        text, first_key = spans[index]
        last = index
        while last + 1 < len(spans) and spans[last + 1][0] == text:
            last += 1
        if last == index:
            days = DAY_NAMES[first_key]
        elif last == index + 1:
            days = f"{DAY_NAMES[first_key]} et {DAY_NAMES[spans[last][1]]}"
        else:
            days = f"du {DAY_NAMES[first_key]} au {DAY_NAMES[spans[last][1]]}"
        parts.append(f"{days} {text}")
        index = last + 1
    return ", ".join(parts)
