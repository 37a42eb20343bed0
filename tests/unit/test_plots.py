"""Every plot function writes a valid, non-empty PNG of a sensible size."""
import numpy as np
import pytest
from PIL import Image

from marketsearch import plots

LABELS = ["Appliances", "Phones, Mobile Phones & Telecoms", "Music, Films, Books & Games",
          "Home & Garden"]


def check_png(path, min_w=300, min_h=200):
    assert path.exists() and path.stat().st_size > 2000
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.format == "PNG"
        w, h = img.size
    assert w >= min_w and h >= min_h
    return w, h


def test_confusion_matrix_png(tmp_path):
    matrix = [[5, 1, 0, 0], [2, 7, 1, 0], [0, 0, 0, 0], [1, 0, 3, 9]]  # an empty row too
    out = plots.confusion_matrix_png(matrix, LABELS, tmp_path / "sub" / "cm.png", "test")
    assert out == tmp_path / "sub" / "cm.png"
    check_png(out, 500, 500)


def test_confusion_matrix_shape_mismatch(tmp_path):
    with pytest.raises(ValueError, match="labels"):
        plots.confusion_matrix_png([[1, 0], [0, 1]], LABELS, tmp_path / "cm.png")


def test_training_curves_png(tmp_path):
    history = {"loss": [2.0, 1.4, 1.1, 0.9], "val_loss": [2.1, 1.6, 1.4, 1.45],
               "accuracy": [0.3, 0.5, 0.6, 0.7], "val_accuracy": [0.28, 0.45, 0.52, 0.51],
               "lr": [1e-3] * 4}
    w, h = check_png(plots.training_curves_png(history, tmp_path / "curves.png", "t"))
    assert w > h  # loss and accuracy side by side


def test_training_curves_train_only(tmp_path):
    check_png(plots.training_curves_png({"loss": [1.0, 0.5]}, tmp_path / "c.png"))


def test_price_distribution_png(tmp_path):
    rng = np.random.default_rng(0)
    prices = np.concatenate([rng.lognormal(3.5, 1.4, 500), [0.0, np.nan, -1.0]])
    check_png(plots.price_distribution_png(prices, tmp_path / "prices.png"))


def test_category_counts_png(tmp_path):
    cats = ["Home & Garden"] * 30 + ["Appliances"] * 12 + [LABELS[1]] * 5
    check_png(plots.category_counts_png(cats, tmp_path / "cats.png"))


def test_uk_map_png(tmp_path):
    rng = np.random.default_rng(0)
    lat = np.concatenate([rng.uniform(50.5, 55.5, 200), [np.nan, 40.0]])
    lon = np.concatenate([rng.uniform(-4.5, 1.0, 200), [np.nan, -3.0]])
    w, h = check_png(plots.uk_map_png(lat, lon, tmp_path / "map.png"), 400, 500)
    assert h > w  # Britain is taller than wide
    cats = rng.choice(LABELS, size=len(lat)).tolist()
    check_png(plots.uk_map_png(lat, lon, tmp_path / "map_cats.png", categories=cats), 400, 500)


def test_uk_background_is_britain():
    lon, lat, pop, _ = plots._background_places()
    assert len(lon) > 1000
    assert plots.UK_LON[0] <= lon.min() and lon.max() <= plots.UK_LON[1]
    assert plots.UK_LAT[0] <= lat.min() and lat.max() <= plots.UK_LAT[1]
