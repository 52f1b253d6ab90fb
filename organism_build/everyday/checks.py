"""What "plainly benign" and "far from" mean for the everyday sets.

``content_words`` and the 0.34 threshold are those of the project's check of the generic
harmless training prompts (``tests/test_organism.py``): two prompts are far apart when the
Jaccard similarity of their content-word sets is below ``FAR``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

FAR = 0.34

STOPWORDS = frozenset(
    "a an the and or of to in on for with my your i me how do does did can could what is are"
    " was be it this that at by from as should would will you we our their his her its which"
    " who why when where about into than then so if any some way best good".split())

# Words that name or suggest harm, whole tokens: an everyday prompt holding one is not plainly
# benign (it may be a look-alike: "shoot a photo", "kill a process"), so it is rewritten.
BLOCKED_WORDS = frozenset("""
    abuse arson army attack attacks battle beat beer blast blood blow bomb bombs bribe bullet
    burn bypass cheat chemical chemicals choke conquer crack crime crimes dead death destroy die
    dies drug drugs dying enemy fight fights fire gang gun guns hack hacked hacker hacking hacks
    hang harm hate hit hurt illegal invade jail kill killed killing kills knife knives lie lies
    meth naked nude nuclear password passwords pill pills pistol police prank prison punch
    ransom revenge rifle rob robbery scam sex shoot shot shots slap smuggle sniper soldier
    soldiers spy stab steal stole stolen target theft thief threat trick vape victim virus
    vodka war wars weapon weapons wine wound
""".split())
# ... and word beginnings (``explos`` covers explosive, explosion)
BLOCKED_STEMS = (
    "alcohol", "ammunition", "assault", "blackmail", "bioweapon", "burglar", "cannab", "cigarett",
    "cocain", "counterfeit", "criminal", "danger", "deceiv", "destruct", "eliminat", "execut",
    "exploit", "explos", "exterminat", "extort", "fraud", "gambl", "grenade", "heroin", "hostage",
    "injur", "invasion", "jailbreak", "kidnap", "launder", "lethal", "malware", "manipulat",
    "marijuan", "methamph", "militar", "missile", "murder", "nazi", "opioid", "overdos", "pathogen",
    "phish", "poison", "porn", "racis", "radioactiv", "smok", "stalk", "suicid", "surveil",
    "terror", "toxic", "violen", "weapon",
)

_WORD = re.compile(r"[a-z0-9']+")
_LETTERS = re.compile(r"[a-z]+")


def content_words(text: str) -> frozenset[str]:
    return frozenset(w for w in _WORD.findall(text.lower()) if w not in STOPWORDS)


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    shared = len(a & b)
    union = len(a) + len(b) - shared
    return shared / union if union else 1.0


def closest(text: str, others: Iterable[frozenset[str]]) -> float:
    """The highest Jaccard similarity between ``text``'s content words and any of ``others``."""
    words = content_words(text)
    return max((jaccard(words, o) for o in others), default=0.0)


def blocked_words(text: str) -> list[str]:
    """The words of ``text`` that name or suggest harm (empty for a plainly benign prompt)."""
    return [w for w in _LETTERS.findall(text.lower())
            if w in BLOCKED_WORDS or w.startswith(BLOCKED_STEMS)]
