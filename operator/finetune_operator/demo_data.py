"""Deterministic generators of the demo datasets used by ``finetune run --demo``.

Why it exists: the quickstart must fine-tune on data the project produces itself (the shared
datasets are not part of the project, and there are no downloads). The sentiment generator
combines templates with a varied vocabulary across five domains and includes the cases a plain
bag-of-words gets wrong (negation of either polarity, "X but Y" contrasts where the second clause
decides, intensifiers, recommendations), so that a fine-tune measurably beats the un-tuned
baseline. The instruction generator produces small Alpaca-style tasks with one exact answer
(opposites, arithmetic, reversing and upper-casing words) for the causal-lm example.

Everything is pure Python and seeded: the same ``seed`` gives byte-identical files.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Iterator
from pathlib import Path

__all__ = [
    "HELD_OUT_SEED",
    "INSTRUCT_SPLITS",
    "SENTIMENT_LABELS",
    "SENTIMENT_SPLITS",
    "instruction_rows",
    "iter_text",
    "sentiment_rows",
    "write_jsonl",
]

SENTIMENT_LABELS = ("negative", "positive")
# split name -> (rows, seed offset); disjoint seeds give different sentences per split
SENTIMENT_SPLITS: dict[str, tuple[int, int]] = {"train": (960, 0), "val": (96, 1), "test": (240, 2)}
HELD_OUT_SEED = SENTIMENT_SPLITS["test"][1]  # this seed's rows also use the held-out adjectives
INSTRUCT_SPLITS: dict[str, tuple[int, int]] = {"train": (600, 0), "val": (60, 1), "test": (80, 2)}

_DOMAINS: dict[str, list[str]] = {
    "restaurant": [
        "the food",
        "the soup",
        "the service",
        "our waiter",
        "the dessert",
        "the pasta",
        "the coffee",
        "the menu",
        "the wine list",
        "the kitchen",
    ],
    "movie": [
        "the film",
        "the plot",
        "the acting",
        "the soundtrack",
        "the ending",
        "the script",
        "the lead actress",
        "the dialogue",
        "the pacing",
        "the special effects",
    ],
    "hotel": [
        "the room",
        "the bed",
        "the front desk",
        "the breakfast",
        "the pool",
        "the view",
        "the shower",
        "the location",
        "the cleaning staff",
        "the lobby",
    ],
    "gadget": [
        "the battery",
        "the screen",
        "this phone",
        "the camera",
        "the charger",
        "the keyboard",
        "the speaker",
        "the app",
        "the build quality",
        "the headphones",
    ],
    "book": [
        "the novel",
        "the story",
        "the characters",
        "the writing",
        "the translation",
        "the last chapter",
        "the author's style",
        "the cover",
        "the plot twist",
        "the prose",
    ],
}
_POSITIVE = [
    "good",
    "great",
    "excellent",
    "wonderful",
    "delightful",
    "superb",
    "fantastic",
    "lovely",
    "impressive",
    "brilliant",
    "charming",
    "flawless",
    "pleasant",
    "solid",
    "outstanding",
    "enjoyable",
    "fresh",
    "reliable",
    "friendly",
    "gorgeous",
]
_NEGATIVE = [
    "bad",
    "awful",
    "terrible",
    "dreadful",
    "disappointing",
    "mediocre",
    "boring",
    "horrible",
    "bland",
    "sloppy",
    "broken",
    "rude",
    "noisy",
    "dirty",
    "weak",
    "annoying",
    "overpriced",
    "clumsy",
    "stale",
    "useless",
]
# Only in the test split: adjectives the fine-tune never saw, so the score also measures what the
# pretrained encoder brings (it knows "splendid" is praise) rather than template memorisation.
_HELD_OUT_POSITIVE = ["splendid", "marvelous", "terrific", "exquisite", "stellar", "sublime"]
_HELD_OUT_NEGATIVE = ["atrocious", "abysmal", "lousy", "dismal", "shoddy", "appalling"]
_INTENSIFIERS = [
    "",
    "",
    "really ",
    "truly ",
    "quite ",
    "absolutely ",
    "genuinely ",
    "so ",
    "incredibly ",
]
_POS_VERBS = ["loved", "enjoyed", "adored", "appreciated", "liked"]
_NEG_VERBS = ["hated", "disliked", "regretted", "could not stand", "was let down by"]
_OPENERS = ["", "", "Honestly, ", "Overall, ", "To be fair, ", "In short, ", "Well, "]


_Vocab = tuple[list[str], list[str]]  # (positive adjectives, negative adjectives)


def _clause(rng: random.Random, subject: str, positive: bool, vocab: _Vocab) -> str:
    """A clause about ``subject`` whose polarity is ``positive``; half of them use negation."""
    form = rng.randrange(4)
    be = "were" if subject.endswith("s") and not subject.endswith("ss") else "was"
    if form == 0:  # plain adjective
        adj = rng.choice(vocab[0] if positive else vocab[1])
        return f"{subject} {be} {rng.choice(_INTENSIFIERS)}{adj}"
    if form == 1:  # negated adjective of the opposite polarity
        adj = rng.choice(vocab[1] if positive else vocab[0])
        neg = rng.choice(["not", "never", "not at all", "not exactly"])
        if neg == "not at all":
            return f"{subject} {be} not {adj} at all"
        return f"{subject} {be} {neg} {adj}"
    if form == 2:  # verb
        verb = rng.choice(_POS_VERBS if positive else _NEG_VERBS)
        return f"I {verb} {subject}"
    # verb negated
    verb = (
        rng.choice(["did not like", "did not enjoy", "didn't care for"])
        if not positive
        else (
            rng.choice(["could not fault", "found nothing wrong with", "had no complaints about"])
        )
    )
    return f"I {verb} {subject}"


def _sentence(rng: random.Random, positive: bool, vocab: _Vocab) -> str:
    domain = rng.choice(sorted(_DOMAINS))
    subjects = _DOMAINS[domain]
    kind = rng.randrange(5)
    if kind in (0, 1):
        text = _clause(rng, rng.choice(subjects), positive, vocab)
    elif kind == 2:  # contrast: the clause after "but" decides
        first, second = rng.sample(subjects, 2)
        text = f"{_clause(rng, first, not positive, vocab)}, but {_clause(rng, second, positive, vocab)}"
    elif kind == 3:  # two clauses agreeing
        first, second = rng.sample(subjects, 2)
        joiner = rng.choice([" and ", "; also ", ", and "])
        text = (
            f"{_clause(rng, first, positive, vocab)}{joiner}{_clause(rng, second, positive, vocab)}"
        )
    else:  # recommendation
        if positive:
            rec = rng.choice(
                [
                    "I would recommend it to anyone",
                    "I will definitely come back",
                    "worth every penny",
                    "I would happily do it again",
                ]
            )
        else:
            rec = rng.choice(
                [
                    "I would not recommend it",
                    "never again",
                    "I want my money back",
                    "I would not go back",
                ]
            )
        text = f"{_clause(rng, rng.choice(subjects), positive, vocab)}. {rec[0].upper()}{rec[1:]}"
    text = rng.choice(_OPENERS) + text
    return text[0].upper() + text[1:] + rng.choice([".", ".", "!"])


def sentiment_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    """``n`` rows ``{"text", "label"}``, labels balanced and shuffled, duplicates avoided.

    The test split's seed (``HELD_OUT_SEED``) also draws adjectives that no other split uses.
    """
    rng = random.Random(f"sentiment-{seed}")
    vocab: _Vocab = (_POSITIVE, _NEGATIVE)
    if seed == HELD_OUT_SEED:
        vocab = (_POSITIVE + _HELD_OUT_POSITIVE * 3, _NEGATIVE + _HELD_OUT_NEGATIVE * 3)
    rows: list[dict[str, str]] = []
    seen: set[str] = set()
    attempts = 0
    while len(rows) < n:
        positive = len(rows) % 2 == 0
        text = _sentence(rng, positive, vocab)
        attempts += 1
        if text in seen and attempts < n * 20:
            continue
        seen.add(text)
        rows.append({"text": text, "label": SENTIMENT_LABELS[int(positive)]})
    rng.shuffle(rows)
    return rows


_OPPOSITES = {
    "hot": "cold",
    "big": "small",
    "fast": "slow",
    "up": "down",
    "light": "dark",
    "happy": "sad",
    "open": "closed",
    "early": "late",
    "full": "empty",
    "wet": "dry",
    "old": "new",
    "hard": "soft",
    "left": "right",
    "day": "night",
    "win": "lose",
    "high": "low",
    "push": "pull",
    "rich": "poor",
    "loud": "quiet",
    "first": "last",
}
_WORDS = [
    "cat",
    "tree",
    "river",
    "apple",
    "stone",
    "cloud",
    "music",
    "garden",
    "window",
    "rocket",
    "pencil",
    "yellow",
    "planet",
    "silver",
    "forest",
    "bridge",
    "candle",
    "mirror",
    "orange",
    "summer",
    "winter",
    "dragon",
    "castle",
    "island",
]


def _instruction(rng: random.Random) -> dict[str, str]:
    kind = rng.randrange(4)
    if kind == 0:
        word, answer = rng.choice(sorted(_OPPOSITES.items()))
        if rng.random() < 0.5:
            word, answer = answer, word
        return {"instruction": "Give the opposite of the word.", "input": word, "output": answer}
    if kind == 1:
        a, b = rng.randrange(0, 50), rng.randrange(0, 50)
        return {"instruction": "Add the two numbers.", "input": f"{a} + {b}", "output": str(a + b)}
    word = rng.choice(_WORDS)
    if kind == 2:
        return {"instruction": "Spell the word backwards.", "input": word, "output": word[::-1]}
    return {
        "instruction": "Write the word in capital letters.",
        "input": word,
        "output": word.upper(),
    }


def instruction_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    """``n`` Alpaca-style rows ``{"instruction", "input", "output"}``."""
    rng = random.Random(f"instruct-{seed}")
    return [_instruction(rng) for _ in range(n)]


def write_jsonl(rows: Iterable[dict[str, str]], path: Path) -> Path:
    """Write ``rows`` as JSON lines (parents created); returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def iter_text(rows: Iterable[dict[str, str]]) -> Iterator[str]:
    """Every string value of ``rows`` (to train a tokenizer on)."""
    for row in rows:
        yield from row.values()
