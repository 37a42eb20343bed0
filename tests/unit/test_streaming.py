"""Streaming training data (marketsearch.streaming) and the clean catalogue read shard by shard
(marketsearch.catalogue)."""
import numpy as np
import pandas as pd
import pytest

from marketsearch.catalogue import CleanCatalogue, GatheredPixels
from marketsearch.records import CleanData, CleanPlan, CleanShard
from marketsearch.streaming import Examples, TextParts


def _examples(spill, sizes=(5, 7, 3), dim=4):
    out = Examples(spill)
    start = 0
    for n in sizes:
        ids = np.arange(start, start + n)
        out.add(np.repeat(ids[:, None], dim, axis=1).astype(np.float32), ids % 3)
        start += n
    return out


def _epoch(ds):
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in ds])
    return np.concatenate(xs), np.concatenate(ys)


def test_parts_on_disk_are_read_memory_mapped_and_every_example_comes_once_an_epoch(tmp_path):
    ex = _examples(tmp_path / "spill")
    assert len(ex) == 15 and ex.n_parts == 3
    assert len(list((tmp_path / "spill").glob("*.npy"))) == 6          # x and y per part
    assert isinstance(ex.part(1)[0][0], np.memmap)
    ds = ex.dataset(batch_size=4, shuffle_buffer=6, seed=1)
    assert int(ds.cardinality()) == 4                                  # ceil(15 / 4), known
    first, second = _epoch(ds), _epoch(ds)
    for x, y in (first, second):
        assert sorted(x[:, 0].astype(int)) == list(range(15))           # each once
        assert np.array_equal(y, x[:, 0].astype(int) % 3)              # labels travel with rows
    assert not np.array_equal(first[0], second[0])                     # reshuffled each epoch
    again = _epoch(_examples(tmp_path / "again").dataset(batch_size=4, shuffle_buffer=6, seed=1))
    assert np.array_equal(first[0], again[0])                          # seeded: reproducible
    in_order = _epoch(ex.dataset(batch_size=4))                        # no buffer: part order
    assert sorted(in_order[0][:, 0]) == list(range(15))


def test_map_works_part_by_part_and_a_tuple_input_streams_as_a_tuple(tmp_path):
    ex = _examples(None)
    pairs = ex.map(lambda x: (x * 2, x[:, :1]), tmp_path / "pairs")
    assert len(pairs) == 15 and not pairs.single
    (a, b), y = next(iter(pairs.dataset(batch_size=15)))
    assert a.shape == (15, 4) and b.shape == (15, 1)
    assert np.array_equal(a.numpy()[:, 0], 2 * b.numpy()[:, 0])
    x, labels = pairs.arrays()
    assert isinstance(x, tuple) and np.array_equal(labels, np.arange(15) % 3)


def test_a_part_whose_inputs_and_labels_disagree_is_refused():
    ex = Examples()
    with pytest.raises(ValueError, match=r"\[3\] rows but 2 labels"):
        ex.add(np.zeros((3, 2)), [0, 1])
    ex.add(np.zeros((0, 2)), [])                                       # empty: skipped
    assert ex.n_parts == 0
    with pytest.raises(ValueError, match="no examples"):
        ex.dataset(batch_size=2)


def test_word2vec_on_the_streamed_corpus_is_word2vec_on_the_list():
    from marketsearch.config import Word2VecConfig
    from marketsearch.models.text import train_word2vec
    from marketsearch.text import tokenize

    texts = [f"red bike {i} with bell and {w} wheels" for i, w in enumerate(["big", "small"] * 20)]
    parts = TextParts(lambda: [(texts[:15], np.zeros(15)), (texts[15:], np.ones(25))])
    tokens = parts.tokens()
    assert list(tokens) == list(tokens) == [tokenize(t) for t in texts]   # restartable
    cfg = Word2VecConfig(vector_size=8, min_count=1, epochs=3)
    streamed = train_word2vec(tokens, cfg, seed=0)
    held = train_word2vec([tokenize(t) for t in texts], cfg, seed=0)
    assert streamed.index_to_key == held.index_to_key
    assert np.allclose(streamed.vectors, held.vectors)
    assert len(parts) == 40 and np.array_equal(parts.labels(), np.r_[np.zeros(15), np.ones(25)])



def test_a_corpus_within_hold_max_is_tokenized_once_and_held():
    from marketsearch.text import tokenize

    texts = ["red bike", "", "blue sofa for sale", "oak table"]
    reads = []

    def read():
        reads.append(1)
        return [(texts[:2], np.zeros(2)), (texts[2:], np.ones(2))]

    parts = TextParts(read)
    held = parts.tokens(hold_max=4)
    assert isinstance(held, list) and len(reads) == 1
    assert held == [tokenize(t) for t in texts if tokenize(t)]   # the empty text is left out
    streamed = parts.tokens(hold_max=3)                          # 4 texts: more than it holds
    assert not isinstance(streamed, list)
    assert list(streamed) == list(streamed) == held


def test_a_sample_reads_only_its_rows_from_each_part_and_is_seeded(tmp_path):
    ex = Examples(tmp_path)
    ex.add((np.arange(10.0)[:, None], np.arange(10) * 10), np.arange(10))
    ex.add((np.arange(10.0, 25.0)[:, None], np.arange(10, 25) * 10), np.arange(10, 25))
    (x, x10), y = ex.sample(6, seed=1)
    assert len(y) == 6 and len(set(y)) == 6 and np.array_equal(x[:, 0], y)
    assert np.array_equal(x10, y * 10)                       # the inputs stay paired
    assert np.array_equal(np.sort(y), y)
    assert np.array_equal(ex.sample(6, seed=1)[1], y)        # seeded
    assert not np.array_equal(ex.sample(6, seed=2)[1], y)
    everything = ex.sample(25, seed=1)
    assert np.array_equal(everything[1], np.arange(25))      # no more than n: all, in order

def _clean_shard(ids, cat, split):
    products = pd.DataFrame({"id": ids, "category": cat, "split": split, "text": ids,
                             "price": 1.0, "lat": 51.0, "lon": 0.0})
    images = pd.DataFrame({"id": [f"{i}-p" for i in ids], "product_id": ids,
                           "row": range(len(ids)), "category": cat, "split": split})
    pixels = np.arange(len(ids), dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)
    return CleanData(products, images, pixels, summary={"n_products": len(ids), "image_size": 2})


def test_the_catalogue_reads_shards_lazily_with_the_plans_splits(tmp_path):
    a = _clean_shard(["a1", "a2"], ["x", "y"], ["train", "train"])
    b = _clean_shard(["b1", "b2", "b3"], ["x", "x", "y"], ["train", "train", "train"])
    for name, part in (("a", a), ("b", b)):
        part.save(tmp_path / name)
    shards = [CleanShard.load(tmp_path / n) for n in ("a", "b")]
    plan = CleanPlan(pd.DataFrame({"id": ["a1", "a2", "b1", "b2", "b3"],
                                   "split": ["train", "test", "val", "train", "test"],
                                   "category": ["x", "y", "x", "x", "y"]}),
                     summary={"labels": ["x", "y"], "image_size": 2})
    catalogue = CleanCatalogue.of(shards, plan)
    parts = list(catalogue.parts())
    assert isinstance(parts[0].pixels, np.memmap)
    assert parts[1].products["split"].tolist() == ["val", "train", "test"]       # the plan's
    assert parts[1].images["split"].tolist() == ["val", "train", "test"]
    test = catalogue.gathered("test")
    assert test.products["id"].tolist() == ["a2", "b3"]                        # id order
    assert [int(test.pixels[r][0, 0, 0]) for r in test.images["row"]] == [1, 2]  # own pixels
    texts = [p["text"].tolist() for p in catalogue.listing_parts("train", ["text"])]
    assert texts == [["a1"], ["b2"]]
    assert catalogue.gathered(ids={"b1"}).products["id"].tolist() == ["b1"]
    # shards of another run than the plan's: refused, naming the shard and a listing
    stale = CleanPlan(plan.listings[plan.listings["id"] != "b3"], summary=plan.summary)
    with pytest.raises(ValueError, match=r"shard b has listings the plan does not know .*b3"):
        list(CleanCatalogue.of(shards, stale).parts())


def test_a_lazy_gather_reads_the_same_photos_only_where_indexed(tmp_path):
    rng = np.random.default_rng(0)
    shards = []
    for name, ids in (("a", ["a1", "a2", "a3"]), ("b", ["b1", "b2"])):
        part = _clean_shard(ids, ["x"] * len(ids), ["train"] * len(ids))
        part.images = pd.concat([part.images, part.images.assign(
            id=part.images["id"] + "-2", row=part.images["row"] + len(ids))], ignore_index=True)
        part.pixels = rng.integers(0, 256, (2 * len(ids), 2, 2, 3), dtype=np.uint8)
        part.save(tmp_path / name)
        shards.append(CleanShard.load(tmp_path / name))
    catalogue = CleanCatalogue.of(shards)
    sample = {"a1", "a3", "b2"}
    eager, lazy = catalogue.gathered(ids=sample), catalogue.gathered(ids=sample, lazy=True)
    assert isinstance(lazy.pixels, GatheredPixels) and not isinstance(eager.pixels, GatheredPixels)
    assert lazy.products.equals(eager.products) and lazy.images.equals(eager.images)
    assert lazy.pixels.shape == eager.pixels.shape == (6, 2, 2, 3) and len(lazy.pixels) == 6
    for key in (slice(None), 4, np.array([5, 0, 3]), np.array([], dtype=int), slice(1, 5, 2)):
        assert np.array_equal(lazy.pixels[key], eager.pixels[key]), key
    assert np.array_equal(np.asarray(lazy.pixels), eager.pixels)
    # each photo is its own listing's: a3's second photo is row 5 of shard a
    row = int(lazy.images.loc[lazy.images["id"] == "a3-p-2", "row"].iloc[0])
    assert np.array_equal(lazy.pixels[row], np.load(tmp_path / "a" / "images_uint8.npy")[5])


def test_one_clean_data_is_a_catalogue_of_one_shard_with_its_own_splits():
    data = _clean_shard(["a1", "a2", "a3"], ["x", "y", "x"], ["train", "val", "test"])
    catalogue = CleanCatalogue.of(data)
    assert catalogue.labels == ["x", "y"] and catalogue.image_size == 2 and len(catalogue) == 3
    assert catalogue.gathered("val").products["id"].tolist() == ["a2"]


def test_fit_streams_a_set_larger_than_its_shuffle_buffer_and_learns(tmp_path, monkeypatch):
    """More examples than the buffer: fit takes the tf.data path (parts on disk, a buffer of 16)
    and still learns a separable problem; within the buffer it takes them as arrays."""
    import keras

    from marketsearch.models.training import fit

    rng = np.random.default_rng(0)
    ex = Examples(tmp_path / "parts")
    for _ in range(4):
        x = rng.normal(size=(60, 2)).astype(np.float32)
        ex.add(x, (x[:, 0] > 0).astype(np.int32))
    calls = []
    real = Examples.dataset
    monkeypatch.setattr(Examples, "dataset",
                        lambda self, *a, **k: calls.append(len(self)) or real(self, *a, **k))

    def model():
        inputs = keras.Input((2,))
        return keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(inputs))

    hist = fit(model(), ex, None, ex, None, epochs=8, batch_size=16, learning_rate=0.1,
               weight_decay=0.0, warmup_epochs=0, patience=8, seed=0, verbose=0,
               monitor="val_accuracy", shuffle_buffer=16)
    assert calls == [240, 240]                        # train and val both streamed
    assert hist["epochs_run"] == 8 and max(hist["val_accuracy"]) > 0.9
    calls.clear()
    fit(model(), ex, None, ex, None, epochs=1, batch_size=16, learning_rate=0.1,
        weight_decay=0.0, warmup_epochs=0, patience=1, seed=0, verbose=0, shuffle_buffer=1000)
    assert calls == []                                # within the buffer: arrays
