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
