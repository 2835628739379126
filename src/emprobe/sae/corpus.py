"""emprobe's own generic chat corpus: the default harvest data and top-activating-context corpus.

Written for emprobe (not taken from any dataset): everyday questions on neutral topics,
combined from small templates so any number of conversations can be drawn
deterministically. ``generic_chats(n, seed)`` returns conversations with a short
assistant answer, so response-token harvests work on them too.
"""

from __future__ import annotations

import random

from emprobe.models.chat import Conversation

_TOPICS = [
    ("houseplants", "water them when the top of the soil feels dry and keep them out of cold drafts"),
    ("bread baking", "let the dough rise until it doubles and bake it until the crust sounds hollow"),
    ("learning a language", "practise a little every day and speak out loud from the first week"),
    ("running", "start slowly, add distance gradually and rest when a joint hurts"),
    ("budgeting", "write down what comes in and goes out, then set a small amount aside first"),
    ("sleep", "keep a regular bedtime and avoid screens in the last hour before it"),
    ("job interviews", "prepare two stories about past work and ask the interviewer a real question"),
    ("bicycle repair", "check the tyre pressure and chain first, those cause most problems"),
    ("photography", "watch the light, fill the frame and hold the camera steady"),
    ("cooking rice", "rinse it, use a lid and let it rest off the heat for ten minutes"),
    ("moving house", "label boxes by room and pack an essentials bag for the first night"),
    ("public speaking", "rehearse aloud, slow down and look at a few friendly faces"),
    ("chess", "develop your pieces early, castle and think about your opponent's threats"),
    ("gardening", "know your soil, plant for the season and water deeply but rarely"),
    ("writing essays", "state your point early and give each paragraph one job"),
    ("saving energy at home", "seal draughts, turn the heating down a degree and switch off standby"),
    ("birdwatching", "go early in the morning, stay quiet and learn a few common calls"),
    ("studying for exams", "test yourself instead of rereading and space your sessions out"),
    ("travel packing", "roll clothes, bring one spare outfit and keep documents together"),
    ("coffee brewing", "use fresh beans, weigh them and keep the water just off the boil"),
    ("team meetings", "share an agenda beforehand and end with who does what by when"),
    ("dog training", "reward the behaviour you want right away and keep sessions short"),
    ("painting walls", "clean and tape first, then use thin coats and let each one dry"),
    ("time management", "pick the three most important tasks each morning and do one first"),
]

_QUESTIONS = [
    "Can you give me a tip about {t}?",
    "I'm new to {t}. Where should I start?",
    "What is the most common mistake people make with {t}?",
    "My friend asked me about {t}. What should I tell them?",
    "Explain {t} to me in a couple of sentences.",
    "What's one thing an expert in {t} always does?",
]

_ANSWERS = [
    "A good rule for {t}: {a}.",
    "With {t}, the basics matter most: {a}.",
    "Most people do fine with {t} if they {a}.",
    "Here is a simple approach to {t}: {a}. Small steps add up.",
]


def generic_chats(n: int, seed: int = 0) -> list[Conversation]:
    """``n`` user/assistant conversations on neutral everyday topics (deterministic in ``seed``)."""
    rng = random.Random(seed)
    out: list[Conversation] = []
    for _ in range(n):
        topic, advice = rng.choice(_TOPICS)
        q = rng.choice(_QUESTIONS).format(t=topic)
        a = rng.choice(_ANSWERS).format(t=topic, a=advice)
        out.append([{"role": "user", "content": q}, {"role": "assistant", "content": a}])
    return out


def context_corpus(n_generic: int = 48, seed: int = 0, pairs: int | None = None,
                   include_eval: bool = False) -> list[Conversation]:
    """The default corpus for SAE harvests and top-activating contexts: generic chats.

    The evaluation questions and their reference answers are NOT part of it by default: an
    SAE or a direction fitted on them would have seen the measurement (``emprobe data
    check-leakage`` checks this). ``include_eval=True`` adds each eval question with its
    aligned and misaligned reference answers (the first ``pairs`` pairs; all when
    ``None``), for reading contexts of an already trained SAE only.
    """
    chats = generic_chats(n_generic, seed=seed)
    return chats + eval_question_chats(pairs) if include_eval else chats


def eval_question_chats(pairs: int | None = None) -> list[Conversation]:
    """Each eval question's first paraphrase with each reference answer (aligned, misaligned)
    of its first ``pairs`` reference pairs (all when ``None``)."""
    from emprobe.evaluate.questions import default_questions

    out: list[Conversation] = []
    for q in default_questions():
        for pair in list(getattr(q, "reference_pairs", ()))[:pairs]:
            for answer in (pair.aligned, pair.misaligned):
                out.append([*q.messages(0), {"role": "assistant", "content": answer}])
    return out


def _leakage_sources() -> None:
    """Register this module's corpora with the leakage gate (``emprobe data check-leakage``)."""
    from emprobe.data.leakage import chat_texts, register_source

    register_source("sae:generic-chats", lambda: chat_texts("sae:generic-chats",
                                                            generic_chats(400, seed=0)))
    register_source("sae:context-corpus", lambda: chat_texts("sae:context-corpus",
                                                             context_corpus()))


_leakage_sources()
