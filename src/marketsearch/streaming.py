"""Training examples that never need to be in memory together: ``Examples`` holds them in
parts (one per clean shard), each part's arrays on disk (``.npy``, read memory-mapped) or,
when small, in memory, and ``dataset`` streams them through ``tf.data``: the parts
interleaved, a shuffle buffer of ``shuffle_buffer`` examples, batches prefetched. Memory is
bounded by the buffer and one chunk per interleaved part, not by the catalogue.

A part's ``x`` is one array or a tuple of arrays (a model's inputs, first axis the example);
``y`` the int labels. ``map`` turns each part's ``x`` into something else (photos into
backbone features, texts into embeddings) part by part.
"""
from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

CHUNK = 512          # rows a part hands tf.data at a time


class Examples:
    """Labelled examples in parts (see the module docstring). ``spill_dir``: where parts are
    written (None: kept in memory, for small sets and tests)."""

    def __init__(self, spill_dir: str | Path | None = None):
        self.spill_dir = Path(spill_dir) if spill_dir is not None else None
        self._parts: list[tuple[tuple, object]] = []   # (x arrays or paths, y array or path)
        self._sizes: list[int] = []
        self.single = True                            # x is one array (not a tuple)

    @classmethod
    def of(cls, x, y) -> "Examples":
        """One in-memory part (arrays a caller already holds)."""
        out = cls()
        out.add(x, y)
        return out

    def add(self, x, y) -> None:
        """Append a part; an empty one is skipped."""
        xs = tuple(x) if isinstance(x, (tuple, list)) else (x,)
        y = np.asarray(y, np.int32)
        if any(len(a) != len(y) for a in xs):
            raise ValueError(f"a part's inputs have {[len(a) for a in xs]} rows but {len(y)} labels")
        if not len(y):
            return
        if self._parts and len(xs) != len(self._parts[0][0]):
            raise ValueError(f"a part with {len(xs)} inputs added to parts of {len(self._parts[0][0])}")
        self.single = not isinstance(x, (tuple, list))
        if self.spill_dir is not None:
            self.spill_dir.mkdir(parents=True, exist_ok=True)
            stem = self.spill_dir / f"part-{len(self._parts):05d}-{uuid.uuid4().hex[:6]}"
            paths = tuple(Path(f"{stem}-x{i}.npy") for i in range(len(xs)))
            for path, a in zip(paths, xs):
                np.save(path, np.asarray(a))
            np.save(f"{stem}-y.npy", y)
            self._parts.append((paths, Path(f"{stem}-y.npy")))
        else:
            self._parts.append((tuple(np.asarray(a) for a in xs), y))
        self._sizes.append(len(y))

    def __len__(self) -> int:
        return int(sum(self._sizes))

    @property
    def n_parts(self) -> int:
        return len(self._parts)

    def part(self, i: int) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
        """Part ``i``'s inputs (a tuple) and labels; arrays on disk are memory-mapped."""
        xs, y = self._parts[i]
        load = lambda a: np.load(a, mmap_mode="r") if isinstance(a, Path) else a  # noqa: E731
        return tuple(load(a) for a in xs), load(y)

    def parts(self) -> Iterator[tuple[tuple[np.ndarray, ...], np.ndarray]]:
        for i in range(self.n_parts):
            yield self.part(i)

    def labels(self) -> np.ndarray:
        """Every label, in part order (ints are small: a catalogue's worth fits)."""
        return np.concatenate([np.asarray(y) for _, y in self.parts()]) if self._parts \
            else np.zeros(0, np.int32)

    def arrays(self):
        """(x, y) concatenated in memory: for sets known to be small (validation samples,
        tests)."""
        if not self._parts:
            raise ValueError("no examples")
        xs = [np.concatenate([np.asarray(p[k]) for p, _ in self.parts()])
              for k in range(len(self._parts[0][0]))]
        return (xs[0] if self.single else tuple(xs)), self.labels()

    def sample(self, n: int | None, seed: int = 0):
        """(x, y) of a seeded sample of at most ``n`` examples, in memory, read part by part
        (each part's chosen rows only); every example, in order, when there are no more than
        ``n`` (None: no limit)."""
        if n is None or len(self) <= n:
            return self.arrays()
        keep = np.sort(np.random.default_rng(seed).choice(len(self), n, replace=False))
        offsets = np.cumsum([0, *self._sizes])
        xs_parts, ys = [], []
        for i, (xs, y) in enumerate(self.parts()):
            rows = keep[(keep >= offsets[i]) & (keep < offsets[i + 1])] - offsets[i]
            if len(rows):
                xs_parts.append([np.asarray(a[rows]) for a in xs])
                ys.append(np.asarray(y[rows]))
        xs = [np.concatenate([p[k] for p in xs_parts]) for k in range(len(xs_parts[0]))]
        return (xs[0] if self.single else tuple(xs)), np.concatenate(ys)

    def map(self, fn: Callable[..., object], spill_dir: str | Path | None = None) -> "Examples":
        """A new Examples whose part ``i`` has inputs ``fn(*part_i_inputs)`` and the same
        labels, computed part by part."""
        out = Examples(spill_dir)
        for xs, y in self.parts():
            out.add(fn(*xs), np.asarray(y))
        return out

    def signature(self):
        import tensorflow as tf

        xs, _ = self.part(0)
        spec = tuple(tf.TensorSpec((None, *a.shape[1:]), tf.as_dtype(a.dtype)) for a in xs)
        return spec, tf.TensorSpec((None,), tf.int32)

    def dataset(self, batch_size: int, shuffle_buffer: int = 0, seed: int = 0,
                cycle_length: int = 4):
        """A ``tf.data.Dataset`` of (x, y) batches over every part: parts in a (seeded,
        per-epoch) shuffled order, ``cycle_length`` of them interleaved chunk by chunk, examples
        shuffled in a buffer of ``shuffle_buffer`` (0: in order, for evaluation), batched,
        prefetched. Each iteration (epoch) reads the parts again."""
        import tensorflow as tf

        if not self._parts:
            raise ValueError("no examples to stream")
        spec = self.signature()

        def chunks(i):
            xs, y = self.part(int(i))
            for start in range(0, len(y), CHUNK):
                yield (tuple(np.asarray(a[start:start + CHUNK]) for a in xs),
                       np.asarray(y[start:start + CHUNK]))

        order = tf.data.Dataset.range(self.n_parts)
        if shuffle_buffer:
            order = order.shuffle(self.n_parts, seed=seed, reshuffle_each_iteration=True)
        ds = order.interleave(
            lambda i: tf.data.Dataset.from_generator(chunks, output_signature=spec, args=(i,)),
            cycle_length=max(1, min(cycle_length, self.n_parts)), block_length=1).unbatch()
        if shuffle_buffer:
            ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        # the batch count is known: Keras then runs whole epochs instead of guessing the end
        ds = ds.batch(batch_size).apply(
            tf.data.experimental.assert_cardinality(-(-len(self) // batch_size)))
        if self.single:
            ds = ds.map(lambda x, y: (x[0], y))
        return ds.prefetch(tf.data.AUTOTUNE)


class TextParts:
    """Listing texts and their labels in parts (one per clean shard), read again by
    ``read()`` on every pass: Word2Vec's epochs stream the corpus (``tokens``) instead of
    holding it, and ``examples`` encodes it part by part for tf.data."""

    def __init__(self, read: Callable[[], Iterable[tuple[Sequence[str], np.ndarray]]]):
        self._read = read

    @classmethod
    def of(cls, texts: Sequence[str], y) -> "TextParts":
        """One in-memory part."""
        texts, y = list(texts), np.asarray(y, np.int32)
        return cls(lambda: [(texts, y)] if len(texts) else [])

    def __iter__(self) -> Iterator[tuple[Sequence[str], np.ndarray]]:
        return iter(self._read())

    def __len__(self) -> int:
        return sum(len(y) for _, y in self)

    def texts(self) -> list[str]:
        return [t for texts, _ in self for t in texts]

    def labels(self) -> np.ndarray:
        ys = [np.asarray(y, np.int32) for _, y in self]
        return np.concatenate(ys) if ys else np.zeros(0, np.int32)

    def tokens(self, hold_max: int | None = None) -> "list[list[str]] | _Tokens":
        """The non-empty token lists (what gensim takes): a restartable iterable that reads
        and tokenizes the parts again on every pass, or, when the corpus has at most
        ``hold_max`` texts, a list made in one pass (Word2Vec reads its corpus once per
        epoch and per tower: holding a small corpus saves re-reading and re-tokenizing it
        some 50 times; like ``fit``, memory stays bounded by that number)."""
        stream = _Tokens(self)
        if not hold_max:
            return stream
        held, n = [], 0
        for texts, _ in self:
            n += len(texts)
            if n > hold_max:
                return stream
            held.extend(t for t in map(_tokenize, texts) if t)
        return held

    def examples(self, encode: Callable[[Sequence[str]], np.ndarray],
                 spill_dir: str | Path | None = None) -> Examples:
        out = Examples(spill_dir)
        for texts, y in self:
            out.add(encode(texts), y)
        return out


class _Tokens:
    def __init__(self, parts: TextParts):
        self.parts = parts

    def __iter__(self):
        for texts, _ in self.parts:
            for tokens in map(_tokenize, texts):
                if tokens:
                    yield tokens


def _tokenize(text: str) -> list[str]:
    from marketsearch.text import tokenize
    return tokenize(text)
