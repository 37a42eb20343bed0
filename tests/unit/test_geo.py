"""Offline UK gazetteer and great-circle distances."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from marketsearch.geo import (Gazetteer, get_gazetteer, haversine_km, load_county_table,
                              normalize_name)

SHARED_PRODUCTS = Path(__file__).resolve().parents[3] / "shared" / "data" / "gumtree" / "products.csv"


@pytest.fixture(scope="module")
def gaz() -> Gazetteer:
    return get_gazetteer(500)


def near(found, lat: float, lon: float, km: float = 10.0) -> bool:
    return found is not None and haversine_km(found[0], found[1], lat, lon) <= km


def test_haversine_london_manchester():
    d = haversine_km(51.5074, -0.1278, 53.4808, -2.2426)
    assert isinstance(d, float)
    assert d == pytest.approx(262, abs=3)
    assert haversine_km(51.5, -0.1, 51.5, -0.1) == 0.0


def test_haversine_is_vectorised():
    lat = np.array([51.5074, 55.9533, 51.4816])
    lon = np.array([-0.1278, -3.1883, -3.1791])
    d = haversine_km(lat, lon, 53.4808, -2.2426)         # broadcast against one point
    assert d.shape == (3,)
    assert d[0] == pytest.approx(262, abs=3)
    np.testing.assert_allclose(haversine_km(lat, lon, lat, lon), 0.0, atol=1e-9)
    pairwise = haversine_km(lat[:, None], lon[:, None], lat[None, :], lon[None, :])
    assert pairwise.shape == (3, 3)
    np.testing.assert_allclose(pairwise, pairwise.T)


@pytest.mark.parametrize("text,key", [
    ("St. Albans", "st albans"), ("Saint Albans", "st albans"), ("King's Lynn", "kings lynn"),
    ("Stoke-on-Trent", "stoke on trent"), ("Brighton & Hove", "brighton and hove"),
    ("  NEWCASTLE   upon Tyne ", "newcastle upon tyne"),
])
def test_normalize_name(text, key):
    assert normalize_name(text) == key


@pytest.mark.parametrize("location,lat,lon", [
    ("Leeds, West Yorkshire", 53.80, -1.55),
    ("St. Albans, Hertfordshire", 51.75, -0.34),
    ("Stoke on Trent, Staffordshire", 53.00, -2.18),
    ("Kingston Upon Hull, East Yorkshire", 53.74, -0.33),
    ("Hull, East Yorkshire", 53.74, -0.33),                    # alternate name
    ("Newcastle, Tyne and Wear", 54.97, -1.61),               # short form, settled by county
    ("Newcastle, County Down", 54.22, -5.89),                 # the other Newcastle
    ("Richmond, North Yorkshire", 54.40, -1.74),              # namesakes: nearest the county
    ("Richmond, London", 51.46, -0.30),
    ("Birmingham City Centre, West Midlands", 52.48, -1.90),   # suffix stripped
    ("East London, London", 51.51, -0.13),
    ("Inverness, Highland", 57.48, -4.22),
    ("Londonderry, County Londonderry", 55.00, -7.31),
])
def test_town_lookups(gaz: Gazetteer, location, lat, lon):
    assert near(gaz.lookup(location), lat, lon), (location, gaz.resolve(location))
    assert gaz.resolve(location).level == "town"


@pytest.mark.parametrize("location,town", [
    ("Downend, Bristol", "Bristol"),                         # a region that is a city
    ("Somewhere Unknown, West Midlands", "Birmingham"),
    ("Nowhereville, East Yorkshire", "Kingston upon Hull"),
    ("Nowhereville, County Antrim", "Belfast"),
    ("Nowhereville, Fife", "Glenrothes"),
    ("County Antrim", "Belfast"),                            # no town part at all
    ("South Kirkby, West Yorkshire", "Leeds"),               # Kirkby (Merseyside) is too far
])
def test_county_fallback(gaz: Gazetteer, location, town):
    match = gaz.resolve(location)
    assert match is not None and match.level == "county" and match.place == town


@pytest.mark.parametrize("location", ["", "   ", "Atlantis, Nowhere", "Xyzzy", ",,,"])
def test_unknown_location_is_none(gaz: Gazetteer, location):
    assert gaz.lookup(location) is None


def test_every_county_row_names_a_gazetteer_town(gaz: Gazetteer):
    table = load_county_table()
    assert len(table) > 100
    missing = [county for county in table if gaz.county_anchor(county) is None]
    assert missing == []


def test_lookup_many_and_cache(gaz: Gazetteer):
    out = gaz.lookup_many(["Leeds, West Yorkshire", "Atlantis, Nowhere"])
    assert out.shape == (2, 2)
    assert not np.isnan(out[0]).any() and np.isnan(out[1]).all()
    assert get_gazetteer(500) is gaz


def test_fixture_match_rate(gaz: Gazetteer, fixture_dir: Path):
    products = pd.read_csv(fixture_dir / "products.csv", dtype=str, keep_default_na=False)
    rate = gaz.match_rate(products["location"])
    assert rate["rate"] >= 0.98


@pytest.mark.skipif(not SHARED_PRODUCTS.exists(), reason="shared Gumtree data not present")
def test_shared_data_match_rate(gaz: Gazetteer):
    products = pd.read_csv(SHARED_PRODUCTS, dtype=str, keep_default_na=False)
    rate = gaz.match_rate(products["location"])
    assert rate["rate"] >= 0.98
    assert rate["town_rate"] >= 0.78
