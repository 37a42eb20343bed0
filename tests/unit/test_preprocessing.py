"""The shared text and photo preprocessing (used by training and serving alike)."""
import io

import numpy as np
import pytest
from PIL import Image

from marketsearch import images, text


@pytest.mark.parametrize("raw, value", [
    ("£5.00", 5.0), ("£1,250.00", 1250.0), ("£1,234,567.50", 1234567.5), ("20", 20.0),
    (" £0.5 ", 0.5), ("£12.3", 12.3),
])
def test_parse_price(raw, value):
    assert text.parse_price(raw) == value


@pytest.mark.parametrize("raw", ["", None, "twenty", "£1,25.00", "£-5.00", "£5.000", "£ 1 000"])
def test_parse_price_rejects_with_the_value_named(raw):
    with pytest.raises(text.PriceError, match="price"):
        text.parse_price(raw)


def test_clean_title_and_root_category():
    assert text.clean_title("Mirror wall art | in Wokingham, Berkshire | Gumtree") == "Mirror wall art"
    assert text.clean_title("A | B table | in Leeds | Gumtree") == "A | B table"
    assert text.clean_title("No suffix here") == "No suffix here"
    assert text.root_category("Home & Garden / Garden & Patio / Sheds") == "Home & Garden"
    with pytest.raises(ValueError, match="no root"):
        text.root_category(" / Sub")


def test_tokenize_splits_glued_words_and_lowercases():
    assert text.tokenize("Brand New & never used\r\nStill in cookingServes 4") == [
        "brand", "new", "never", "used", "still", "in", "cooking", "serves", "4"]
    assert text.listing_text("Sofa | in Leeds, West Yorkshire | Gumtree", "Grey\nthree seater") == \
        "Sofa . Grey three seater"


def test_encode_pads_truncates_and_marks_oov():
    vocab = text.build_vocab([], ["sofa", "grey"])
    ids = text.encode(["grey sofa unknownword", "sofa " * 10], vocab, max_len=4)
    assert ids.dtype == np.int32 and ids.shape == (2, 4)
    assert ids[0].tolist() == [vocab["grey"], vocab["sofa"], text.OOV, text.PAD]
    assert ids[1].tolist() == [vocab["sofa"]] * 4
    assert text.oov_rate(["grey sofa unknownword"], vocab) == pytest.approx(1 / 3)


def _png(w, h, color=(200, 10, 10), mode="RGB"):
    buf = io.BytesIO()
    Image.new(mode, (w, h), color).save(buf, format="PNG")
    return buf.getvalue()


def test_preprocess_letterboxes_to_rgb_square():
    arr = images.preprocess(_png(40, 20), 16)
    assert arr.shape == (16, 16, 3) and arr.dtype == np.uint8
    assert tuple(arr[8, 8]) == (200, 10, 10)      # content in the middle
    assert tuple(arr[0, 8]) == (255, 255, 255)    # white bands above and below
    grey = images.preprocess(_png(10, 10, 128, mode="L"), 8)
    assert grey.shape == (8, 8, 3)
    assert images.aspect_ratio(images.decode(_png(40, 10))) == 4.0


@pytest.mark.parametrize("data, why", [(b"", "empty"), (None, "empty"),
                                       (b"\xff\xd8 not a jpeg", "does not decode")])
def test_bad_photo_bytes_raise_a_clear_error(data, why):
    with pytest.raises(images.ImageDecodeError, match=why):
        images.preprocess(data, 8)
