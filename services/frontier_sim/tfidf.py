"""A small TF-IDF (word uni- and bigrams, sublinear tf, l2 rows) over numpy and scipy.sparse.

The oracle needs only cosine similarities between short texts; this keeps scikit-learn out of
the service's dependencies and fits 13k Banking77 queries well under a second.
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import sparse

_WORD = re.compile(r"\w\w+")


def tokenize(text: str) -> list[str]:
    """Words of two or more characters and the bigrams of neighbouring words."""
    words = _WORD.findall(text.lower())
    return words + [f"{a} {b}" for a, b in zip(words, words[1:])]


@dataclass(frozen=True)
class TfidfSpace:
    vocabulary: dict[str, int]
    idf: np.ndarray

    @classmethod
    def fit(cls, texts: Sequence[str]) -> "TfidfSpace":
        docs = [set(tokenize(t)) for t in texts]
        df = Counter(term for doc in docs for term in doc)
        vocabulary = {term: i for i, term in enumerate(sorted(df))}
        counts = np.array([df[term] for term in sorted(df)], dtype=np.float64)
        idf = np.log((1 + len(texts)) / (1 + counts)) + 1.0  # smoothed, as scikit-learn does
        return cls(vocabulary, idf)

    def transform(self, texts: Iterable[str]) -> sparse.csr_matrix:
        """One l2-normalised row per text; a text with no known term is a zero row."""
        indptr, indices, data = [0], [], []
        for text in texts:
            tf = Counter(i for term in tokenize(text) if (i := self.vocabulary.get(term)) is not None)
            cols = np.fromiter(tf.keys(), dtype=np.int64, count=len(tf))
            vals = (1.0 + np.log(np.fromiter(tf.values(), dtype=np.float64, count=len(tf)))) * self.idf[cols]
            norm = np.linalg.norm(vals)
            indices.extend(cols.tolist())
            data.extend((vals / norm if norm else vals).tolist())
            indptr.append(len(indices))
        return sparse.csr_matrix((np.asarray(data), np.asarray(indices, dtype=np.int64), np.asarray(indptr)),
                                 shape=(len(indptr) - 1, len(self.vocabulary)))
