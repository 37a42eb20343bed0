"""Text cleaning and tokenisation: the one implementation used by training and serving."""
from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping

import numpy as np

_TITLE_SUFFIX = re.compile(r"\s*\|\s*in\s+[^|]*\|\s*Gumtree\s*$", re.IGNORECASE)
_PRICE = re.compile(r"^\s*£?\s*(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d{1,2}))?\s*$")
_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_CAMEL_JOIN = re.compile(r"(?<=[a-z])(?=[A-Z][a-z])")

PAD, OOV = 0, 1


class PriceError(ValueError):
    """A price string that is not of the form "£1,250.00"."""


def clean_title(name: str) -> str:
    """"Sofa | in Leeds, West Yorkshire | Gumtree" -> "Sofa"."""
    return _TITLE_SUFFIX.sub("", str(name or "")).strip()


def parse_price(text: str) -> float:
    """"£1,250.00" -> 1250.0; anything else raises PriceError naming the value."""
    match = _PRICE.match(str(text if text is not None else ""))
    if not match:
        raise PriceError(f"price {text!r} is not of the form £1,250.00")
    whole = match.group(1).replace(",", "")
    cents = match.group(2) or "0"
    return float(f"{whole}.{cents}")


def root_category(category: str) -> str:
    """"Home & Garden / Garden & Patio / ..." -> "Home & Garden"."""
    root = str(category or "").split("/")[0].strip()
    if not root:
        raise ValueError(f"category {category!r} has no root")
    return root


def normalize(text: str) -> str:
    """Unicode-fold, split words glued by lost line breaks ("cookingServes"), collapse space."""
    text = unicodedata.normalize("NFKC", str(text or ""))
    text = text.replace("\r", " ").replace("\n", " ").replace("\u2019", "'")
    text = _CAMEL_JOIN.sub(" ", text)
    return re.sub(r"\s+", " ", text).strip()


def listing_text(title: str, description: str) -> str:
    """The text a model sees for a listing: its clean title, then its description."""
    return normalize(f"{clean_title(title)} . {description or ''}")


def tokenize(text: str) -> list[str]:
    return _TOKEN.findall(normalize(text).lower())


def build_vocab(token_lists: Iterable[list[str]], words: Iterable[str]) -> dict[str, int]:
    """Index 0 is padding, 1 is out-of-vocabulary; ``words`` fixes the order of the rest."""
    del token_lists  # the vocabulary is the embedding's; kept for signature clarity
    vocab = {"<pad>": PAD, "<oov>": OOV}
    for word in words:
        if word not in vocab:
            vocab[word] = len(vocab)
    return vocab


def encode(texts: Iterable[str], vocab: Mapping[str, int], max_len: int) -> np.ndarray:
    """Texts -> int32 [n, max_len] token ids (truncated, zero-padded)."""
    texts = list(texts)
    out = np.zeros((len(texts), max_len), dtype=np.int32)
    for row, text in enumerate(texts):
        ids = [vocab.get(tok, OOV) for tok in tokenize(text)[:max_len]]
        out[row, : len(ids)] = ids
    return out


def oov_rate(texts: Iterable[str], vocab: Mapping[str, int]) -> float:
    total = oov = 0
    for text in texts:
        for tok in tokenize(text):
            total += 1
            oov += tok not in vocab
    return oov / total if total else 0.0
