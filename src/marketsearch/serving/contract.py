"""The request contract: V1 instances and V2 named tensors -> validated ``Query`` objects.

Every problem with a request becomes a ``RequestError`` whose message names the field
(``instances[2].image_b64: ...``, ``inputs['k']: ...``); the server answers it with a 400.
All problems of a request are reported at once, so a client fixes a batch in one go.

V1 instance (JSON object)::

    {"product_name": str, "product_description": str,       # text (either or both)
     "image_b64": str,                                      # base64 JPEG/PNG (a data: URL too)
     "location": "Town, County",                            # optional, re-ranks by distance
     "k": int,                                              # neighbours, 1..max_k (default 10)
     "return_embedding": bool}                              # optional, adds "embedding"

At least one of text and photo. V2 carries the same fields as BYTES / INT tensors of shape
[N] (``k`` and ``return_embedding`` may also be [1] for the whole batch).

Text and photos go through the training pipeline's own preprocessing
(``marketsearch.text.listing_text`` and ``marketsearch.images``), imported, not re-written.
"""
from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, StrictBool, StrictInt, StrictStr, ValidationError

from marketsearch.config import ServingConfig
from marketsearch.images import ImageDecodeError, preprocess
from marketsearch.text import listing_text

_DATA_URL = re.compile(r"^data:image/[\w.+-]+;base64,", re.IGNORECASE)
V2_INPUTS = ("product_name", "product_description", "image_b64", "location", "k",
             "return_embedding")


class RequestError(ValueError):
    """A request that cannot be answered as sent; the message names every bad field."""

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))


class Instance(BaseModel):
    """One V1 instance as sent; types are strict (a number is not a string, true is not 1)."""

    model_config = ConfigDict(extra="forbid")
    product_name: StrictStr | None = None
    product_description: StrictStr | None = None
    image_b64: StrictStr | None = None
    location: StrictStr | None = None
    k: StrictInt | None = None
    return_embedding: StrictBool = False


@dataclass
class Query:
    """A validated, preprocessed request item, ready for the model and the index."""

    text: str | None            # listing_text(title, description), None when there is none
    pixels: np.ndarray | None   # uint8 [S, S, 3], None when there is no photo
    k: int
    location: str | None = None
    lat: float | None = None
    lon: float | None = None
    return_embedding: bool = False

    @property
    def modality(self) -> str:
        if self.text is not None and self.pixels is not None:
            return "fused"
        return "text" if self.text is not None else "image"


def _describe(error: dict) -> str:
    got = error.get("input")
    shown = repr(got) if not isinstance(got, (dict, list)) else type(got).__name__
    if error["type"] == "extra_forbidden":
        return "is not a field of the contract (fields: product_name, product_description, " \
               "image_b64, location, k, return_embedding)"
    return f"{error['msg']} (got {shown[:60]})"


def decode_photo(value: str, max_bytes: int, image_size: int) -> np.ndarray:
    """base64 (or a data: URL) -> uint8 [S, S, 3], through the training-time preprocessing."""
    payload = _DATA_URL.sub("", value.strip())
    if len(payload) * 3 // 4 > max_bytes:
        raise ValueError(f"photo is over the {max_bytes:,} byte limit")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"is not valid base64: {exc}") from None
    try:
        return preprocess(data, image_size)
    except ImageDecodeError as exc:
        raise ValueError(str(exc)) from None


def _v1_field(i: int, field: str | None) -> str:
    return f"instances[{i}].{field}" if field else f"instances[{i}]"


def _v2_field(i: int, field: str | None) -> str:
    return f"inputs[{field!r}][{i}]" if field else f"item {i}"


def parse_instances(instances, cfg: ServingConfig, image_size: int, geocode,
                    v2: bool = False) -> list[Query]:
    """Validate V1 instances (a list of JSON objects) and preprocess them into queries.

    ``geocode(location) -> (lat, lon) | None`` resolves a "Town, County" string. With ``v2``
    the messages name tensors (``inputs['k'][3]``) instead of instance fields."""
    at = _v2_field if v2 else _v1_field
    if not isinstance(instances, list):
        raise RequestError(f"instances: must be a list of objects, got {type(instances).__name__}")
    if not instances:
        raise RequestError("instances: is empty; send at least one instance")
    if len(instances) > cfg.max_instances:
        raise RequestError(f"instances: {len(instances)} instances, over the limit of "
                           f"{cfg.max_instances} per request")
    problems: list[str] = []
    queries: list[Query] = []
    for i, raw in enumerate(instances):
        if not isinstance(raw, dict):
            problems.append(f"{at(i, None)}: must be a JSON object, got {type(raw).__name__}")
            continue
        try:
            inst = Instance.model_validate(raw)
        except ValidationError as exc:
            problems += [f"{at(i, '.'.join(map(str, e['loc'])))}: {_describe(e)}"
                         for e in exc.errors()]
            continue
        before = len(problems)
        title, description = inst.product_name or "", inst.product_description or ""
        text = listing_text(title, description) if (title.strip() or description.strip()) else None
        if text is not None and not text.strip(" ."):
            text = None
        pixels = None
        if inst.image_b64 is not None and inst.image_b64.strip():
            try:
                pixels = decode_photo(inst.image_b64, cfg.max_photo_bytes, image_size)
            except ValueError as exc:
                problems.append(f"{at(i, 'image_b64')}: {exc}")
        elif text is None:
            problems.append(f"{at(i, None)}: has neither text (product_name, product_description) "
                            "nor a photo (image_b64); send at least one")
        k = cfg.default_k if inst.k is None else inst.k
        if not 1 <= k <= cfg.max_k:
            problems.append(f"{at(i, 'k')}: must be between 1 and {cfg.max_k}, got {k}")
        lat = lon = None
        location = (inst.location or "").strip() or None
        if location is not None:
            coords = geocode(location)
            if coords is None:
                problems.append(f"{at(i, 'location')}: {location!r} is not a UK town or county "
                                "we know; use 'Town, County'")
            else:
                lat, lon = coords
        if len(problems) == before:
            queries.append(Query(text, pixels, k, location, lat, lon, inst.return_embedding))
    if problems:
        raise RequestError(problems)
    return queries


# --------------------------------------------------------------------------- V2 tensors
def _v2_values(inp) -> list:
    """A V2 input tensor's values as a flat Python list (BYTES -> str)."""
    data = inp.data
    if isinstance(data, np.ndarray):
        data = data.reshape(-1).tolist()
    flat: list = []

    def walk(v):
        if isinstance(v, list):
            for item in v:
                walk(item)
        else:
            flat.append(v.decode("utf-8", errors="replace") if isinstance(v, bytes) else v)

    walk(data)
    return flat


_V2_TYPES = {"product_name": "BYTES", "product_description": "BYTES", "image_b64": "BYTES",
             "location": "BYTES", "k": "INT", "return_embedding": "BOOL"}


def v2_to_instances(inputs) -> list[dict]:
    """V2 named tensors (kserve InferInput objects) -> V1-style instance dicts.

    Tensors are [N] (one value per item); ``k`` and ``return_embedding`` may be [1]. An empty
    string means "absent" for the BYTES tensors."""
    problems: list[str] = []
    columns: dict[str, list] = {}
    for inp in inputs:
        name, dtype = inp.name, (inp.datatype or "").upper()
        where = f"inputs[{name!r}]"
        if name not in _V2_TYPES:
            problems.append(f"{where}: is not an input of the model (inputs: {', '.join(V2_INPUTS)})")
            continue
        want = _V2_TYPES[name]
        if not (dtype == want or (want == "INT" and dtype in ("INT8", "INT16", "INT32", "INT64",
                                                               "UINT8", "UINT16", "UINT32"))):
            problems.append(f"{where}: datatype must be {want if want != 'INT' else 'INT32 or INT64'}, "
                            f"got {dtype or 'none'}")
            continue
        try:
            values = _v2_values(inp)
        except Exception as exc:  # a malformed tensor body
            problems.append(f"{where}: data does not decode: {exc}")
            continue
        if int(np.prod(inp.shape or [0])) != len(values):
            problems.append(f"{where}: shape {inp.shape} does not match its {len(values)} values")
            continue
        columns[name] = values
    if problems:
        raise RequestError(problems)
    if not columns:
        raise RequestError("inputs: no inputs; send product_name/product_description and/or image_b64")
    lengths = {name: len(v) for name, v in columns.items()
               if not (name in ("k", "return_embedding") and len(v) == 1)}
    if len(set(lengths.values())) > 1:
        sizes = ", ".join(f"{name!r}: {m}" for name, m in lengths.items())
        raise RequestError(f"inputs: lengths differ ({sizes}); every input is [N] for one N "
                           "(k and return_embedding may be [1])")
    n = next(iter(lengths.values()), 1)
    instances = []
    for i in range(n):
        inst = {}
        for name, values in columns.items():
            value = values[0] if len(values) == 1 and name in ("k", "return_embedding") else values[i]
            if _V2_TYPES[name] == "BYTES" and value == "":
                continue
            inst[name] = value
        instances.append(inst)
    return instances
