"""Hot swap under load: the served link is swapped to another bundle while requests arrive
every few milliseconds; no request fails, readiness stays 200, every answer comes whole from
one model or the other, and a tampered bundle swapped in is refused while the good one keeps
serving."""
import shutil
import threading
import time


from marketsearch import checksums
from marketsearch.publish import swap
from marketsearch.serving.process import model_server
from tests.serving.conftest import post

QUERY = {"instances": [{"product_name": "mountain bike, barely used", "k": 3}]}


def _variant(src, dst):
    """A copy of bundle ``src`` whose listings have other titles: every answer's neighbours
    differ, so each answer tells which bundle gave it."""
    import pandas as pd

    shutil.copytree(src, dst)
    meta = pd.read_parquet(dst / "index" / "metadata.parquet")
    meta["title"] = "bundle b: " + meta["title"].astype(str)
    meta.to_parquet(dst / "index" / "metadata.parquet", index=False)
    checksums.write(dst)
    return dst


def _ask(url):
    """One request: its status, its body, and when it began and ended."""
    start = time.perf_counter()
    status, body = post(f"{url}/v1/models/marketsearch:predict", QUERY)
    return status, body, start, time.perf_counter()


def _ready(url):
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_a_new_bundle_is_swapped_in_under_load_and_a_tampered_one_refused(bundle_dir, tmp_path):
    a = shutil.copytree(bundle_dir, tmp_path / "bundles" / "a")
    b = _variant(bundle_dir, tmp_path / "bundles" / "b")
    bad = shutil.copytree(b, tmp_path / "bundles" / "bad")
    data = bytearray((bad / "text.keras").read_bytes())
    data[len(data) // 2] ^= 1
    (bad / "text.keras").write_bytes(bytes(data))
    served = tmp_path / "served" / "marketsearch"
    served.parent.mkdir()
    swap(served, a)
    with model_server(served, tmp_path / "server.log",
                      extra_args=["--set", "serving.reload_interval_s=0.2"]) as srv:
        status, first, _, _ = _ask(srv.url)
        assert status == 200
        answer_a = first["predictions"][0]
        results, readiness, stop = [], [], threading.Event()

        def load():
            while not stop.is_set():
                results.append(_ask(srv.url))
                time.sleep(0.005)

        def probe():
            while not stop.is_set():
                readiness.append(_ready(srv.url))
                time.sleep(0.05)

        threads = [threading.Thread(target=load) for _ in range(3)] + [threading.Thread(target=probe)]
        for t in threads:
            t.start()
        try:
            time.sleep(1.0)
            swapped_at = time.perf_counter()
            swap(served, b)
            deadline = time.time() + 120
            while time.time() < deadline and not (
                    results and results[-1][1]["predictions"][0] != answer_a):
                time.sleep(0.1)
            time.sleep(1.0)
        finally:
            stop.set()
            for t in threads:
                t.join()
        # The client threads append in completion order, so a request begun before the
        # swap may land after one begun later: judge each answer by when it began.
        results.sort(key=lambda r: r[2])
        statuses = [s for s, _, _, _ in results]
        answers = [body["predictions"][0] for _, body, _, _ in results]
        assert statuses.count(200) == len(results), [s for s in statuses if s != 200][:5]
        assert set(readiness) == {200}, set(readiness)
        answer_b = answers[-1]
        assert answer_b != answer_a, "the swap never happened"
        assert all(ans in (answer_a, answer_b) for ans in answers), "an answer mixed the models"
        before = [ans for ans, (_, _, _, end) in zip(answers, results) if end < swapped_at]
        assert before and all(ans == answer_a for ans in before), "the new model answered early"
        first_b_end = min(end for ans, (_, _, _, end) in zip(answers, results) if ans == answer_b)
        after = [ans for ans, (_, _, start, _) in zip(answers, results) if start > first_b_end]
        assert after and all(ans == answer_b for ans in after), (
            "the old model answered a request begun after the new one had answered")
        during = [end - start for _, _, start, end in results if end >= swapped_at]
        print(f"\nhot swap under load: {len(results)} requests, "
              f"{len(results) - statuses.count(200)} errors, longest during the swap "
              f"{max(during) * 1000:.0f} ms, switched "
              f"{(first_b_end - swapped_at) * 1000:.0f} ms after the link moved")
        # a tampered bundle: refused, the good one keeps answering
        swap(served, bad)
        time.sleep(3.0)
        status, body, _, _ = _ask(srv.url)
        assert status == 200 and body["predictions"][0] == answer_b
        assert _ready(srv.url) == 200
        log = (tmp_path / "server.log").read_text()
        assert "hot swap: refusing" in log and "text.keras does not match" in log
