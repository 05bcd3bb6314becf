"""French text normalisation for speech, done word by word as the LLM streams.

The TTS reads what it is given: "18h45" or "12,50 €" come out garbled, and markdown,
emoji or URLs that slip through the LLM must never be read aloud. `FrenchNormalizer`
takes the LLM's text deltas and hands back spoken words as soon as each word is complete;
only a number waits for the next word (it may be "€", "kg", "x" or a thousands group),
which costs one word of delay, never a sentence.
"""

from __future__ import annotations

import re
import unicodedata

from num2words import num2words


def number_to_words(n: int, feminine: bool = False) -> str:
    """A whole number in French words (traditional spelling): 71 → "soixante et onze".

    `feminine` agrees a final "un" with a feminine noun: "vingt et une heures".
    """
    words: str = num2words(n, lang="fr")
    if feminine and (words == "un" or words.endswith((" un", "-un"))):
        words = words[:-2] + "une"
    return words


def _digits_after_comma(digits: str) -> str:
    # "2,05" reads "deux virgule zéro cinq": leading zeros are said one by one.
    zeros = len(digits) - len(digits.lstrip("0"))
    rest = digits.lstrip("0")
    words = ["zéro"] * zeros
    if rest:
        words.append(number_to_words(int(rest)))
    return " ".join(words)


def _decimal(whole: str, fraction: str | None) -> str:
    words = number_to_words(int(whole))
    if fraction:
        words += " virgule " + _digits_after_comma(fraction)
    return words


_MONTHS = "janvier février mars avril mai juin juillet août septembre octobre novembre décembre".split()

# Units read after a number: (singular, plural).
_UNIT_WORDS: dict[str, tuple[str, str]] = {
    "kg": ("kilo", "kilos"),
    "kgs": ("kilo", "kilos"),
    "g": ("gramme", "grammes"),
    "km": ("kilomètre", "kilomètres"),
    "m": ("mètre", "mètres"),
    "cm": ("centimètre", "centimètres"),
    "min": ("minute", "minutes"),
    "mn": ("minute", "minutes"),
    "s": ("seconde", "secondes"),
    "sec": ("seconde", "secondes"),
    "h": ("heure", "heures"),
    "kcal": ("kilocalorie", "kilocalories"),
    "cal": ("calorie", "calories"),
    "bpm": ("battement par minute", "battements par minute"),
    "km/h": ("kilomètre heure", "kilomètres heure"),
    "€": ("euro", "euros"),
    "eur": ("euro", "euros"),
    "euros": ("euro", "euros"),
    "euro": ("euro", "euros"),
    "%": ("pour cent", "pour cent"),
    "°": ("degré", "degrés"),
    "°c": ("degré", "degrés"),
    "x": ("fois", "fois"),
    "×": ("fois", "fois"),
}
_FEMININE_UNITS = {"min", "mn", "s", "sec", "h", "kcal", "cal"}

# Abbreviations read in full wherever they stand (matched on the bare word, case-sensitive).
_ABBREVIATIONS = {
    "RDV": "rendez-vous",
    "rdv": "rendez-vous",
    "env.": "environ",
    "etc.": "et cetera",
    "etc": "et cetera",
    "M.": "monsieur",
    "Mme": "madame",
    "Mlle": "mademoiselle",
    "Dr": "docteur",
    "n°": "numéro",
    "N°": "numéro",
    "&": "et",
    "+": "plus",
    "=": "égale",
    "vs": "contre",
    "vs.": "contre",
    "h": "heures",
    "mn": "minutes",
    "€": "euros",
    "%": "pour cent",
}

_NUMBER = r"\d+(?:[.,]\d+)?"
_RE_TIME = re.compile(r"^(\d{1,2})(?:h|H|:)(\d{2})?$")
_RE_DATE = re.compile(r"^(\d{1,2})/(\d{1,2})(?:/(\d{2}|\d{4}))?$")
_RE_ORDINAL = re.compile(r"^(\d+)(er|re|ère|e|ème|eme|è)$")
_RE_TIMES = re.compile(r"^(\d+)[x×](\d+)$")
_RE_NUMBER = re.compile(rf"^({_NUMBER})$")
_RE_NUMBER_UNIT = re.compile(rf"^({_NUMBER})(€|%|°C|°|kgs?|km/h|km|cm|kcal|min|mn|sec|bpm|[gmsh])$", re.IGNORECASE)
_RE_PRICE_PREFIX = re.compile(rf"^€({_NUMBER})$")
_RE_PER = re.compile(r"^(.*)/(mois|an|séance|semaine|jour|h|heure|personne)$")
_RE_URL = re.compile(r"^\(?(?:https?://|www\.)\S*$|^\S+@\S+\.\w+$|^\S+\.(?:com|fr|org|net|io)(?:/\S*)?$", re.IGNORECASE)
_RE_LINK_TAIL = re.compile(r"\]\([^)]*\)?")
_RE_MARKDOWN = re.compile(r"\*\*|__|[*_`#~>|\[\]{}]")
_RE_LIST_MARKER = re.compile(r"^(?:[-•*]|\d+[.)])$")
_RE_SPLIT_PUNCT = re.compile(r"^(.*?)([.,!?;:…]*)$", re.DOTALL)
_EMOJI_KEEP = {"°", "€", "%"}


def _strip_symbols(word: str) -> str:
    """Drops emoji, pictographs, joiners and variation selectors; keeps letters, digits, punctuation."""
    kept = []
    for char in word:
        if char in _EMOJI_KEEP:
            kept.append(char)
            continue
        category = unicodedata.category(char)
        if category in ("So", "Sk", "Cs", "Co", "Cn", "Cf", "Mn") and not (
            category == "Mn" and kept and kept[-1].isalpha()
        ):
            continue
        if char in "\ufe0f\u20e3":
            continue
        kept.append(char)
    return "".join(kept)


def _is_number(word: str) -> bool:
    return _RE_NUMBER.match(word) is not None


def _split_number(word: str) -> tuple[str, str | None]:
    whole, _, fraction = word.replace(".", ",").partition(",")
    return whole, fraction or None


def _number_with_unit(number: str, unit: str) -> str:
    whole, fraction = _split_number(number)
    key = unit.lower()
    singular, plural = _UNIT_WORDS[key]
    if key in ("€", "eur", "euros", "euro"):
        if fraction:
            cents = int(fraction.ljust(2, "0")[:2])
            if int(whole) == 0:
                return f"{number_to_words(cents)} centime{'s' if cents > 1 else ''}"
            euros = f"{number_to_words(int(whole))} {singular if int(whole) <= 1 else plural}"
            return f"{euros} {number_to_words(cents)}" if cents else euros
        count = int(whole)
        return f"{number_to_words(count)} {singular if count <= 1 else plural}"
    feminine = key in _FEMININE_UNITS
    if key in ("x", "×"):
        return f"{_decimal(whole, fraction)} fois"
    if fraction:
        return f"{_decimal(whole, fraction)} {plural}"
    count = int(whole)
    return f"{number_to_words(count, feminine)} {singular if count <= 1 else plural}"


def _time(hours: str, minutes: str | None) -> str:
    h = int(hours)
    words = f"{number_to_words(h, feminine=True)} heure{'s' if h > 1 else ''}"
    if minutes and int(minutes):
        words += " " + number_to_words(int(minutes), feminine=True)
    return words


def _date(day: str, month: str, year: str | None) -> str | None:
    d, m = int(day), int(month)
    if not (1 <= d <= 31 and 1 <= m <= 12):
        return None
    words = f"{'premier' if d == 1 else number_to_words(d)} {_MONTHS[m - 1]}"
    if year:
        y = int(year) + (2000 if len(year) == 2 else 0)
        words += " " + number_to_words(y)
    return words


def _ordinal(number: str, suffix: str) -> str:
    n = int(number)
    if n == 1 and suffix in ("re", "ère"):
        return "première"
    ordinal: str = num2words(n, lang="fr", to="ordinal")
    return ordinal


class FrenchNormalizer:
    """Streams LLM text in, spoken French words out, one complete word at a time."""

    def __init__(self) -> None:
        self._buffer = ""
        self._held: str | None = None  # a number waiting for its unit or thousands group
        self._held_punct = ""
        self._at_line_start = True

    def push(self, delta: str) -> list[str]:
        """Adds a chunk of LLM text; returns the words that are now complete."""
        self._buffer += delta
        out: list[str] = []
        while True:
            match = re.search(r"\s", self._buffer)
            if match is None:
                break
            word, self._buffer = self._buffer[: match.start()], self._buffer[match.end() :]
            newline = match.group() == "\n"
            if word:
                out.extend(self._word(word))
            if newline:
                self._at_line_start = True
        return out

    def flush(self) -> list[str]:
        """Ends the text: returns whatever was still waiting."""
        out: list[str] = []
        if self._buffer:
            out.extend(self._word(self._buffer))
            self._buffer = ""
        out.extend(self._release())
        self._at_line_start = True
        return out

    def normalize(self, text: str) -> str:
        """Whole text at once (tests and `synthesize`)."""
        return " ".join(self.push(text) + self.flush())

    def _release(self) -> list[str]:
        if self._held is None:
            return []
        whole, fraction = _split_number(self._held)
        words = _decimal(whole, fraction) + self._held_punct
        self._held, self._held_punct = None, ""
        return words.split()

    def _word(self, raw: str) -> list[str]:
        line_start, self._at_line_start = self._at_line_start, False
        if line_start and _RE_LIST_MARKER.match(raw) and self._held is None:
            return []  # "- item", "1. item": list markers are layout, not speech
        word = _RE_LINK_TAIL.sub("", raw)  # "[text](url)": the text stays, the link goes
        if not word.strip("[]*_") and raw != word:
            return self._release()
        if _RE_URL.match(word.strip("()[]<>*_.,;!?")):
            return self._release()
        word = _RE_MARKDOWN.sub("", word)
        word = _strip_symbols(word)
        word = word.replace("’", "'").replace("(", "").replace(")", "").replace("\u00a0", "")
        if not word:
            return []
        body, punct = _RE_SPLIT_PUNCT.match(word).groups()  # type: ignore[union-attr]
        out: list[str] = []
        if self._held is not None:
            held = self._held
            key = body.lower()
            if not punct and self._held_punct == "" and re.fullmatch(r"\d{3}", body) and "," not in held:
                # "1 500" is one number said in full.
                self._held = held + body
                return []
            if self._held_punct == "" and key in _UNIT_WORDS:
                self._held, self._held_punct = None, ""
                return (_number_with_unit(held, key) + punct).split()
            out.extend(self._release())
        if not body:
            # French puts a space before "!" and "?": keep them for prosody, as their own word.
            punct = punct.replace(":", "")
            if punct:
                out.append(punct)
            return out
        if _is_number(body):
            self._held, self._held_punct = body, punct
            return out
        spoken = self._speak(body)
        if spoken:
            out.extend((spoken + punct).split())
        elif out:
            out[-1] += punct
        return out

    def _speak(self, body: str) -> str:
        if body in _ABBREVIATIONS:
            return _ABBREVIATIONS[body]
        if match := _RE_TIME.match(body):
            return _time(match.group(1), match.group(2))
        if match := _RE_DATE.match(body):
            date = _date(*match.groups())
            if date is not None:
                return date
        if match := _RE_ORDINAL.match(body):
            return _ordinal(*match.groups())
        if match := _RE_TIMES.match(body):
            return f"{number_to_words(int(match.group(1)))} fois {number_to_words(int(match.group(2)))}"
        if match := _RE_NUMBER_UNIT.match(body):
            return _number_with_unit(match.group(1), match.group(2))
        if match := _RE_PRICE_PREFIX.match(body):
            return _number_with_unit(match.group(1), "€")
        if match := _RE_PER.match(body):
            head, per = match.groups()
            head_words = self._speak(head) if head else ""
            per_word = {"h": "heure"}.get(per, per)
            return f"{head_words} par {per_word}".strip()
        if "/" in body and not body.startswith("/"):
            return " sur ".join(self._speak(part) for part in body.split("/") if part)
        if re.search(r"\d", body):
            # Digits inside a word ("x3", "RPM45"): read each run of digits as a number.
            return re.sub(r"\d+", lambda m: f" {number_to_words(int(m.group()))} ", body).strip()
        return body


def normalize_text(text: str) -> str:
    return FrenchNormalizer().normalize(text)
