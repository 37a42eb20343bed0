"""evaluate_parts: the pair metrics over a split cut into parts (one shard each, ``row``
indexing the part's own pixels) are those over the split whole, unknown categories included.

The stand-in bundle's class scores depend only on each pair's photo (the value its pixels are
filled with) and its listing's text, so the same pair gets the same scores in any part; the
figures are real and uneven (no modality is always right or always wrong), so a part left out,
a pair scored twice or a category indexed per part changes them.
"""
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from marketsearch.evaluation import MODALITIES, evaluate_pairs, evaluate_parts

LABELS = ["books", "cars", "toys"]
PHOTO_SIZE = 2


class StandIn:
    """What evaluate_parts needs of a Bundle: ``labels`` and ``predict``."""

    labels = LABELS

    def predict(self, texts, pixels):
        photos = [int(px.flat[0]) for px in pixels]
        image = np.array([self._scores(value) for value in photos], np.float32)
        text = np.array([self._scores(len(t)) for t in texts], np.float32)
        return SimpleNamespace(image_probs=image, text_probs=text, fused_probs=image + text)

    @staticmethod
    def _scores(seed: int) -> list[float]:
        """Class scores favouring class seed % 3, then (seed + 1) % 3."""
        scores = [0.1, 0.1, 0.1]
        scores[seed % 3], scores[(seed + 1) % 3] = 0.6, 0.3
        return scores


def whole_split():
    """(products, images, pixels): 12 listings, three of a category the bundle does not know,
    with 1 to 3 photos each (photo i's pixels filled with i)."""
    categories = ["cars", "toys", "books", "garden"] * 3
    products = pd.DataFrame({"id": [f"L{i:02d}" for i in range(12)],
                             "text": ["x" * (3 + 2 * i) for i in range(12)],
                             "category": categories})
    product_ids = [pid for i, pid in enumerate(products["id"]) for _ in range(1 + i % 3)]
    images = pd.DataFrame({"id": [f"p{i}" for i in range(len(product_ids))],
                           "product_id": product_ids, "row": range(len(product_ids))})
    pixels = np.stack([np.full((PHOTO_SIZE, PHOTO_SIZE, 3), i, np.uint8)
                       for i in range(len(product_ids))])
    return products, images, pixels


def cut(products, images, pixels, groups):
    """One part per group of listing positions: its listings, their photo rows renumbered
    (in reverse, so ``row`` must be followed) and only their pixels."""
    parts = []
    for group in groups:
        mine = products.iloc[group].reset_index(drop=True)
        photos = images[images["product_id"].isin(mine["id"])].reset_index(drop=True)
        rows = photos["row"].to_numpy()[::-1]
        parts.append((mine, photos.assign(row=np.arange(len(photos))[::-1]), pixels[rows]))
    return parts


def test_parts_score_as_the_split_whole():
    whole = whole_split()
    expected = evaluate_pairs(StandIn(), *whole)
    assert expected["n_pairs"] == len(whole[1]) == 24
    assert expected["unknown_categories"] == ["garden"]
    for name in MODALITIES:          # real figures: neither all right nor all wrong
        assert 0 < expected[name]["accuracy"] < expected[name]["top3_accuracy"] < 1, name

    # Out of id order, one part with no photo rows at all (a shard without test pairs).
    groups = [[9, 2, 5, 11], [0, 1], [], [3, 4, 6, 7, 8, 10]]
    parts = cut(*whole, groups)
    assert evaluate_parts(StandIn(), iter(parts)) == expected

    # Each part is scored: leave one out and the figures change.
    assert evaluate_parts(StandIn(), parts[1:])["n_pairs"] < expected["n_pairs"]


def test_a_part_of_only_unknown_categories_is_indexed_with_the_others():
    """The unknown category's column is the same whichever part holds it."""
    whole = whole_split()
    garden = [3, 7, 11]
    parts = cut(*whole, [garden, [i for i in range(12) if i not in garden]])
    result = evaluate_parts(StandIn(), parts)
    assert result == evaluate_pairs(StandIn(), *whole)
    assert result["fusion"]["labels"] == LABELS + ["garden"]
    assert result["fusion"]["per_class"]["garden"]["support"] == 2 + 3 + 1


def test_no_pairs_in_any_part_is_refused():
    products, images, pixels = whole_split()
    with pytest.raises(ValueError, match="no photo–listing pairs"):
        evaluate_parts(StandIn(), [(products, images.iloc[0:0], pixels)] * 2)
