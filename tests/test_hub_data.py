"""`data=hub`: any dataset `datasets` reads, on local parquet/jsonl/csv fixtures made here, and
the hub's own failure modes against a server on 127.0.0.1 (the tests never reach the hub)."""

import http.server
import json
import threading

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import conftest
from conftest import cli
from dropsample import data, tokenizer
from dropsample.data import sources
from dropsample.errors import DataError

STORIES = [f"Story {i}: once upon a time there was a {'big ' * (i % 3)}cat number {i}.\n" for i in range(40)]


def hub_cfg(tmp_path, *overrides, cache="cache"):
    return conftest.compose(["data=hub", f"data.cache_dir={tmp_path / cache}", "data.tokenizer=char",
                             *overrides]).data


def quiet(*args):
    pass


@pytest.fixture()
def parquet_folder(tmp_path):
    """Two train shards, no validation split: datasets' shard naming, several documents."""
    folder = tmp_path / "stories"
    folder.mkdir()
    for shard in range(2):
        rows = STORIES[shard * 20 : (shard + 1) * 20]
        pq.write_table(pa.table({"text": rows, "id": list(range(len(rows)))}),
                       folder / f"train-0000{shard}-of-00002.parquet")
    return folder


def test_parquet_folder_without_val_carves_documents_and_joins_them(tmp_path, parquet_folder):
    d = data.prepare(hub_cfg(tmp_path, f"data.name={parquet_folder}"), log=quiet)
    info = d.describe()
    assert info["dataset"] == str(parquet_folder) and info["read_from"] == "data.name"
    assert info["carved"] == {"from": "train", "by": "documents", "val_fraction": 0.1, "test_fraction": None}
    assert info["sources"] == {"train": "train[documents 0:36]", "val": "train[documents 36:40]"}
    assert info["splits"]["train"]["documents"] == 36 and info["splits"]["val"]["documents"] == 4
    assert info["splits"]["val"]["characters"] == sum(map(len, STORIES[36:]))
    assert info["splits"]["train"]["bytes"] == sum(len(s.encode()) for s in STORIES[:36])
    eot = tokenizer.end_of_text_id(d.tokenizer)
    assert info["end_of_text_id"] == eot is not None
    ids = d.splits["val"].tolist()
    assert ids.count(eot) == 3, "four documents, three joins"
    assert tokenizer.decode(d.tokenizer, ids).split(tokenizer.END_OF_TEXT) == STORIES[36:]
    assert info["splits"]["val"]["tokens"] == len(ids) == sum(map(len, STORIES[36:])) + 3


def test_jsonl_splits_by_file_name_caps_and_test_fraction(tmp_path):
    folder = tmp_path / "j"
    folder.mkdir()
    for split, rows in (("train", STORIES[:30]), ("validation", STORIES[30:])):
        (folder / f"{split}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in rows))
    d = data.prepare(hub_cfg(tmp_path, f"data.name={folder}"), log=quiet)
    assert d.sources == {"train": "train.jsonl (train)", "val": "validation.jsonl (validation)"}
    assert d.describe()["carved"] is None and "test" not in d.splits
    assert d.describe()["splits"]["val"]["documents"] == 10
    capped = data.prepare(hub_cfg(tmp_path, f"data.name={folder}", "data.max_docs=5", "data.test_fraction=0.2"),
                          log=quiet)
    info = capped.describe()
    assert info["caps"] == {"max_docs": 5, "max_chars": None, "cut": ["train", "val"]}
    # test carved from the capped train split: 5 documents, 20% -> 1; val is the dataset's own
    assert info["carved"] == {"from": "train", "by": "documents", "val_fraction": None, "test_fraction": 0.2}
    assert {r: s["documents"] for r, s in info["splits"].items()} == {"train": 4, "val": 5, "test": 1}
    assert capped.cache_key != d.cache_key
    chars = data.prepare(hub_cfg(tmp_path, f"data.name={folder}", "data.max_chars=100"), log=quiet)
    assert chars.describe()["splits"]["val"]["characters"] == 100
    assert chars.cache_key not in (d.cache_key, capped.cache_key)


def test_streaming_with_a_cap_never_reads_past_it(tmp_path):
    """The second shard is broken JSON: streaming stops at the cap inside the first shard and
    never opens it; a full (non-streaming) read trips on it, as one line."""
    folder = tmp_path / "shards"
    folder.mkdir()
    (folder / "train-00000-of-00002.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in STORIES))
    (folder / "train-00001-of-00002.jsonl").write_text("{broken json\n" * 3)
    d = data.prepare(hub_cfg(tmp_path, f"data.name={folder}", "data.max_docs=20"), log=quiet)
    assert d.describe()["splits"]["train"]["documents"] + d.describe()["splits"]["val"]["documents"] == 20
    with pytest.raises(DataError, match=r"^data.name: cannot (open|read) .*(JSON|json)") as err:
        # (a fresh cache: streaming changes no numbers, so the same settings would just read the cache)
        data.prepare(hub_cfg(tmp_path, f"data.name={folder}", "data.max_docs=20", "data.streaming=false",
                             cache="other"), log=quiet)
    assert "\n" not in str(err.value)


def test_csv_text_column_and_the_column_error(tmp_path):
    f = tmp_path / "rows.csv"
    f.write_text("title,content\n" + "".join(f"t{i},\"{s.strip()}\"\n" for i, s in enumerate(STORIES)))
    with pytest.raises(DataError, match=r"^data.text_column: no column 'text' .*it has title, content"):
        data.prepare(hub_cfg(tmp_path, f"data.name={f}"), log=quiet)
    d = data.prepare(hub_cfg(tmp_path, f"data.name={f}", "data.text_column=content"), log=quiet)
    assert d.describe()["text_column"] == "content"
    assert tokenizer.decode(d.tokenizer, d.splits["val"]).split(tokenizer.END_OF_TEXT) == [s.strip() for s in STORIES[36:]]


def test_hub_datasets_are_keyed_by_commit_and_reused_offline(tmp_path, parquet_folder, monkeypatch):
    """The hub's answers stand in for the network here: its commit for a revision, its files
    (the local parquet shards). What is tested is dropsample's use of them."""
    import datasets

    real_load = datasets.load_dataset
    commits, loads = {"main": "a" * 40}, []

    def fake_load(name, config=None, revision=None, streaming=False, **kwargs):
        assert name == "someone/stories" and revision == commits["main"]
        loads.append(revision)
        return real_load("parquet", data_dir=str(parquet_folder), streaming=streaming)

    monkeypatch.setattr(sources, "_hub_commit", lambda name, revision, fix: commits[revision or "main"])
    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    monkeypatch.delenv("HF_DATASETS_OFFLINE")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    first = data.prepare(hub_cfg(tmp_path, "data.name=someone/stories"), log=quiet)
    assert first.describe()["revision"] == "a" * 40 and first.describe()["dataset"] == "someone/stories"
    assert loads == ["a" * 40]
    again = data.prepare(hub_cfg(tmp_path, "data.name=someone/stories"), log=quiet)
    assert again.cache_key == first.cache_key and loads == ["a" * 40], "same commit: the cache, no reading"
    # offline: the last commit seen for `main` finds the cache without asking the hub
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    messages = []
    offline = data.prepare(hub_cfg(tmp_path, "data.name=someone/stories"), log=messages.append)
    assert offline.cache_key == first.cache_key and "offline: using someone/stories at commit aaaaaaaaaaaa" in messages[0]
    monkeypatch.delenv("HF_HUB_OFFLINE")
    commits["main"] = "b" * 40  # the dataset moved on: a new commit, a new cache entry
    moved = data.prepare(hub_cfg(tmp_path, "data.name=someone/stories"), log=quiet)
    assert moved.cache_key != first.cache_key and loads == ["a" * 40, "b" * 40]
    assert moved.describe()["revision"] == "b" * 40


class FakeHub(http.server.BaseHTTPRequestHandler):
    """Answers every request as the hub answers for a repository that does not exist."""

    def do_GET(self):
        self.server.requests.append(self.path)
        body = json.dumps({"error": "Repository not found"}).encode()
        self.send_response(404)
        self.send_header("X-Error-Code", "RepoNotFound")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_HEAD = do_GET

    def log_message(self, *args):
        pass


def test_cli_hub_dataset_that_does_not_exist_is_one_line(tmp_path, monkeypatch):
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    httpd.requests = []
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{httpd.server_address[1]}")
        monkeypatch.setenv("DROPSAMPLE_CACHE_DIR", str(tmp_path / "cache"))
        for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
            monkeypatch.delenv(var)
        result = cli("train", "data=hub", "data.name=nobody/no-such-dataset", cwd=tmp_path)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1] == (
        "error: data.name: no dataset 'nobody/no-such-dataset' on the hub (or it is private) and no such local "
        "file or folder; check the id or the path")
    assert "Traceback" not in result.stderr
    assert any(r.startswith("/api/datasets/nobody/no-such-dataset") for r in httpd.requests), httpd.requests
    assert not list(tmp_path.rglob("summary.json")), "no run folder claims anything"


def test_tinystories_preset_offline_is_one_line(tmp_path):
    cfg = conftest.compose(["data=tinystories", f"data.cache_dir={tmp_path}"]).data
    assert (cfg.name, cfg.splits["val"], cfg.max_docs, cfg.streaming) == ("roneneldan/TinyStories", "validation",
                                                                          20000, True)
    with pytest.raises(DataError, match=r"^data.name: hub dataset 'roneneldan/TinyStories' is not available offline"):
        data.prepare(cfg, log=quiet)
