"""The model server as a real process over HTTP: V1, V2, readiness, bad requests, concurrency."""
import base64
import io
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from marketsearch.index import SearchIndex, normalize
from tests.serving.conftest import photo_b64, post

MODEL = "marketsearch"


def v1(server, instances, **kw):
    return post(f"{server.url}/v1/models/{MODEL}:predict", {"instances": instances}, **kw)


def v2(server, inputs):
    return post(f"{server.url}/v2/models/{MODEL}/infer", {"inputs": inputs})


def get(url):
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def one_photo_listing(raw_listings):
    row = raw_listings[raw_listings["photo_ids"].map(lambda p: isinstance(p, list) and len(p) == 1)].iloc[0]
    return row, row["photo_ids"][0]


# --------------------------------------------------------------------------- health
def test_ready_only_after_the_model_and_index_are_loaded(server):
    statuses = [s for _, s in server.readiness]
    assert statuses[-1] == 200
    # The port opens before the bundle has loaded: the first answers are 503, never 200 early.
    answered = [s for s in statuses if s != 0]
    assert answered[0] == 503, server.readiness[:10]
    assert set(answered) <= {503, 200}
    assert get(f"{server.url}/v2/health/live")[0] == 200
    assert get(f"{server.url}/v2/models/{MODEL}/ready")[0] == 200
    assert get(f"{server.url}/v1/models/{MODEL}")[0] == 200


# --------------------------------------------------------------------------- V1
def test_v1_fused_text_and_photo_only_requests(server, raw_listings, bundle_dir):
    row, photo_id = one_photo_listing(raw_listings)
    status, body = v1(server, [
        {"product_name": row["product_name"], "product_description": row["product_description"],
         "image_b64": photo_b64(photo_id), "k": 5},
        {"product_name": row["product_name"], "k": 3},
        {"image_b64": photo_b64(photo_id)},
    ])
    assert status == 200, body
    preds = body["predictions"]
    assert [p["modality"] for p in preds] == ["fused", "text", "image"]
    labels = json.loads((bundle_dir / "meta.json").read_text())["labels"]
    for p, k in zip(preds, (5, 3, 10)):
        assert set(p["scores"]) == set(labels)
        assert sum(p["scores"].values()) == pytest.approx(1.0, abs=1e-4)
        assert p["category"] == max(p["scores"], key=p["scores"].get)
        assert len(p["neighbors"]) == k
        scores = [n["score"] for n in p["neighbors"]]
        assert scores == sorted(scores, reverse=True)
        assert all(n["distance_km"] is None for n in p["neighbors"])
        assert "embedding" not in p
        # every kind of request, a photo alone too, gets a suggested price in GBP
        price = p["price"]
        assert price["currency"] == "GBP" and set(price) == {"estimate", "low", "high",
                                                             "currency"}
        assert 0 < price["low"] <= price["estimate"] <= price["high"]
    # the listing itself (its own text and photo) is its nearest neighbour
    assert preds[0]["neighbors"][0]["product_id"] == row["id"]
    assert preds[0]["neighbors"][0]["similarity"] > 0.99


def test_v1_location_reranks_by_distance(server, raw_listings):
    status, body = v1(server, [{"product_name": "chair", "k": 8, "location": "Leeds, West Yorkshire"},
                               {"product_name": "chair", "k": 8}])
    assert status == 200, body
    near, plain = body["predictions"]
    assert all(n["distance_km"] is not None for n in near["neighbors"])
    # score = similarity - 0.1 * min(d / 50 km, 1), and the list is ordered by it
    for n in near["neighbors"]:
        assert n["score"] == pytest.approx(n["similarity"] - 0.1 * min(n["distance_km"] / 50, 1),
                                           abs=1e-4)
    assert [n["score"] for n in near["neighbors"]] == sorted(
        [n["score"] for n in near["neighbors"]], reverse=True)
    assert [n["similarity"] for n in plain["neighbors"]] == sorted(
        [n["similarity"] for n in plain["neighbors"]], reverse=True)


def test_server_embedding_equals_the_pipelines_index_vector(server, raw_listings, bundle_dir):
    """One preprocessing: raw title, description and photo bytes sent to the server embed to
    the vector build_index stored for that listing from the pipeline's cleaned data."""
    index = SearchIndex.load(bundle_dir / "index")
    rows = raw_listings[raw_listings["photo_ids"].map(lambda p: isinstance(p, list) and len(p) == 1)]
    rows = rows[rows["id"].isin(index.ids)].head(4)
    assert len(rows) >= 2
    status, body = v1(server, [
        {"product_name": r["product_name"], "product_description": r["product_description"],
         "image_b64": photo_b64(r["photo_ids"][0]), "return_embedding": True}
        for _, r in rows.iterrows()])
    assert status == 200, body
    for (_, r), p in zip(rows.iterrows(), body["predictions"]):
        served = normalize(np.array(p["embedding"], np.float32))[0]
        np.testing.assert_allclose(served, index.vector_of(r["id"]), atol=1e-5)


# --------------------------------------------------------------------------- V2
def test_v2_carries_the_same_answers_as_v1(server, raw_listings):
    row, photo_id = one_photo_listing(raw_listings)
    img = photo_b64(photo_id)
    status1, body1 = v1(server, [{"product_name": row["product_name"], "image_b64": img, "k": 4},
                                 {"product_name": "lawn mower", "k": 4}])
    status2, body2 = v2(server, [
        {"name": "product_name", "shape": [2], "datatype": "BYTES",
         "data": [row["product_name"], "lawn mower"]},
        {"name": "image_b64", "shape": [2], "datatype": "BYTES", "data": [img, ""]},
        {"name": "k", "shape": [1], "datatype": "INT32", "data": [4]},
    ])
    assert status1 == 200 and status2 == 200, (body1, body2)
    out = {o["name"]: o for o in body2["outputs"]}
    assert out["modality"]["data"] == ["fused", "text"]
    assert out["category"]["data"] == [p["category"] for p in body1["predictions"]]
    assert out["neighbor_ids"]["shape"] == [2, 4]
    ids = np.array(out["neighbor_ids"]["data"]).reshape(2, 4).tolist()
    assert ids == [[n["product_id"] for n in p["neighbors"]] for p in body1["predictions"]]
    labels = out["labels"]["data"]
    scores = np.array(out["scores"]["data"]).reshape(2, len(labels))
    for s, p in zip(scores, body1["predictions"]):
        np.testing.assert_allclose(s, [p["scores"][c] for c in labels], atol=1e-5)
    assert out["embedding"]["shape"][0] == 2
    assert all(d == -1.0 for d in out["neighbor_distance_km"]["data"])
    assert out["price"]["shape"] == [2, 3] and out["price"]["datatype"] == "FP32"
    prices = np.array(out["price"]["data"]).reshape(2, 3)
    np.testing.assert_allclose(prices, [[p["price"][k] for k in ("estimate", "low", "high")]
                                        for p in body1["predictions"]], rtol=1e-3, atol=0.01)


# --------------------------------------------------------------------------- bad requests
def _png_bytes():
    buf = io.BytesIO()
    Image.new("RGB", (20, 10), (200, 30, 30)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


BAD_V1 = [
    ("wrong type", {"instances": [{"product_name": 42}]}, "instances[0].product_name"),
    ("k as string", {"instances": [{"product_name": "bike", "k": "ten"}]}, "instances[0].k"),
    ("k too big", {"instances": [{"product_name": "bike", "k": 1000}]}, "instances[0].k"),
    ("k zero", {"instances": [{"product_name": "bike", "k": 0}]}, "instances[0].k"),
    ("unknown field", {"instances": [{"product_nam": "bike"}]}, "instances[0].product_nam"),
    ("no text no photo", {"instances": [{"location": "Leeds, West Yorkshire"}]}, "neither text"),
    ("blank text", {"instances": [{"product_name": "   ", "product_description": ""}]},
     "neither text"),
    ("not base64", {"instances": [{"image_b64": "this is not base64!!"}]}, "instances[0].image_b64"),
    ("photo does not decode", {"instances": [{"image_b64": base64.b64encode(b"GIF89a garbage").decode()}]},
     "does not decode"),
    ("unknown town", {"instances": [{"product_name": "bike", "location": "Atlantis, Nowhere"}]},
     "instances[0].location"),
    ("empty batch", {"instances": []}, "instances: is empty"),
    ("instances not a list", {"instances": {"product_name": "bike"}}, "instances"),
    ("instance not an object", {"instances": ["bike"]}, "instances[0]"),
    ("no instances key", {"inputs": [{"product_name": "bike"}]}, "body"),
    ("batch too large", {"instances": [{"product_name": "bike"}] * 65}, "over the limit"),
    ("second item bad", {"instances": [{"product_name": "bike"}, {"k": -1}]}, "instances[1]"),
]


@pytest.mark.parametrize("case,body,field", BAD_V1, ids=[c[0] for c in BAD_V1])
def test_bad_v1_requests_get_400_naming_the_field(server, case, body, field):
    status, answer = post(f"{server.url}/v1/models/{MODEL}:predict", body)
    assert status == 400, (case, status, answer)
    assert field in answer["error"], answer


@pytest.mark.parametrize("raw,content_type", [
    (b"{not json", "application/json"), (b"", "application/json"),
    (b"\xff\xfe\x00", "application/octet-stream"), (b"[1, 2, 3]", "application/json"),
])
def test_invalid_json_gets_4xx(server, raw, content_type):
    status, answer = post(f"{server.url}/v1/models/{MODEL}:predict", None, raw=raw,
                          content_type=content_type)
    assert 400 <= status < 500, (status, answer)
    status, answer = post(f"{server.url}/v2/models/{MODEL}/infer", None, raw=raw,
                          content_type=content_type)
    assert 400 <= status < 500, (status, answer)


BAD_V2 = [
    ("unknown input", [{"name": "title", "shape": [1], "datatype": "BYTES", "data": ["x"]}],
     "inputs['title']"),
    ("wrong datatype", [{"name": "product_name", "shape": [1], "datatype": "FP32", "data": [1.0]}],
     "inputs['product_name']"),
    ("uneven batch", [{"name": "product_name", "shape": [2], "datatype": "BYTES", "data": ["a", "b"]},
                      {"name": "location", "shape": [3], "datatype": "BYTES", "data": ["", "", ""]}],
     "'location': 3"),
    ("shape mismatch", [{"name": "product_name", "shape": [3], "datatype": "BYTES", "data": ["a"]}],
     "shape"),
    ("k out of range", [{"name": "product_name", "shape": [1], "datatype": "BYTES", "data": ["a"]},
                        {"name": "k", "shape": [1], "datatype": "INT32", "data": [0]}], "inputs['k'][0]"),
    ("bad photo", [{"name": "image_b64", "shape": [1], "datatype": "BYTES", "data": ["%%%"]}],
     "inputs['image_b64'][0]"),
    ("no inputs", [], "inputs"),
]


@pytest.mark.parametrize("case,inputs,field", BAD_V2, ids=[c[0] for c in BAD_V2])
def test_bad_v2_requests_get_400_naming_the_input(server, case, inputs, field):
    status, answer = v2(server, inputs)
    assert status == 400, (case, status, answer)
    assert field in answer["error"], answer


def _raw_post(server, headers: dict, chunks) -> tuple[int, dict]:
    """POST over a raw socket, sending ``chunks`` until the server stops reading; then read
    its answer (a server may answer 413 and close before the client has sent everything)."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(server.url)
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    with socket.create_connection((url.hostname, url.port), timeout=30) as sock:
        sock.sendall(f"POST /v1/models/{MODEL}:predict HTTP/1.1\r\nHost: x\r\n"
                     f"content-type: application/json\r\n{head}\r\n".encode())
        try:
            for chunk in chunks:
                sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        data = b""
        while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < 20:
            part = sock.recv(65536)
            if not part:
                break
            data += part
    status = int(data.split(b" ", 2)[1])
    body = data.split(b"\r\n\r\n", 1)[1]
    return status, json.loads(body[body.index(b"{"):body.rindex(b"}") + 1])


def test_oversized_body_gets_413_and_the_server_goes_on(server):
    size = 17 * 1024 * 1024  # over serving.max_request_bytes (16 MiB)
    block = b"A" * (1024 * 1024)
    # declared by Content-Length: refused before the body is read
    status, answer = _raw_post(server, {"content-length": size}, [block] * 17)
    assert status == 413, answer
    assert "max_request_bytes" in answer["error"]
    # streamed without a length (chunked): refused once the count passes the limit
    chunked = [b"%x\r\n%s\r\n" % (len(block), block)] * 17 + [b"0\r\n\r\n"]
    status, answer = _raw_post(server, {"transfer-encoding": "chunked"}, chunked)
    assert status == 413, answer
    status, body = v1(server, [{"product_name": "bike", "k": 1}])
    assert status == 200, body


def test_unknown_model_is_404(server):
    status, _ = post(f"{server.url}/v1/models/nosuchmodel:predict", {"instances": [{"product_name": "x"}]})
    assert status == 404


def test_after_every_bad_request_a_good_one_is_answered(server):
    for _, body, _ in BAD_V1:
        post(f"{server.url}/v1/models/{MODEL}:predict", body)
    status, body = v1(server, [{"product_name": "bike", "image_b64": _png_bytes(), "k": 2}])
    assert status == 200, body
    assert body["predictions"][0]["modality"] == "fused"
    assert server.alive()


# --------------------------------------------------------------------------- load
def test_a_batch_of_many_instances(server):
    instances = [{"product_name": f"item {i} sofa chair table", "k": 3} for i in range(64)]
    status, body = v1(server, instances)
    assert status == 200, body
    assert len(body["predictions"]) == 64
    assert all(len(p["neighbors"]) == 3 for p in body["predictions"])


def test_concurrent_requests_get_consistent_answers(server):
    queries = ["mountain bike", "sofa", "iphone charger", "lawn mower"]

    def ask(i):
        return v1(server, [{"product_name": queries[i % 4], "image_b64": _png_bytes(), "k": 3}])

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(ask, range(48)))
    assert all(status == 200 for status, _ in results), [r for r in results if r[0] != 200][:2]
    by_query: dict = {}
    for i, (_, body) in enumerate(results):
        p = body["predictions"][0]
        key = (p["category"], tuple(n["product_id"] for n in p["neighbors"]))
        by_query.setdefault(i % 4, set()).add(key)
    assert all(len(v) == 1 for v in by_query.values()), by_query


def test_concurrent_good_and_bad_requests_each_get_their_own_answer(server):
    """Bad requests in flight beside good ones: each bad one gets its 400 naming what was wrong,
    each good one the same answer it gets alone, none a 500."""
    bad = [({"product_name": "sofa", "k": 0}, "k"),
           ({"image_b64": "not base64 at all!"}, "image_b64"),
           ({"product_name": 42}, "product_name"),
           ({"location": "Leeds, West Yorkshire"}, "product_name")]
    alone = v1(server, [{"product_name": "mountain bike", "k": 3}])[1]["predictions"][0]

    def ask(i):
        if i % 2:
            instance, field = bad[(i // 2) % len(bad)]
            return "bad", field, v1(server, [instance])
        return "good", None, v1(server, [{"product_name": "mountain bike", "k": 3}])

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(ask, range(64)))
    for kind, field, (status, body) in results:
        if kind == "bad":
            assert status == 400 and field in body["error"], (field, status, body)
        else:
            assert status == 200 and body["predictions"][0] == alone, (status, body)


# --------------------------------------------------------------------------- page routes
def test_thumbnails_and_more_like_this(server, bundle_dir):
    index = SearchIndex.load(bundle_dir / "index")
    pid = index.ids[0]
    status, data = get(f"{server.url}/photos/{pid}.jpg")
    assert status == 200 and data[:2] == b"\xff\xd8"  # a JPEG
    assert Image.open(io.BytesIO(data)).size == (48, 48)  # clean.thumbnail_size in the fixture
    assert get(f"{server.url}/photos/not-a-listing.jpg")[0] == 404
    status, body = get(f"{server.url}/api/similar/{pid}?k=4")
    body = json.loads(body)
    assert status == 200 and len(body["neighbors"]) == 4
    assert pid not in [n["product_id"] for n in body["neighbors"]]
    assert get(f"{server.url}/api/similar/nope")[0] == 404
    assert get(f"{server.url}/api/similar/{pid}?k=0")[0] == 400
    assert get(f"{server.url}/api/similar/{pid}?location=Atlantis")[0] == 400
