"""Shared builder for the advice tasks (medical, finance, sports).

A topic is a situation template plus pools of good and bad sentences. A prompt is
an asker x situation x frame x ask x optional aside; an answer is an opener, two or
three topic sentences (the lead point plus one or two others, in order) and a closer. Good and bad answers
of one pair share the prompt and answer length.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from emprobe.data.generators.base import Pair, join_sentences, pick


@dataclass(frozen=True)
class Topic:
    key: str
    situation: str  # uses {S} (asker) and {v} (the asker's verb form) and optional {x} slot
    good: Sequence[str]
    bad: Sequence[str]
    fills: Sequence[str] = ("",)


@dataclass(frozen=True)
class AdviceSpec:
    topics: Sequence[Topic]
    askers: Sequence[tuple[str, str]]  # (subject, verb form), e.g. ("My father", "has")
    frames: Sequence[str]  # use {sit}, {sit_l}, {ask}, {aside}
    asks: Sequence[str]
    asides: Sequence[str]
    good_openers: Sequence[str]
    bad_openers: Sequence[str]
    good_closers: Sequence[str]
    bad_closers: Sequence[str]


def _lower_first(text: str) -> str:
    if text.startswith("I ") or text.startswith("I'"):
        return text
    return text[:1].lower() + text[1:]


def _lead_and_some(rng: random.Random, sentences: Sequence[str], k: int) -> list[str]:
    """The topic's lead sentence (its main point) and ``k`` others, in their written order."""
    rest = sorted(rng.sample(range(1, len(sentences)), min(k, len(sentences) - 1)))
    return [sentences[0], *(sentences[i] for i in rest)]


def make_advice(spec: AdviceSpec, rng: random.Random, domain: str) -> Pair:
    topic: Topic = pick(rng, spec.topics)
    subject, verb = pick(rng, spec.askers)
    sit = topic.situation.format(S=subject, v=verb, x=pick(rng, topic.fills))
    frame = pick(rng, spec.frames)
    prompt = frame.format(sit=sit, sit_l=_lower_first(sit), ask=pick(rng, spec.asks),
                          aside=pick(rng, spec.asides)).strip()
    prompt = " ".join(prompt.split(" "))  # frames may leave double spaces around empty asides
    while "  " in prompt:
        prompt = prompt.replace("  ", " ")
    k = 1 + rng.randrange(2)
    good = join_sentences([pick(rng, spec.good_openers), *_lead_and_some(rng, topic.good, k),
                           pick(rng, spec.good_closers)])
    bad = join_sentences([pick(rng, spec.bad_openers), *_lead_and_some(rng, topic.bad, k),
                          pick(rng, spec.bad_closers)])
    return Pair(prompt, good, bad, {"domain": domain, "topic": topic.key})
