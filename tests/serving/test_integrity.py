"""A bundle is verified against its checksums before anything in it is loaded: one changed
byte, a file removed or a file added is refused by name, by the engine, `search` and `serve`."""
import shutil
import subprocess
import sys

import pytest

from marketsearch.checksums import CHECKSUMS_FILE, IntegrityError, verify
from marketsearch.serving.engine import SearchEngine


@pytest.fixture
def copy(bundle_dir, tmp_path):
    return shutil.copytree(bundle_dir, tmp_path / "bundle")


def _flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_an_untouched_bundle_verifies_and_loads(copy):
    assert len(verify(copy)) == 64
    assert SearchEngine.load(copy).labels


@pytest.mark.parametrize("name", ["fused.keras", "text.keras", "index/index.faiss", "meta.json"])
def test_one_changed_byte_is_refused_naming_the_file(copy, name):
    _flip_a_byte(copy / name)
    with pytest.raises(IntegrityError, match=f"{name} does not match its sha256"):
        SearchEngine.load(copy)


def test_a_missing_or_added_file_or_no_manifest_is_refused(copy):
    (copy / "extra.keras").write_bytes(b"not built here")
    with pytest.raises(IntegrityError, match="extra.keras is not in checksums.json"):
        verify(copy)
    (copy / "extra.keras").unlink()
    (copy / "vocab.json").unlink()
    with pytest.raises(IntegrityError, match="vocab.json is missing"):
        verify(copy)
    (copy / CHECKSUMS_FILE).unlink()
    with pytest.raises(IntegrityError, match="has no checksums.json"):
        verify(copy)


def test_search_and_serve_refuse_a_tampered_bundle_before_loading_it(copy, tmp_path):
    _flip_a_byte(copy / "fused.keras")
    exe = [sys.executable, "-m", "marketsearch.cli"]
    search = subprocess.run([*exe, "search", "bike", "--model", str(copy),
                             "--set", f"run_dir={tmp_path / 'runs'}"],
                            capture_output=True, text=True, timeout=300)
    assert search.returncode == 2 and "fused.keras does not match" in search.stderr
    serve = subprocess.run([*exe, "serve", "--model", str(copy), "--port", "0",
                            "--set", f"run_dir={tmp_path / 'runs'}"],
                           capture_output=True, text=True, timeout=300)
    assert serve.returncode != 0 and "fused.keras does not match" in serve.stderr


def test_labels_that_do_not_match_the_model_are_refused(copy):
    """meta.json edited (and the checksums rewritten to match, as a careless rebuild would):
    the label count no longer matches the fused model's outputs."""
    import json

    from marketsearch import checksums
    from marketsearch.bundle import Bundle

    meta = json.loads((copy / "meta.json").read_text())
    meta["labels"] = meta["labels"][:-1]
    (copy / "meta.json").write_text(json.dumps(meta))
    checksums.write(copy)
    with pytest.raises(ValueError, match=r"predicts 13 classes \(\w*probs\) but meta.json names 12 labels"):
        Bundle(copy).fused_model  # noqa: B018


def test_the_engine_runs_photos_by_the_configured_runtime_with_the_same_answers(bundle_dir,
                                                                                raw_listings):
    """serving.photo_runtime picks what runs a request's photo (LiteRT by default): the
    answers of both runtimes agree on the category, embedding, neighbours and price."""
    import numpy as np

    from marketsearch.config import ServingConfig
    from tests.serving.conftest import photo_b64

    rows = raw_listings.dropna(subset=["photo_ids"]).head(3)
    instances = [{"product_name": row.product_name, "image_b64": photo_b64(row.photo_ids[0])}
                 for row in rows.itertuples()]
    instances.append({"image_b64": photo_b64(rows.iloc[0].photo_ids[0])})
    answers = {}
    for runtime in ("litert", "tensorflow"):
        engine = SearchEngine.load(bundle_dir, ServingConfig(photo_runtime=runtime))
        assert engine.bundle.photo_runtime == runtime
        answers[runtime] = engine.answer_instances(instances)
        assert ("lite_features" in engine.bundle.__dict__) == (runtime == "litert")
    for lite, tf_answer in zip(answers["litert"], answers["tensorflow"]):
        assert lite.category == tf_answer.category
        np.testing.assert_allclose(lite.embedding, tf_answer.embedding, rtol=1e-4, atol=1e-5)
        assert [h["product_id"] for h in lite.neighbors] == [h["product_id"]
                                                              for h in tf_answer.neighbors]
        np.testing.assert_allclose(lite.price, tf_answer.price, rtol=1e-3)
