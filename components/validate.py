"""validate: Great Expectations on the raw snapshot; bad rows to quarantine with their reason.

Table-level failures (a required column missing, an empty table, more bad rows than
``validate.max_bad_fraction``) are critical: the report is written, then the run stops with a
message. Row-level failures (src/marketsearch/data/expectations.yaml) quarantine the row and the run goes on.
"""

import logging
import os
from pathlib import Path

import pandas as pd
import yaml

import marketsearch
from marketsearch import quarantine
from marketsearch.config import Config
from marketsearch.records import Snapshot, ValidatedData
from marketsearch.steps import step

log = logging.getLogger(__name__)
# The row checks ship inside the package (an installed stage image has no repo checkout);
# validate.expectations_file points elsewhere.
EXPECTATIONS = Path(marketsearch.__file__).resolve().parent / "data" / "expectations.yaml"


class ValidationError(RuntimeError):
    """A critical data problem: the run cannot go on. ``record`` holds the report so far (the
    stage's wrapper still saves it, so the KFP UI shows why the run stopped)."""

    def __init__(self, message: str, record: ValidatedData):
        super().__init__(message)
        self.record = record


def _blank_to_none(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    frame = frame.copy()
    for col in columns:
        if col in frame.columns:
            frame[col] = frame[col].map(lambda v: None if v is None or str(v).strip() == "" else v)
    return frame


def _photo_checks(images: pd.DataFrame, raw_ids: set, good_ids: set) -> pd.DataFrame:
    from tqdm import tqdm

    from marketsearch.images import ImageDecodeError, decode

    images = images.copy()
    images["readable"] = images["source_error"].fillna("") == ""
    decodes, errors = [], []
    for data, readable in tqdm(zip(images["data"], images["readable"]), total=len(images),
                               desc="validate: decoding photos", mininterval=2):
        if not readable:
            decodes.append(False)
            errors.append("bytes not read")
            continue
        try:
            decode(data)
            decodes.append(True)
            errors.append("")
        except ImageDecodeError as exc:
            decodes.append(False)
            errors.append(str(exc.__cause__ or exc))
    images["decodes"] = decodes
    images["decode_error"] = errors
    images["listing_status"] = [
        "" if pid in good_ids else ("listing was quarantined" if pid in raw_ids else
                                    f"no listing with id {pid!r}")
        for pid in images["product_id"]]
    return images


def _run_suite(frame: pd.DataFrame, name: str, specs: list[dict], context: dict) -> tuple[dict, list[dict]]:
    """Validate ``frame`` with GE; return {row_position: [(field, reason)]} and per-check results."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    import great_expectations as gx
    import great_expectations.expectations as gxe

    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = gx.data_context.types.base.ProgressBarsConfig(globally=False)
    batch = (ctx.data_sources.add_pandas(f"raw_{name}").add_dataframe_asset(name)
             .add_batch_definition_whole_dataframe("all")
             .get_batch(batch_parameters={"dataframe": frame}))
    suite = gx.ExpectationSuite(name=f"raw_{name}")
    for spec in specs:
        kwargs = {k: (sorted(context[v[1:]]) if isinstance(v, str) and v.startswith("$") else v)
                  for k, v in spec["kwargs"].items()}
        cls = getattr(gxe, "".join(part.title() for part in spec["type"].split("_")))
        suite.add_expectation(cls(**kwargs))
    result = batch.validate(suite, result_format={"result_format": "COMPLETE"})
    failures: dict[int, list[tuple[str, str]]] = {}
    checks = []
    for spec, res in zip(specs, result.results):
        if res.exception_info and res.exception_info.get("raised_exception"):
            raise ValidationError(f"{name}: expectation {spec['type']} could not run: "
                                  f"{res.exception_info.get('exception_message')}")
        idx = list(res.result.get("unexpected_index_list") or [])
        if spec["type"] == "expect_column_values_to_be_unique":
            col = spec["kwargs"]["column"]
            dup = frame[col].notna() & frame.duplicated(col, keep="first")
            idx = [i for i in idx if dup.iloc[i]]
        for i in idx:
            reason = spec["reason"]
            detail = spec.get("detail_column")
            if detail and str(frame[detail].iloc[i] or ""):
                reason = f"{reason}: {frame[detail].iloc[i]}"
            failures.setdefault(int(i), []).append((spec["field"], reason))
        checks.append({"expectation": spec["type"], "column": spec["kwargs"].get("column"),
                       "success": not idx, "unexpected": len(idx), "reason": spec["reason"]})
    return failures, checks


def _quarantine(frame: pd.DataFrame, table: str, failures: dict) -> tuple[pd.DataFrame, list[dict]]:
    records = []
    for pos, problems in sorted(failures.items()):
        row = frame.iloc[pos].to_dict()
        records.append(quarantine.record(table, row, "validate", ", ".join(sorted({f for f, _ in problems})),
                                         "; ".join(r for _, r in problems)))
    keep = frame.drop(index=frame.index[list(failures)])
    return keep, records


@step(reads=("validate",), inputs={"raw_snapshot": Snapshot},
      output=("validated", ValidatedData), views={"report": "Markdown"})
def validate(cfg: Config, raw_snapshot: Snapshot, expectations: str | Path | None = None
             ) -> ValidatedData:
    """Check the raw snapshot: the rows that pass, the quarantined ones with their reasons and
    the report. Raises ValidationError (with the report) on a critical failure."""
    raw = Snapshot.coerce(raw_snapshot)
    expectations = expectations or cfg.validate_.expectations_file or EXPECTATIONS
    specs = yaml.safe_load(Path(expectations).read_text())
    products = raw.products.reset_index(drop=True)
    images = raw.images.reset_index(drop=True)
    report: dict = {"n_products": len(products), "n_images": len(images), "critical": []}

    missing_p = [c for c in cfg.validate_.required_product_columns if c not in products.columns]
    missing_i = [c for c in cfg.validate_.required_image_columns if c not in images.columns]
    if missing_p:
        report["critical"].append(f"products table lacks column(s) {', '.join(missing_p)}")
    if missing_i:
        report["critical"].append(f"images table lacks column(s) {', '.join(missing_i)}")
    if len(products) == 0:
        report["critical"].append("products table is empty")
    if report["critical"]:
        empty = products.iloc[:0]
        raise ValidationError("; ".join(report["critical"]), ValidatedData(
            empty, images.iloc[:0], quarantine.frame([]), report, raw.manifest))

    products = _blank_to_none(products, list(products.columns))
    p_fail, p_checks = _run_suite(products, "products", specs["products"], {})
    good_products, records = _quarantine(products, "products", p_fail)

    images = _blank_to_none(images, ["id", "product_id"])
    images = _photo_checks(images, set(products["id"].dropna()), set(good_products["id"]))
    i_fail, i_checks = _run_suite(images, "images", specs["images"],
                                  {"listing_ids": set(good_products["id"])})
    good_images, image_records = _quarantine(images, "images", i_fail)
    records += image_records
    good_images = good_images.drop(columns=["readable", "decodes", "decode_error", "listing_status"])

    q = quarantine.frame(records)
    report.update({
        "checks": {"products": p_checks, "images": i_checks},
        "n_products_valid": len(good_products), "n_images_valid": len(good_images),
        "n_products_quarantined": len(p_fail), "n_images_quarantined": len(i_fail),
        "quarantine_reasons": quarantine.summary(q),
    })
    limit = cfg.validate_.max_bad_fraction
    for table, bad, total in (("listings", len(p_fail), len(products)), ("photos", len(i_fail), len(images))):
        if total and bad / total > limit:
            report["critical"].append(
                f"{bad} of {total} {table} failed validation ({bad / total:.0%} > {limit:.0%} allowed)")
    result = ValidatedData(good_products, good_images, q, report, raw.manifest)
    if report["critical"]:
        raise ValidationError("; ".join(report["critical"]), result)
    log.info("validate: %d/%d listings and %d/%d photos pass; %d rows quarantined",
             len(good_products), len(products), len(good_images), len(images), len(q))
    return result


