"""The text conversions are graded on: written for edgekit, and sharing no sentence with the
calibration text int4 conversion runs on (a model is never graded on what it was calibrated on).

Prose, dialogue, code, numbers and a table, in English, French, German, Spanish, Italian,
Portuguese and Chinese, so that a broken tokenizer merge or a damaged tensor shows up somewhere.
"""

from __future__ import annotations

NAME = "edgekit-eval-v1"

# Every kind of text appears within the first 256 tokens of common tokenizers (what is scored by
# default); the rest adds more of each.
TEXT = """\
The library opened at nine, but the reading room stayed quiet until the rain started.
Q: How many minutes are there in a week? A: 7 x 24 x 60 = 10,080 minutes.
def mean(values):
    return sum(values) / len(values) if values else 0.0
Le train de nuit arrive à Nice le lendemain matin.
| city | population | area (km2) |
| Vienna | 1,920,949 | 414.87 |
Die Bibliothek bleibt im August geschlossen.
El mercado abre los sábados desde muy temprano.
Il museo ha riaperto dopo due anni di restauri.
A ponte mede cerca de dois quilómetros.
春天的时候，公园里开满了花。
People came in with wet umbrellas, shook them by the door and looked for a seat near the \
radiators. A student spread three maps across a table and traced the course of a river with her \
finger, stopping where it split into two channels before reaching the delta.

def moving_average(values, width=3):
    \"\"\"Mean of each window of `width` consecutive values.\"\"\"
    if width <= 0:
        raise ValueError("width must be positive")
    return [sum(values[i:i + width]) / width for i in range(len(values) - width + 1)]

| city      | population (2021) | area (km2) |
|-----------|-------------------|------------|
| Lisbon    | 545,796           | 100.05     |
| Osaka     | 2,752,412         | 225.21     |

Dans le wagon-restaurant, on sert une soupe de légumes et du fromage de montagne. Studierende \
können Bücher online bestellen und am Haupteingang abholen. Los agricultores traen tomates, \
naranjas y pan recién horneado de los pueblos cercanos. Una nuova sala è dedicata alle ceramiche \
antiche. A ponte foi construída em 1966. 很多人周末带着孩子去散步。

The experiment was repeated five times. The mean reaction time fell from 412 ms to 367 ms after \
training, while the error rate stayed near 3.5 percent. These figures suggest that practice made \
the participants faster without making them careless, although a larger sample would be needed to \
be sure.
"""

# Sentences for grading embedding models: distinct topics and languages, short and long.
SENTENCES = [
    "The library opened at nine, but the reading room stayed quiet until the rain started.",
    "A student traced the course of a river on a map with her finger.",
    "There are 10,080 minutes in a week.",
    "The function returns the mean of each window of consecutive values.",
    "Vienna has about 1.9 million inhabitants.",
    "Le train de nuit arrive à Nice le lendemain matin.",
    "Die Bibliothek bleibt im August geschlossen.",
    "El mercado abre los sábados desde muy temprano.",
    "Il museo ha riaperto dopo due anni di restauri.",
    "A ponte mede cerca de dois quilómetros.",
    "春天的时候，公园里开满了花。",
    "Practice made the participants faster without making them careless.",
    "How do I reset my password?",
    "The cat slept on the warm windowsill all afternoon.",
    "Interest rates rose for the third time this year.",
    "x",
]
