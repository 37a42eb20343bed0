"""``marketsearch monitor`` refuses bad input before any pipeline runs (no shared data or
training needed, unlike tests/pipeline/test_monitoring_pipeline.py)."""
from marketsearch.cli import main


def test_a_data_folder_without_the_csvs_is_refused(tmp_path, capsys):
    (tmp_path / "products.csv").write_text("id,product_name\n")  # images.csv is missing
    assert main(["monitor", "--data", str(tmp_path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert f"--data {tmp_path}" in err and "needs products.csv and images.csv" in err
