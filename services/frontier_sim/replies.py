"""Open-ended answers for freeform tasks (draft-reply) and requests that name no task.

Templated, but a stable function of the input, so repeated requests agree and distinct inputs
get distinct replies, the way a frontier model's drafts would: outputs stay open-ended.
"""
from __future__ import annotations

import re

from services.common.normalize import normalise_input
from services.frontier_sim.oracle import draw_uniforms

GREETINGS = ("Hello,", "Hi there,", "Dear customer,", "Good day,", "Thanks for writing in,")
ACKNOWLEDGEMENTS = (
    "thank you for getting in touch about {topic}.",
    "thanks for your message regarding {topic}.",
    "we appreciate you letting us know about {topic}.",
    "I'm sorry to hear about {topic}.",
)
BODIES = (
    "We are looking into it and will get back to you within one business day.",
    "A member of our team is reviewing your request and will follow up shortly.",
    "Could you reply with any reference number you have, so we can check this faster?",
    "We have passed this on to the right team, and you will hear from us by e-mail.",
    "In most cases this is resolved within a few days; we will keep you updated.",
)
CLOSINGS = ("Kind regards,\nCustomer Support", "Best wishes,\nThe Support Team", "Many thanks,\nCustomer Care")
_SENTENCE_END = re.compile(r"[.!?\n]")


def topic_of(text: str, max_words: int = 10) -> str:
    """The first sentence of the input, at most `max_words` words, quoted."""
    first = _SENTENCE_END.split(text.strip(), maxsplit=1)[0].strip() or text.strip()
    words = first.split()
    snippet = " ".join(words[:max_words]) + ("…" if len(words) > max_words else "")
    return f'"{snippet}"'


def draft_reply(task: str, text: str, seed: int) -> str:
    """A short, polite reply that varies with the input and is the same for the same input."""
    u = draw_uniforms(task, normalise_input(text), seed, n=4)
    greeting, ack = _pick(GREETINGS, u[0]), _pick(ACKNOWLEDGEMENTS, u[1]).format(topic=topic_of(text))
    return f"{greeting} {ack}\n\n{_pick(BODIES, u[2])}\n\n{_pick(CLOSINGS, u[3])}"


def _pick(options: tuple[str, ...], u: float) -> str:
    return options[int(u * len(options))]
