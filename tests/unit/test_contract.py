"""The request contract: validation messages name the field; preprocessing is the pipeline's."""
import base64
import io

import numpy as np
import pytest
from PIL import Image

from marketsearch.config import ServingConfig
from marketsearch.images import preprocess
from marketsearch.serving.contract import RequestError, parse_instances, v2_to_instances
from marketsearch.text import listing_text

CFG = ServingConfig()
PLACES = {"Leeds, West Yorkshire": (53.8, -1.55)}


def parse(instances, **kw):
    return parse_instances(instances, CFG, 32, PLACES.get, **kw)


def jpeg_b64(size=(40, 20)) -> tuple[str, bytes]:
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 200, 40)).save(buf, format="JPEG")
    return base64.b64encode(buf.getvalue()).decode(), buf.getvalue()


def test_text_photo_and_location_become_a_query_through_the_pipelines_preprocessing():
    b64, raw = jpeg_b64()
    title = "Sofa | in Leeds, West Yorkshire | Gumtree"
    (q,) = parse([{"product_name": title, "product_description": "Brown\nleather", "image_b64": b64,
                   "location": "Leeds, West Yorkshire", "k": 5}])
    assert q.text == listing_text(title, "Brown\nleather") == "Sofa . Brown leather"
    np.testing.assert_array_equal(q.pixels, preprocess(raw, 32))
    assert (q.lat, q.lon, q.k, q.modality) == (53.8, -1.55, 5, "fused")


def test_a_data_url_photo_is_accepted_and_modality_follows_what_was_sent():
    b64, _ = jpeg_b64()
    photo, text = parse([{"image_b64": f"data:image/jpeg;base64,{b64}"}, {"product_description": "kettle"}])
    assert photo.modality == "image" and photo.text is None and photo.k == CFG.default_k
    assert text.modality == "text" and text.pixels is None


@pytest.mark.parametrize("instance,message", [
    ({"product_name": ["a"]}, "instances[0].product_name: Input should be a valid string"),
    ({"product_name": "a", "k": True}, "instances[0].k"),
    ({"product_name": "a", "k": 101}, "instances[0].k: must be between 1 and 100, got 101"),
    ({"product_name": "a", "colour": "red"}, "instances[0].colour: is not a field"),
    ({"product_name": " . "}, "instances[0]: has neither text"),
    ({"image_b64": "***"}, "instances[0].image_b64: is not valid base64"),
    ({"image_b64": base64.b64encode(b"not a photo").decode()}, "instances[0].image_b64: photo does not decode"),
    ({"product_name": "a", "location": "Gotham"}, "instances[0].location: 'Gotham' is not a UK town"),
    ({"product_name": "a", "return_embedding": "yes"}, "instances[0].return_embedding"),
])
def test_each_bad_field_is_named(instance, message):
    with pytest.raises(RequestError) as err:
        parse([instance])
    assert message in str(err.value)


def test_all_problems_of_a_batch_are_reported_together():
    with pytest.raises(RequestError) as err:
        parse([{"product_name": "ok"}, {"k": 0}, "text", {"product_name": 3}])
    assert [p.split(":")[0] for p in err.value.problems] == [
        "instances[1]", "instances[1].k", "instances[2]", "instances[3].product_name"]


@pytest.mark.parametrize("instances,message", [
    ([], "instances: is empty"), ({"a": 1}, "instances: must be a list"),
    ([{"product_name": "a"}] * 65, "over the limit of 64"),
])
def test_batch_shape_errors(instances, message):
    with pytest.raises(RequestError, match=message):
        parse(instances)


def test_oversized_photo_is_refused_before_decoding():
    cfg = ServingConfig(max_photo_bytes=1000)
    b64, _ = jpeg_b64((400, 400))
    big = b64 * 3
    with pytest.raises(RequestError, match="over the 1,000 byte limit"):
        parse_instances([{"image_b64": big}], cfg, 32, PLACES.get)


# --------------------------------------------------------------------------- V2
def infer_input(name, shape, datatype, data):
    from kserve.protocol.infer_type import InferInput

    return InferInput(name, shape, datatype, data)


def test_v2_tensors_become_instances_with_batch_wide_k():
    instances = v2_to_instances([
        infer_input("product_name", [2], "BYTES", ["bike", "sofa"]),
        infer_input("image_b64", [2], "BYTES", ["", "abc"]),
        infer_input("k", [1], "INT64", [3]),
    ])
    assert instances == [{"product_name": "bike", "k": 3},
                         {"product_name": "sofa", "image_b64": "abc", "k": 3}]


def test_v2_messages_name_the_tensor_and_item():
    with pytest.raises(RequestError, match=r"inputs\['k'\]\[1\]: must be between"):
        parse(v2_to_instances([infer_input("product_name", [2], "BYTES", ["a", "b"]),
                               infer_input("k", [2], "INT32", [2, 0])]), v2=True)
    with pytest.raises(RequestError, match=r"inputs\['k'\]: datatype must be INT32 or INT64"):
        v2_to_instances([infer_input("k", [1], "FP32", [1.0])])
