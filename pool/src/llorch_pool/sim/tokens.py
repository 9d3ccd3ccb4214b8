"""Simulated text generation: a deterministic token stream and stop-string handling.

:class:`TokenSource` yields word tokens from a small vocabulary. With a ``seed`` (or with
``temperature == 0``, i.e. greedy decoding) the stream is a pure function of the prompt and
the sampling parameters, so the same request always produces the same text, as a real engine
does with a fixed seed. :class:`StopScanner` cuts the stream at the first stop string and
holds back text that might be the start of one, as real engines do, so that no stop string
(or a piece of one) is ever sent to the client.

The simulator's chat template (:func:`render_chat`) and tokenizer (:func:`count_tokens`) are
made up and trivial, but documented, so that tests can predict what an engine reports.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator, Sequence

__all__ = ["VOCABULARY", "StopScanner", "TokenSource", "count_tokens", "render_chat"]

VOCABULARY: tuple[str, ...] = (
    " the", " a", " model", " token", " stream", " of", " and", " to", " in", " is",
    " orchestrator", " pool", " worker", " queue", " job", " GPU", " fast", " slow", " light",
    " river", " stone", " cloud", " green", " blue", " quiet", " bright", " seven", " three",
    " runs", " waits", " flows", " turns", " on", " with", " from", " under", " over", " by",
    " time", " day", " night", " road", " house", " tree", " word", " line", " page", " song",
    ",", ".", " —", " then", " again", " still", " only", " every", " some", " many",
    " north", " south", " east", " west", " here", " there",
)  # fmt: skip
"""The simulator's vocabulary: every generated token is one of these strings."""


class TokenSource:
    """An endless, reproducible stream of tokens for one request.

    Two sources built with the same ``prompt``, ``seed``, ``temperature``, ``top_p`` and
    ``top_k`` yield the same tokens. Without a seed and with ``temperature > 0`` the stream
    is random. ``eos_probability`` is the chance, after the first token, that the model ends
    its answer (the caller sees ``None``).
    """

    def __init__(
        self,
        prompt: str,
        *,
        seed: int | None,
        temperature: float = 0.7,
        top_p: float = 1.0,
        top_k: int = 0,
        eos_probability: float = 0.0,
    ) -> None:
        if seed is not None or temperature == 0.0:
            key = f"{seed}|{temperature!r}|{top_p!r}|{top_k}|{prompt}"
            self._rng = random.Random(key)  # str seeds hash with SHA-512: stable everywhere
        else:
            self._rng = random.Random()
        self._eos = eos_probability
        # A narrower nucleus or top-k means a smaller effective vocabulary, as with sampling.
        size = len(VOCABULARY)
        if top_k > 0:
            size = min(size, top_k)
        size = max(1, min(size, round(size * top_p) if top_p > 0 else 1))
        self._vocab = VOCABULARY[:size]

    def __iter__(self) -> Iterator[str | None]:
        return self

    def __next__(self) -> str | None:
        """The next token, or ``None`` for end of sequence."""
        if self._eos > 0 and self._rng.random() < self._eos:
            return None
        return self._rng.choice(self._vocab)


class StopScanner:
    """Cuts generated text at the first occurrence of any stop string.

    :meth:`feed` takes each new piece of text and returns ``(safe, stopped)``: ``safe`` is the
    text that may be sent now (it cannot be part of a stop string), ``stopped`` tells that a
    stop string was found (everything from it on is dropped). :meth:`flush` returns the text
    still held back when the stream ends for another reason.

    Invariant: the concatenation of everything returned equals the full text cut just before
    the first stop string (or the full text, if none occurs).
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._pending = ""
        self.stopped = False

    def feed(self, piece: str) -> tuple[str, bool]:
        """Add ``piece``; return the text safe to emit and whether a stop string was hit."""
        if self.stopped:
            return "", True
        if not self._stops:
            return piece, False
        text = self._pending + piece
        hits = [i for i in (text.find(s) for s in self._stops) if i >= 0]
        if hits:
            self._pending = ""
            self.stopped = True
            return text[: min(hits)], True
        hold = self._held_suffix(text)
        self._pending = text[len(text) - hold :] if hold else ""
        return text[: len(text) - hold], False

    def flush(self) -> str:
        """The held-back text, when the stream ends without a stop string."""
        rest, self._pending = self._pending, ""
        return rest

    def _held_suffix(self, text: str) -> int:
        """Length of the longest suffix of ``text`` that is a proper prefix of a stop string."""
        best = 0
        for stop in self._stops:
            for k in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:k]):
                    best = k
                    break
        return best


def render_chat(messages: Iterable[tuple[str, str]]) -> str:
    """The simulator's chat template: each ``(role, content)`` becomes ``<|role|>`` and the
    content on lines of their own, and the assistant's turn is opened at the end::

        <|system|>
        You are terse.
        <|user|>
        Hello
        <|assistant|>

    (every line ends with ``\\n``, the last one too). Contents are not escaped. The rendered
    text is the prompt the engine generates from, so it seeds :class:`TokenSource`.
    """
    parts = [f"<|{role}|>\n{content}\n" for role, content in messages]
    return "".join(parts) + "<|assistant|>\n"


def count_tokens(text: str) -> int:
    """The simulator's tokenizer, for prompt token counts: one token per whitespace-separated
    word (so each chat-template marker is one token), and at least 1."""
    return max(1, len(text.split()))
