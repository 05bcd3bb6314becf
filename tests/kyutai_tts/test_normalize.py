"""The French normaliser turns what the LLM writes into what the kiosk should say."""

from __future__ import annotations

import pytest
from kyutai_tts.normalize import FrenchNormalizer, normalize_text, number_to_words


@pytest.mark.parametrize(
    ("written", "spoken"),
    [
        (
            "Le cours de RPM est à 18h45, 12,50 €",
            "Le cours de RPM est à dix-huit heures quarante-cinq, douze euros cinquante",
        ),
        ("3x12 reps à 60 kg", "trois fois douze reps à soixante kilos"),
        ("**Super** 💪", "Super"),
        ("Ton abonnement coûte 29,99€/mois.", "Ton abonnement coûte vingt-neuf euros quatre-vingt-dix-neuf par mois."),
        ("Rendez-vous le 1/12 à 7h30 !", "Rendez-vous le premier décembre à sept heures trente !"),
        ("Ouverture à 21h", "Ouverture à vingt et une heures"),
        ("Fais 3 x 12 squats à 1 500 kg", "Fais trois fois douze squats à mille cinq cents kilos"),
        ("Courir 5 km en 25 min", "Courir cinq kilomètres en vingt-cinq minutes"),
        ("15% de réduction, 0,50 € la boisson", "quinze pour cent de réduction, cinquante centimes la boisson"),
        ("le 2e étage, 1er cours", "le deuxième étage, premier cours"),
        ("Ton RDV avec le coach", "Ton rendez-vous avec le coach"),
        ("Il reste 2,5 kg", "Il reste deux virgule cinq kilos"),
    ],
)
def test_gym_phrases_are_spoken_in_full(written: str, spoken: str) -> None:
    assert normalize_text(written) == spoken


def test_markdown_emoji_and_urls_are_never_read_aloud() -> None:
    text = "## Programme\n- **Squat** 💪🏽 : voir https://gym.fr/prog ou [la vidéo](https://x.fr/v) 👍\n1. Gainage ✅"
    spoken = normalize_text(text)
    assert spoken == "Programme Squat voir ou la vidéo Gainage"
    for leak in ("*", "#", "http", "💪", "👍", "✅", "[", "]", "(", ")"):
        assert leak not in spoken


@pytest.mark.parametrize(
    ("n", "words"),
    [
        (21, "vingt et un"),
        (71, "soixante et onze"),
        (80, "quatre-vingts"),
        (81, "quatre-vingt-un"),
        (91, "quatre-vingt-onze"),
        (200, "deux cents"),
        (201, "deux cent un"),
        (1000, "mille"),
        (2026, "deux mille vingt-six"),
        (80_000, "quatre-vingt mille"),
        (2_000_000, "deux millions"),
    ],
)
def test_numbers_follow_french_spelling(n: int, words: str) -> None:
    assert number_to_words(n) == words


def test_words_leave_as_soon_as_they_are_complete() -> None:
    """Streaming: a word is released at the next space; only a number waits one word for its unit."""
    normalizer = FrenchNormalizer()
    assert normalizer.push("Le co") == ["Le"]
    assert normalizer.push("urs de ") == ["cours", "de"]
    assert normalizer.push("RPM est à 18") == ["RPM", "est", "à"]
    assert normalizer.push("h45, 12") == ["dix-huit", "heures", "quarante-cinq,"]
    assert normalizer.push(",50 ") == []  # a price may follow
    assert normalizer.push("€ et") == ["douze", "euros", "cinquante"]
    assert normalizer.push(" merci") == ["et"]
    assert normalizer.flush() == ["merci"]


def test_a_number_is_released_when_no_unit_follows() -> None:
    normalizer = FrenchNormalizer()
    assert normalizer.push("Fais 3 ") == ["Fais"]
    assert normalizer.push("séries ") == ["trois", "séries"]
