"""Price suggestion: a listing's likely price, with an interval around it.

Library code only; the pipeline and the server wire it in.

- ``price_metrics``: how far suggested prices are from listed ones (£ and relative) and how
  often the interval holds the listed price.
- Two baselines, each ``fit`` on training listings, ``predict`` -> (estimate, low, high) in £,
  with JSON state (``to_dict``/``from_dict``, ``save``/``load``): ``CategoryMedian`` (the
  category's median and percentiles) and ``TfidfRidge`` (ridge regression of log-price on the
  TF-IDF of the listing text).
- The model: ``build_price_head`` (a float feature vector -> log-price quantiles that cannot
  cross), ``fit_price_head`` (pinball loss, the house AdamW recipe, early stopping, then
  conformal calibration of the interval on the validation rows, ``calibrate_price_head``),
  ``predict_price``; ``location_features``, one function for training and serving.
- ``price_plot``: suggested against listed price, one panel per model.

Prices are in GBP and must be positive: the models work on log(price). A saved head
(``head.save("price.keras")``) holds its input scaling and its calibrated interval; import
this module before ``keras.models.load_model`` (it registers the head's layers and loss).
"""
from __future__ import annotations

import functools
import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from marketsearch.config import PriceConfig
from marketsearch.models.training import NO_DECAY, lr_schedule, set_seed
from marketsearch.plots.common import _new_figure
from marketsearch.plots.uk_map import UK_LAT, UK_LON
from marketsearch.text import tokenize

import keras  # noqa: E402  (after marketsearch.models.training has quietened TensorFlow)
from keras import layers, ops  # noqa: E402

log = logging.getLogger(__name__)

Estimates = tuple[np.ndarray, np.ndarray, np.ndarray]  # (estimate, low, high) in £

# The head's output layer: the log-price quantiles, in increasing order.
QUANTILES_LAYER = "log_price_quantiles"
# Positions listed in an error message about bad rows; the rest are counted.
SHOWN_POSITIONS = 10


# --------------------------------------------------------------------------- checks
def _positions(bad: np.ndarray) -> str:
    where = np.flatnonzero(bad)
    shown = ", ".join(str(int(i)) for i in where[:SHOWN_POSITIONS])
    more = len(where) - SHOWN_POSITIONS
    return shown + (f" and {more} more" if more > 0 else "")


def _vector(values, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must hold one value per listing, not shape {arr.shape}")
    return arr


def _prices(values, name: str) -> np.ndarray:
    """``values`` as a float64 vector of prices; any that is not a positive finite number is a
    ValueError naming how many and where."""
    arr = _vector(values, name)
    bad = ~(np.isfinite(arr) & (arr > 0))
    if bad.any():
        raise ValueError(f"{name}: {int(bad.sum())} of {len(arr)} prices are not positive "
                         f"finite numbers, at positions {_positions(bad)}")
    return arr


def _same_length(reference: str, n: int, **arrays) -> None:
    for name, arr in arrays.items():
        if len(arr) != n:
            raise ValueError(f"{name} has {len(arr)} rows but {reference} has {n}")


# --------------------------------------------------------------------------- metrics
def price_metrics(true, estimate, low=None, high=None) -> dict[str, Any]:
    """How good suggested prices are against the listed ones (all in £).

    Returns ``mae`` and ``rmse`` (£), ``mdape`` (the median of |estimate - true| / true),
    ``within_25`` (the share with |estimate - true| / true <= 0.25), ``coverage_80`` (the
    share of listed prices inside [low, high]; None without an interval) and ``n``.
    A listed price that is not a positive finite number is a ValueError naming how many and
    at which positions (so are such estimates and bounds).
    """
    true = _prices(true, "true")
    if not len(true):
        raise ValueError("true holds no prices: nothing to score")
    estimate = _prices(estimate, "estimate")
    _same_length("true", len(true), estimate=estimate)
    if (low is None) != (high is None):
        raise ValueError("give both low and high (the interval), or neither")
    error = estimate - true
    relative = np.abs(error) / true
    out: dict[str, Any] = {
        "n": int(len(true)),
        "mae": float(np.mean(np.abs(error))),
        "rmse": float(np.sqrt(np.mean(error ** 2))),
        "mdape": float(np.median(relative)),
        "within_25": float(np.mean(relative <= 0.25)),
        "coverage_80": None,
    }
    if low is not None:
        low, high = _prices(low, "low"), _prices(high, "high")
        _same_length("true", len(true), low=low, high=high)
        out["coverage_80"] = float(np.mean((true >= low) & (true <= high)))
    return out


# --------------------------------------------------------------------------- baselines
class _Baseline:
    """What the baselines share: their state as JSON (``to_dict``/``from_dict``, with the
    baseline's ``KIND``), saved to and loaded from a file."""

    KIND = ""
    STATE: tuple[str, ...] = ()  # the keys of ``to_dict`` besides "kind"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.KIND, **{key: getattr(self, key) for key in self.STATE}}

    @classmethod
    def _checked(cls, state: Mapping[str, Any]) -> Mapping[str, Any]:
        if state.get("kind") != cls.KIND:
            raise ValueError(f"state of kind {state.get('kind')!r} is not a {cls.KIND} baseline")
        missing = [key for key in cls.STATE if key not in state]
        if missing:
            raise ValueError(f"{cls.KIND} state lacks {missing}")
        return state

    def _fitted(self, attribute: str) -> None:
        if getattr(self, attribute) is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted: call fit first")

    def save(self, path: str | Path) -> Path:
        """Write ``to_dict()`` as JSON to ``path``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict()))
        return path

    @classmethod
    def load(cls, path: str | Path):
        """The baseline a ``save`` wrote."""
        return cls.from_dict(json.loads(Path(path).read_text()))


def _interval(levels: Sequence[float]) -> list[float]:
    low, high = (float(v) for v in levels)
    if not 0 < low < 0.5 < high < 1:
        raise ValueError(f"interval {list(levels)} must be two levels with 0 < low < 0.5 < high < 1")
    return [low, high]


def _strings(values) -> np.ndarray:
    return np.array(["" if v is None else str(v) for v in values], dtype=object)


class CategoryMedian(_Baseline):
    """Baseline: the median price of the training listings in the listing's category, and as
    interval that category's ``interval`` percentiles (10th and 90th). A category with fewer
    than ``min_listings`` training listings, or none, gets those of all training listings."""

    KIND = "category_median"
    STATE = ("interval", "min_listings", "overall", "by_category")

    def __init__(self, interval: Sequence[float] = (0.1, 0.9), min_listings: int = 5):
        self.interval = _interval(interval)
        self.min_listings = int(min_listings)
        self.overall: list[float] | None = None  # [low, median, high] in £
        self.by_category: dict[str, list[float]] = {}

    def fit(self, categories: Sequence[str], prices) -> "CategoryMedian":
        prices = _prices(prices, "prices")
        categories = _strings(categories)
        _same_length("prices", len(prices), categories=categories)
        levels = [self.interval[0], 0.5, self.interval[1]]
        self.overall = np.quantile(prices, levels).tolist()
        names, counts = np.unique(categories, return_counts=True)
        self.by_category = {str(name): np.quantile(prices[categories == name], levels).tolist()
                            for name, count in zip(names, counts) if count >= self.min_listings}
        log.info("category median: %d listings, %d of %d categories with their own prices",
                 len(prices), len(self.by_category), len(names))
        return self

    def predict(self, categories: Sequence[str]) -> Estimates:
        """(estimate, low, high) in £ for each listing's category."""
        self._fitted("overall")
        table = np.array([self.by_category.get(c, self.overall)
                          for c in _strings(categories)],
                         dtype=np.float64).reshape(-1, 3)
        return table[:, 1], table[:, 0], table[:, 2]

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> "CategoryMedian":
        state = cls._checked(state)
        model = cls(state["interval"], state["min_listings"])
        model.overall = [float(v) for v in state["overall"]]
        model.by_category = {str(k): [float(v) for v in q] for k, q in state["by_category"].items()}
        return model


def _lower_start(n: int, text: str) -> str:
    return text[:n].lower()


def word_tfidf(min_df: int, vocabulary: Mapping[str, int] | None = None,
               idf: Sequence[float] | None = None, dtype=np.float64,
               max_terms: int | None = None):
    """The TF-IDF of a listing text's word 1- and 2-grams (``marketsearch.text.tokenize``),
    sublinear term frequency, terms in at least ``min_df`` listings (and of those the
    ``max_terms`` most frequent, when given): ``TfidfRidge``'s words and
    ``marketsearch.comparables``' embedder. With ``vocabulary`` and ``idf`` (a fitted one's
    state) it is ready to transform without fitting."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizer = TfidfVectorizer(tokenizer=tokenize, lowercase=False, token_pattern=None,
                                 ngram_range=(1, 2), sublinear_tf=True, min_df=min_df,
                                 max_features=max_terms, vocabulary=vocabulary, dtype=dtype)
    if idf is not None:
        vectorizer.idf_ = np.asarray(idf, dtype=np.float64)
    return vectorizer


class TfidfRidge(_Baseline):
    """Baseline: ridge regression of log(price) on the TF-IDF of the listing text (what
    ``marketsearch.text.listing_text`` makes of a listing): word 1- and 2-grams of
    ``marketsearch.text.tokenize``, sublinear term frequency, terms in at least ``min_df``
    listings.

    The interval is the estimate times exp of the ``interval`` percentiles of the log-price
    residuals, measured on a held-out ``holdout`` share of the training listings by a model
    fitted on the rest; the model is then refitted on all of them. ``holdout=0`` takes the
    training residuals instead (an interval too narrow for new listings).

    ``char_terms`` > 0 adds the TF-IDF of character 2- to 5-grams within the words of the
    text's first ``CHAR_TEXT`` characters (lower-cased; in at least ``CHAR_MIN_DF`` listings,
    the ``char_terms`` most frequent) beside the words: it reads model numbers, sizes and
    spellings the word tokens split or miss. (On the whole text they cost a served request
    ~4 ms; the first 256 characters, mostly the title, ~1 ms and did as well on the shared
    data.) The price head's stacked text input is such a ridge; the baseline is words only.

    The state is JSON (the vocabulary, the idf weights, the ridge coefficients), not a pickle:
    ``save``/``load`` write and read it; ``from_dict`` rebuilds the scikit-learn vectorizer.
    """

    KIND = "tfidf_ridge"
    STATE = ("interval", "alpha", "min_df", "holdout", "seed", "vocabulary", "idf", "coef",
             "intercept", "residual_quantiles")
    CHAR_MIN_DF = 3
    CHAR_TEXT = 256

    def __init__(self, interval: Sequence[float] = (0.1, 0.9), alpha: float = 1.0,
                 min_df: int = 2, holdout: float = 0.2, seed: int = 0, char_terms: int = 0):
        if not 0 <= holdout < 1:
            raise ValueError(f"holdout {holdout} must be in [0, 1)")
        self.interval = _interval(interval)
        self.alpha, self.min_df = float(alpha), int(min_df)
        self.holdout, self.seed = float(holdout), int(seed)
        self.char_terms = int(char_terms)
        self.vocabulary: dict[str, int] | None = None
        self.idf: list[float] = []
        self.char_vocabulary: dict[str, int] = {}
        self.char_idf: list[float] = []
        self.coef: list[float] = []
        self.intercept = 0.0
        self.residual_quantiles = [0.0, 0.0]  # log-price offsets of low and high
        self._vectorizer = None
        self._coef = None      # ``coef`` as an array, made once (a served request is one text)

    def _new_vectorizer(self, vocabulary: Mapping[str, int] | None = None,
                        char_vocabulary: Mapping[str, int] | None = None):
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.pipeline import FeatureUnion

        words = word_tfidf(self.min_df, vocabulary)
        if not self.char_terms:
            return words
        chars = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True,
                                preprocessor=functools.partial(_lower_start, self.CHAR_TEXT),
                                min_df=self.CHAR_MIN_DF, max_features=self.char_terms,
                                vocabulary=char_vocabulary)
        return FeatureUnion([("words", words), ("chars", chars)])

    def _parts(self, vectorizer) -> list:
        return [vectorizer] if not self.char_terms else [v for _, v in vectorizer.transformer_list]

    def _fit_log(self, texts: np.ndarray, log_prices: np.ndarray):
        from sklearn.linear_model import Ridge

        vectorizer = self._new_vectorizer()
        ridge = Ridge(alpha=self.alpha).fit(vectorizer.fit_transform(texts), log_prices)
        return vectorizer, ridge

    def to_dict(self) -> dict[str, Any]:
        state = super().to_dict()
        if self.char_terms:
            state.update(char_terms=self.char_terms, char_vocabulary=self.char_vocabulary,
                         char_idf=self.char_idf)
        return state

    def fit(self, texts: Sequence[str], prices) -> "TfidfRidge":
        log_prices = np.log(_prices(prices, "prices"))
        texts = _strings(texts)
        _same_length("prices", len(log_prices), texts=texts)
        n = len(log_prices)
        n_held = int(round(self.holdout * n))
        if self.holdout and not 0 < n_held < n:
            raise ValueError(f"holdout {self.holdout} of {n} listings leaves no listing to "
                             "measure residuals on, or none to fit")
        if n_held:
            order = np.random.default_rng(self.seed).permutation(n)
            held, rest = order[:n_held], order[n_held:]
            vectorizer, ridge = self._fit_log(texts[rest], log_prices[rest])
            residuals = log_prices[held] - ridge.predict(vectorizer.transform(texts[held]))
        vectorizer, ridge = self._fit_log(texts, log_prices)
        if not n_held:
            residuals = log_prices - ridge.predict(vectorizer.transform(texts))
        low, high = np.quantile(residuals, self.interval)
        # The estimate stays inside its interval even where the residuals all lean one way.
        self.residual_quantiles = [min(float(low), 0.0), max(float(high), 0.0)]
        learnt = [({term: int(i) for term, i in v.vocabulary_.items()}, v.idf_.tolist())
                  for v in self._parts(vectorizer)]
        (self.vocabulary, self.idf), *chars = learnt
        if chars:
            self.char_vocabulary, self.char_idf = chars[0]
        self.coef = ridge.coef_.tolist()
        self.intercept = float(ridge.intercept_)
        self._vectorizer, self._coef = vectorizer, None
        log.info("tf-idf ridge: %d listings, %d terms, residual interval [%.3f, %.3f] (%s)", n,
                 len(self.vocabulary) + len(self.char_vocabulary), *self.residual_quantiles,
                 f"{n_held} held out" if n_held else "training residuals")
        return self

    def predict(self, texts: Sequence[str]) -> Estimates:
        """(estimate, low, high) in £ for each listing text."""
        self._fitted("vocabulary")
        if self._vectorizer is None:
            self._vectorizer = self._new_vectorizer(self.vocabulary, self.char_vocabulary or None)
            for part, idf in zip(self._parts(self._vectorizer), (self.idf, self.char_idf)):
                part.idf_ = np.asarray(idf, dtype=np.float64)
        features = self._vectorizer.transform(_strings(texts))
        if self._coef is None:
            self._coef = np.asarray(self.coef, dtype=np.float64)
        centre = features @ self._coef + self.intercept
        low, high = self.residual_quantiles
        return np.exp(centre), np.exp(centre + low), np.exp(centre + high)

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> "TfidfRidge":
        state = cls._checked(state)
        model = cls(state["interval"], state["alpha"], state["min_df"], state["holdout"],
                    state["seed"], state.get("char_terms", 0))
        model.vocabulary = {str(k): int(v) for k, v in state["vocabulary"].items()}
        model.idf = [float(v) for v in state["idf"]]
        if model.char_terms:
            model.char_vocabulary = {str(k): int(v) for k, v in state["char_vocabulary"].items()}
            model.char_idf = [float(v) for v in state["char_idf"]]
        model.coef = [float(v) for v in state["coef"]]
        model.intercept = float(state["intercept"])
        model.residual_quantiles = [float(v) for v in state["residual_quantiles"]]
        return model


# --------------------------------------------------------------------------- features
# Latitude and longitude are measured from the middle of the UK frame that the map draws
# (marketsearch.plots.uk_map), in half its height and width: about -1..1 across the UK.
LAT_MIDDLE, LAT_HALF = (UK_LAT[0] + UK_LAT[1]) / 2, (UK_LAT[1] - UK_LAT[0]) / 2
LON_MIDDLE, LON_HALF = (UK_LON[0] + UK_LON[1]) / 2, (UK_LON[1] - UK_LON[0]) / 2


def location_features(lat, lon) -> np.ndarray:
    """Latitudes and longitudes in degrees (NaN or None where a listing's location is unknown)
    -> float32 [N, 3]: (latitude, longitude) as offsets from the middle of the UK in half its
    extent (about -1..1 across it), then 1 where the location is known. An unknown location
    (either coordinate missing) is (0, 0, 0). The same function at training and serving time.
    """
    lat = np.asarray(lat, dtype=np.float64).reshape(-1)
    lon = np.asarray(lon, dtype=np.float64).reshape(-1)
    _same_length("lat", len(lat), lon=lon)
    known = np.isfinite(lat) & np.isfinite(lon)
    out = np.zeros((len(lat), 3), dtype=np.float32)
    out[known, 0] = (lat[known] - LAT_MIDDLE) / LAT_HALF
    out[known, 1] = (lon[known] - LON_MIDDLE) / LON_HALF
    out[:, 2] = known
    return out


# --------------------------------------------------------------------------- the model
@keras.saving.register_keras_serializable(package="marketsearch")
class PinballLoss(keras.losses.Loss):
    """The pinball (quantile) loss, averaged over ``quantiles``: y_true [N] or [N, 1]
    log-prices, y_pred [N, K] the predicted quantiles at those levels, in the same order."""

    def __init__(self, quantiles: Sequence[float] = (0.1, 0.5, 0.9), name: str = "pinball",
                 **kwargs):
        super().__init__(name=name, **kwargs)
        self.quantiles = [float(q) for q in quantiles]

    def call(self, y_true, y_pred):
        y_true = ops.reshape(ops.cast(y_true, y_pred.dtype), (-1, 1))
        levels = ops.convert_to_tensor(self.quantiles, dtype=y_pred.dtype)
        error = y_true - y_pred
        return ops.mean(ops.maximum(levels * error, (levels - 1.0) * error), axis=-1)

    def get_config(self):
        return {**super().get_config(), "quantiles": self.quantiles}


@keras.saving.register_keras_serializable(package="marketsearch")
class Standardize(layers.Layer):
    """(x - mean) / scale per feature; ``adapt`` sets mean and scale (non-trainable weights,
    saved with the model) from training rows. A feature constant in those rows keeps scale 1,
    so a flag that was always 1 in training cannot blow up where it is 0."""

    def build(self, input_shape):
        dim = int(input_shape[-1])
        self.mean = self.add_weight(name="mean", shape=(dim,), initializer="zeros",
                                    trainable=False)
        self.scale = self.add_weight(name="scale", shape=(dim,), initializer="ones",
                                     trainable=False)

    def call(self, inputs):
        return (inputs - self.mean) / self.scale

    def adapt(self, x: np.ndarray) -> None:
        std = x.std(axis=0)
        self.mean.assign(x.mean(axis=0))
        self.scale.assign(np.where(std > 1e-6, std, 1.0))


class _AroundMedian(layers.Layer):
    """What the quantile output layers share: the index of the median column (``median``),
    the non-trainable ``interval_scale`` that conformal calibration sets
    (``calibrate_price_head``; 1 while training, saved with the model), the shape they keep,
    and ``estimate_shift``: the log of the factor on the median that makes the suggested
    price (``from_log_quantiles``), also set by calibration and saved in the layer's config
    (0 in a head saved before it existed)."""

    def __init__(self, median: int, estimate_shift: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.median = int(median)
        self.estimate_shift = float(estimate_shift)

    def build(self, input_shape):
        self.interval_scale = self.add_weight(name="interval_scale", shape=(),
                                              initializer="ones", trainable=False)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "median": self.median,
                "estimate_shift": self.estimate_shift}


@keras.saving.register_keras_serializable(package="marketsearch")
class OrderedQuantiles(_AroundMedian):
    """[N, K] raw values -> [N, K] quantiles that cannot cross, whatever the raw values:
    column ``median`` is the median; every column below it lies softplus(its raw value) under
    the one above, every column above it softplus(its raw value) over the one below. The gaps
    are multiplied by ``interval_scale`` (``_AroundMedian``).
    """

    def call(self, raw):
        m = self.median
        centre = raw[:, m:m + 1]
        gaps = ops.softplus(raw) * self.interval_scale
        below = ops.flip(ops.cumsum(ops.flip(gaps[:, :m], axis=1), axis=1), axis=1)
        above = ops.cumsum(gaps[:, m + 1:], axis=1)
        return ops.concatenate([centre - below, centre, centre + above], axis=1)


@keras.saving.register_keras_serializable(package="marketsearch")
class WrittenPrice(layers.Layer):
    """(raw [N, K], gate [N, 1], features [N, D]) -> raw with its ``median`` column moved
    towards the log-price the seller wrote: by ``gate`` (0..1, learnt) of the way, on rows
    whose feature ``flag_column`` is 1 (a price is written), from feature ``value_column``
    (its log). The quantiles built on it (``OrderedQuantiles``) move with their median.
    The same layer moves it towards the best comparable's price, its flag that listing's
    cosine (0..1).

    A written price is the listed one about half the time; an MLP on the standardised
    features only approximates "take it when it is believable", which this does exactly."""

    def __init__(self, median: int, value_column: int, flag_column: int, **kwargs):
        super().__init__(**kwargs)
        self.median, self.value_column, self.flag_column = int(median), int(value_column), \
            int(flag_column)

    def call(self, inputs):
        raw, gate, features = inputs
        m = self.median
        value = features[:, self.value_column:self.value_column + 1]
        flag = features[:, self.flag_column:self.flag_column + 1]
        centre = raw[:, m:m + 1]
        moved = centre + gate * flag * (value - centre)
        return ops.concatenate([raw[:, :m], moved, raw[:, m + 1:]], axis=1)

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        return {**super().get_config(), "median": self.median,
                "value_column": self.value_column, "flag_column": self.flag_column}


def build_price_head(input_dim: int, cfg: PriceConfig, seed: int | None = None,
                     written: tuple[int, int] | None = None,
                     comparable: tuple[int, int] | None = None,
                     name: str = "price_head") -> keras.Model:
    """float [N, input_dim] -> ``QUANTILES_LAYER`` [N, len(cfg.quantiles)]: log-price
    quantiles at ``cfg.quantiles``, in increasing order by construction (``OrderedQuantiles``).

    The input (the caller's: fused listing embedding, ``location_features``, modality-present
    flags, ...) is standardised (``Standardize``), then one ReLU layer of ``cfg.hidden`` units
    and dropout. ``written``: the input columns of the written log-price and of its flag; with
    it (and ``cfg.written_gate``) a learnt gate moves the median towards that price
    (``WrittenPrice``). ``comparable``: the columns of the best comparable listing's log-price
    and of its cosine (``marketsearch.comparables``); with it a second gate moves the median
    towards that price, by the cosine times the gate. ``fit_price_head`` trains it from this
    state.
    """
    if input_dim < 1:
        raise ValueError(f"input_dim {input_dim} must be at least 1")
    for what, columns in (("written", written), ("comparable", comparable)):
        if columns is not None and not all(0 <= c < input_dim for c in columns):
            raise ValueError(f"{what} columns {columns} are not inside the {input_dim} inputs")
    features = keras.Input((input_dim,), name="price_features")
    x = Standardize(name="standardize")(features)
    x = layers.Dense(cfg.hidden, activation="relu", name="price_hidden",
                     kernel_initializer=keras.initializers.HeNormal(seed))(x)
    x = layers.Dropout(cfg.dropout, seed=seed, name="price_dropout")(x)
    raw = layers.Dense(len(cfg.quantiles), name="price_raw",
                       kernel_initializer=keras.initializers.GlorotUniform(seed))(x)
    median = cfg.quantiles.index(0.5)
    # (gate, layer, columns): a comparable's price first, then the price the seller wrote,
    # which has the last word
    gates = [(gate, layer, columns) for gate, layer, columns, on in (
        ("price_comparable_gate", "price_comparable", comparable, True),
        ("price_gate", "price_written", written, cfg.written_gate)) if columns is not None and on]
    for i, (gate_name, layer, columns) in enumerate(gates):
        gate = layers.Dense(1, activation="sigmoid", name=gate_name,
                            kernel_initializer=keras.initializers.GlorotUniform(
                                None if seed is None else seed + i))(x)
        raw = WrittenPrice(median, *columns, name=layer)([raw, gate, features])
    quantiles = OrderedQuantiles(median, name=QUANTILES_LAYER)(raw)
    return keras.Model(features, quantiles, name=name)


@keras.saving.register_keras_serializable(package="marketsearch")
class IntervalScale(_AroundMedian):
    """[N, K] log-price quantiles -> the same with each one's distance from column ``median``
    times ``interval_scale`` (a non-trainable weight, 1 until ``calibrate_price_head`` sets
    it): the output layer of ``average_price_heads``, calibrated as ``OrderedQuantiles`` is."""

    def call(self, quantiles):
        centre = quantiles[:, self.median:self.median + 1]
        return centre + (quantiles - centre) * self.interval_scale


def average_price_heads(heads: Sequence[keras.Model]) -> keras.Model:
    """One model whose log-price quantiles are the mean of ``heads``' (trained heads of the
    same inputs and levels, each with a distinct name): averaging quantiles keeps them in
    order, and the mean of heads from different seeds varies less than any one of them.
    Each head's own interval scale is reset to 1; the average's ``QUANTILES_LAYER`` (an
    ``IntervalScale``) is then calibrated like a single head (``calibrate_price_head``)."""
    if not heads:
        raise ValueError("average_price_heads needs at least one head")
    shapes = {(h.input_shape[-1], h.output_shape[-1]) for h in heads}
    if len(shapes) != 1:
        raise ValueError(f"the heads differ in inputs or quantiles: {sorted(shapes)}")
    for head in heads:
        head.get_layer(QUANTILES_LAYER).interval_scale.assign(1.0)
    features = keras.Input((heads[0].input_shape[-1],), name="price_features")
    outputs = [head(features) for head in heads]
    mean = layers.Average(name="price_mean")(outputs) if len(heads) > 1 else outputs[0]
    median = heads[0].get_layer(QUANTILES_LAYER).median
    return keras.Model(features, IntervalScale(median, name=QUANTILES_LAYER)(mean),
                       name="price_heads")


def _head_rows(x, log_prices, split: str) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float32)
    log_prices = _vector(log_prices, f"{split} log-prices").astype(np.float32)
    if x.ndim != 2:
        raise ValueError(f"{split} features must be [N, D], not shape {x.shape}")
    _same_length(f"{split} log-prices", len(log_prices), **{f"{split} features": x})
    for name, bad in ((f"{split} features", ~np.isfinite(x).all(axis=1)),
                      (f"{split} log-prices", ~np.isfinite(log_prices))):
        if bad.any():
            raise ValueError(f"{name}: {int(bad.sum())} of {len(bad)} rows are not finite, "
                             f"at positions {_positions(bad)}")
    return x, log_prices


def _start_at(head: keras.Model, prior: np.ndarray) -> None:
    """Set the output biases so that the untrained head answers ``prior`` (the training
    log-prices' quantiles) for every listing, rather than £1."""
    layer = head.get_layer(QUANTILES_LAYER)
    m = layer.median
    gaps = np.maximum(np.diff(prior), 1e-3)  # gap j: between quantiles j and j + 1
    bias = np.empty(len(prior), dtype=np.float64)
    bias[m] = prior[m]
    bias[:m] = np.log(np.expm1(gaps[:m]))  # inverse softplus
    bias[m + 1:] = np.log(np.expm1(gaps[m:]))
    dense = head.get_layer("price_raw")
    kernel, _ = dense.get_weights()
    dense.set_weights([kernel, bias.astype(np.float32)])


def _log_quantiles(head: keras.Model, x: np.ndarray) -> np.ndarray:
    return head.predict(x, verbose=0, batch_size=1024).astype(np.float64)


def _coverage(log_prices: np.ndarray, quantiles: np.ndarray) -> float:
    return float(np.mean((log_prices >= quantiles[:, 0]) & (log_prices <= quantiles[:, -1])))


def conformal_scale(log_prices: np.ndarray, quantiles: np.ndarray, median: int,
                    target: float) -> float:
    """The factor on the distances from the median to the lowest and highest quantile (log
    space) that makes that interval cover ``target`` of the rows (split conformal, CQR with a
    scale): per row the factor it needs to lie inside, and of those the
    ceil((n + 1) * target)-th smallest, so that the interval covers at least ``target`` of new
    listings in expectation. ``quantiles`` [N, K] holds the median at column ``median``."""
    if not 0 < target < 1:
        raise ValueError(f"interval target {target} must be inside (0, 1)")
    centre = quantiles[:, median]
    width = np.where(log_prices >= centre, quantiles[:, -1] - centre, centre - quantiles[:, 0])
    needed = np.sort(np.abs(log_prices - centre) / np.maximum(width, 1e-12))
    n = len(needed)
    return float(needed[min(math.ceil((n + 1) * target), n) - 1])


def relative_error_shift(mdape: float) -> float:
    """The log-shift of a median that centres the window of relative errors up to ``mdape``
    on it: a price p is within a fraction t of the true price T when T lies in
    [p / (1 + t), p / (1 - t)], which in log space reaches log(1 + t) below log p and
    -log(1 - t) above it, more above than below (twice the price is 100% off, half of it
    50%). Centred on the median m of a price's (roughly symmetric) log distribution, the
    window holds the most of it, at log p = m + log((1 + t)(1 - t)) / 2, so the share of
    suggestions within t of the price (and with it their median relative error) is best
    there. ``mdape`` is capped at 0.95: a head that bad gets a factor of 0.31."""
    if not mdape >= 0:
        raise ValueError(f"a median relative error must be 0 or more, not {mdape}")
    t = min(float(mdape), 0.95)
    return 0.5 * math.log1p(-t * t)


def calibrate_price_head(head: keras.Model, x, log_prices, target: float,
                         relative: bool = True, relative_rows=None) -> dict[str, float]:
    """Calibration on rows the head did not train on (the validation split):

    - the interval (split conformal): sets the head's ``interval_scale`` so that its interval
      [lowest, highest quantile] covers ``target`` of the rows;
    - with ``relative``, the suggested price: sets its ``estimate_shift`` to
      ``relative_error_shift`` of the median's median relative error on the rows (those of
      the boolean mask ``relative_rows``, when given: the requests the suggestion is tuned
      for), so that the suggestion is the median times sqrt(1 - that error²); without it the
      suggestion is the median.

    Returns {"interval_scale", "coverage_before", "coverage" (the rows' coverage at scale 1
    and after), "estimate_factor", "mdape_before", "mdape" (the suggestion's median relative
    error on those rows with the median itself and after)}."""
    x, log_prices = _head_rows(x, log_prices, "calibration")
    if not len(x):
        raise ValueError("calibration needs rows: none given")
    layer = head.get_layer(QUANTILES_LAYER)
    layer.interval_scale.assign(1.0)
    before = _log_quantiles(head, x)
    scale = conformal_scale(log_prices, before, layer.median, target)
    layer.interval_scale.assign(scale)
    after = _log_quantiles(head, x)
    rows = np.ones(len(x), bool) if relative_rows is None else np.asarray(relative_rows, bool)
    _same_length("calibration rows", len(rows), features=x)
    if not rows.any():
        raise ValueError("relative_rows selects none of the calibration rows")
    true = np.exp(log_prices[rows].astype(np.float64))
    layer.estimate_shift = 0.0
    mdape_before = float(np.median(np.abs(np.exp(after[rows, layer.median]) / true - 1)))
    layer.estimate_shift = relative_error_shift(mdape_before) if relative else 0.0
    estimate = from_log_quantiles(head, after[rows])[0]
    out = {"interval_scale": scale, "coverage_before": _coverage(log_prices, before),
           "coverage": _coverage(log_prices, after),
           "estimate_factor": math.exp(layer.estimate_shift), "mdape_before": mdape_before,
           "mdape": float(np.median(np.abs(estimate / true - 1)))}
    log.info("price head calibrated on %d rows: interval scale %.3f, coverage %.3f -> %.3f "
             "(target %.2f); suggestion the median x %.3f, median relative error %.3f -> %.3f",
             len(x), scale, out["coverage_before"], out["coverage"], target,
             out["estimate_factor"], mdape_before, out["mdape"])
    return out


def fit_price_head(head: keras.Model, x_train, logp_train, x_val, logp_val, cfg: PriceConfig,
                   seed: int, verbose: int = 0, relative_rows=None) -> dict[str, Any]:
    """Train a head as ``build_price_head`` made it on (features, log-price) rows, then
    calibrate its interval and its suggestion on the validation rows.

    1. Its ``Standardize`` layer takes the training features' mean and spread, and its output
       biases the training log-prices' quantiles (it starts from the unconditional answer).
    2. Pinball loss at ``cfg.quantiles``, AdamW with ``cfg.weight_decay`` (not on biases and
       norms) and the house warm-up + cosine learning rate (``lr_schedule``), early stopping
       on the validation loss after ``cfg.patience`` epochs, the best epoch's weights kept.
    3. ``calibrate_price_head`` on the validation rows to ``cfg.interval_target``, the
       suggestion moved for relative error with ``cfg.relative_estimate`` (tuned on the
       validation rows of the mask ``relative_rows``, when given).

    Returns the Keras history (lists per metric), ``best_epoch`` (1-based), ``epochs_run``,
    ``seconds`` and the calibration's figures (``interval_scale``, ``coverage``,
    ``estimate_factor``, ...).
    """
    x_train, logp_train = _head_rows(x_train, logp_train, "train")
    x_val, logp_val = _head_rows(x_val, logp_val, "val")
    if not len(x_train) or not len(x_val):
        raise ValueError(f"fit_price_head needs training and validation rows, got "
                         f"{len(x_train)} and {len(x_val)}: the validation rows early-stop "
                         "training and calibrate the interval")
    if head.output_shape[-1] != len(cfg.quantiles):
        raise ValueError(f"the head predicts {head.output_shape[-1]} quantiles but "
                         f"cfg.quantiles has {len(cfg.quantiles)}")
    set_seed(seed)
    start = time.perf_counter()
    head.get_layer(QUANTILES_LAYER).interval_scale.assign(1.0)
    head.get_layer("standardize").adapt(x_train)
    _start_at(head, np.quantile(logp_train.astype(np.float64), cfg.quantiles))
    steps = math.ceil(len(x_train) / cfg.batch_size)
    optimizer = keras.optimizers.AdamW(
        learning_rate=lr_schedule(cfg.learning_rate, steps, cfg.epochs, cfg.warmup_epochs),
        weight_decay=cfg.weight_decay, global_clipnorm=5.0)
    optimizer.exclude_from_weight_decay(var_names=NO_DECAY)
    head.compile(optimizer=optimizer, loss=PinballLoss(cfg.quantiles))
    stopper = keras.callbacks.EarlyStopping(monitor="val_loss", patience=cfg.patience,
                                            restore_best_weights=True)
    hist = head.fit(x_train, logp_train, batch_size=cfg.batch_size, epochs=cfg.epochs,
                    validation_data=(x_val, logp_val), shuffle=True, verbose=verbose,
                    callbacks=[stopper])
    out: dict[str, Any] = {k: [float(v) for v in vals] for k, vals in hist.history.items()}
    out["best_epoch"] = int(stopper.best_epoch) + 1
    out["epochs_run"] = len(hist.history["loss"])
    out.update(calibrate_price_head(head, x_val, logp_val, cfg.interval_target,
                                    cfg.relative_estimate, relative_rows))
    out["seconds"] = time.perf_counter() - start
    log.info("trained price head: %d epochs in %.1fs, best epoch %d (val pinball %.4f)",
             out["epochs_run"], out["seconds"], out["best_epoch"], float(stopper.best))
    return out


def predict_price(head: keras.Model, x) -> Estimates:
    """(estimate, low, high) in £: exp of the head's median and of its lowest and highest
    quantile, the interval as calibrated (the head holds its ``interval_scale``)."""
    return from_log_quantiles(head, _log_quantiles(head, np.asarray(x, dtype=np.float32)))


def from_log_quantiles(head: keras.Model, quantiles) -> Estimates:
    """(estimate, low, high) in £ from the head's output (however it was run): the estimate
    is the median moved by the head's calibrated ``estimate_shift`` (``calibrate_price_head``),
    kept inside the interval."""
    quantiles = np.asarray(quantiles, dtype=np.float64)
    layer = head.get_layer(QUANTILES_LAYER)
    low, high = np.exp(quantiles[:, 0]), np.exp(quantiles[:, -1])
    estimate = np.exp(quantiles[:, layer.median] + layer.estimate_shift)
    return np.clip(estimate, low, high), low, high


# --------------------------------------------------------------------------- the figure
def _pounds(value, _position) -> str:
    return f"£{value:,.0f}" if value >= 1 else f"£{value:g}"


def price_plot(true, estimates: Mapping[str, tuple], sample: int = 200, seed: int = 0,
               title: str = "Suggested against listed price") -> Figure:
    """Suggested against listed price on log-log axes, one panel per model of ``estimates``
    (name -> (estimate, low, high) in £; low and high may be None), each with the y = x line,
    the intervals of a seeded ``sample`` of listings as faint vertical bars, and the model's
    MdAPE, within-25% share and interval coverage in its title. A matplotlib Figure on its
    own Agg canvas (marketsearch.plots); save it with ``fig.savefig``."""
    true = _prices(true, "true")
    if not estimates:
        raise ValueError("no models to plot: estimates is empty")
    scored = {name: (price_metrics(true, *parts), [None if p is None else _vector(p, name)
                                                   for p in parts])
              for name, parts in estimates.items()}
    everything = np.concatenate([true] + [p for _, parts in scored.values() for p in parts
                                          if p is not None])
    limits = (everything.min() / 1.3, everything.max() * 1.3)
    shown = np.sort(np.random.default_rng(seed).choice(len(true), min(sample, len(true)),
                                                      replace=False))
    fig = _new_figure(4.8 * len(scored), 5.0)
    for i, (name, (metrics, (estimate, low, high))) in enumerate(scored.items()):
        ax = fig.add_subplot(1, len(scored), i + 1)
        if low is not None:
            ax.vlines(true[shown], low[shown], high[shown], color="#4c72b0", alpha=0.18,
                      linewidth=1.2, label=f"interval ({len(shown)} listings)")
        ax.scatter(true, estimate, s=7, color="#4c72b0", alpha=0.45, edgecolor="none",
                   label="listings")
        ax.plot(limits, limits, color="#c44e52", linestyle="--", linewidth=1.2, label="y = x")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(*limits)
        ax.set_ylim(*limits)
        ax.set_aspect("equal")
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_formatter(FuncFormatter(_pounds))
        ax.tick_params(labelsize=8)
        ax.set_xlabel("listed price (£, log scale)")
        if i == 0:
            ax.set_ylabel("suggested price (£, log scale)")
        coverage = metrics["coverage_80"]
        ax.set_title(f"{name}\nMdAPE {metrics['mdape']:.0%}, within 25% "
                     f"{metrics['within_25']:.0%}"
                     + (f", coverage {coverage:.0%}" if coverage is not None else ""),
                     fontsize=10)
        ax.grid(alpha=0.3, which="major")
        ax.legend(fontsize=8, loc="upper left")
    fig.suptitle(f"{title} ({len(true):,} listings)", fontsize=11)
    fig.tight_layout()
    return fig
