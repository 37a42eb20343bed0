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
from kfp import dsl

import marketsearch
from marketsearch import quarantine, snapshot
from marketsearch.config import Config

log = logging.getLogger(__name__)
# The row checks ship inside the package (an installed stage image has no repo checkout);
# validate.expectations_file points elsewhere.
EXPECTATIONS = Path(marketsearch.__file__).resolve().parent / "data" / "expectations.yaml"


class ValidationError(RuntimeError):
    """A critical data problem: the run cannot go on."""


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


def validate(cfg: Config, snapshot_dir: str | Path, out_dir: str | Path,
             expectations: str | Path | None = None) -> dict:
    """Check the raw snapshot; write validated tables, ``quarantine.parquet``, ``report.json``
    and ``report.md`` to ``out_dir``. Raises ValidationError on a critical failure."""
    out_dir = Path(out_dir)
    expectations = expectations or cfg.validate_.expectations_file or EXPECTATIONS
    specs = yaml.safe_load(Path(expectations).read_text())
    products = snapshot.read_table(snapshot_dir, "products").reset_index(drop=True)
    images = snapshot.read_table(snapshot_dir, "images").reset_index(drop=True)
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
        _write_report(out_dir, report)
        raise ValidationError("; ".join(report["critical"]))

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
    snapshot.write_tables(out_dir, products=good_products, images=good_images, quarantine=q)
    _write_report(out_dir, report)
    if report["critical"]:
        raise ValidationError("; ".join(report["critical"]))
    log.info("validate: %d/%d listings and %d/%d photos pass; %d rows quarantined",
             len(good_products), len(products), len(good_images), len(images), len(q))
    return report


def _write_report(out_dir: Path, report: dict) -> None:
    snapshot.write_json(out_dir, "report.json", report)
    (out_dir / "report.md").write_text(report_markdown(report))


def report_markdown(report: dict) -> str:
    lines = ["# Data validation", ""]
    if report["critical"]:
        lines += ["**Critical failures, the run stops:**", ""] + [f"- {c}" for c in report["critical"]] + [""]
    lines += [f"Listings: {report.get('n_products_valid', 0)} of {report['n_products']} pass; "
              f"photos: {report.get('n_images_valid', 0)} of {report['n_images']} pass.", ""]
    for table, checks in report.get("checks", {}).items():
        lines += [f"## {table}", "", "| expectation | column | failing rows |", "|---|---|---|"]
        lines += [f"| {c['expectation']} | {c['column']} | {c['unexpected']} |" for c in checks]
        lines.append("")
    reasons = report.get("quarantine_reasons") or {}
    if reasons:
        lines += ["## Quarantined", "", "| table | reason | rows |", "|---|---|---|"]
        for table, by_reason in reasons.items():
            lines += [f"| {table} | {r} | {n} |" for r, n in sorted(by_reason.items(), key=lambda x: -x[1])]
    return "\n".join(lines) + "\n"


def validate_component(config_json: str, parent_run_id: str, raw_snapshot: dsl.Input[dsl.Dataset],
                       validated: dsl.Output[dsl.Dataset], report: dsl.Output[dsl.Markdown]):
    """KFP: validate the raw snapshot; the Markdown report shows in the KFP UI."""
    import shutil

    import mlflow

    from marketsearch import tracking
    from marketsearch.components.validate import validate
    from marketsearch.config import Config

    cfg = Config.from_json(config_json)
    with tracking.stage_run(cfg, parent_run_id, "validate"):
        mlflow.log_params(tracking.flatten(cfg.validate_.model_dump(), "validate."))
        try:
            result = validate(cfg, raw_snapshot.path, validated.path)
        finally:
            md = f"{validated.path}/report.md"
            try:
                shutil.copy(md, report.path)
                mlflow.log_artifact(md)
                mlflow.log_artifact(f"{validated.path}/report.json")
            except FileNotFoundError:
                pass
        tracking.log_numbers({k: v for k, v in result.items() if k.startswith("n_")})
        if result["n_products_quarantined"] + result["n_images_quarantined"]:
            mlflow.log_artifact(f"{validated.path}/quarantine.parquet")
    for key in ("n_products_valid", "n_images_valid", "n_products_quarantined", "n_images_quarantined"):
        validated.metadata[key] = result[key]
