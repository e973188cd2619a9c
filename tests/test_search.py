"""mclip_hbt.search: captions find their pictures in any language, re-indexing equals indexing afresh, a stopped run
resumes, bad files are listed, and the page's server answers only about what is in the index."""
from __future__ import annotations

import io
import json
import shutil
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import uvicorn
from conftest import free_port
from known_models import COLOURS, NAMES, colour_model
from PIL import Image

from mclip_hbt.model.clip import create_model
from mclip_hbt.search.__main__ import main as search_main
from mclip_hbt.search.catalog import Catalog, SearchIndexError
from mclip_hbt.search.indexing import index_folder
from mclip_hbt.search.querying import MAX_QUERY_CHARS, SearchIndex
from mclip_hbt.search.server import create_app


def paint(path: Path, colour: tuple[int, int, int], fmt: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (24, 16), colour).save(path, fmt)


def write_pictures(root: Path) -> Path:
    """One picture per colour, in the formats the indexer reads, one in a sub-folder."""
    suffixes = ["png", "jpg", "webp", "gif", "png", "png", "png"]
    for i, (colour, suffix) in enumerate(zip(COLOURS, suffixes)):
        paint(root / ("sub" if i == 6 else "") / f"c{i}.{suffix}", colour)
    return root


@pytest.fixture
def pictures(tmp_path) -> Path:
    return write_pictures(tmp_path / "pictures")


def build(pictures: Path, out: Path, **kw):
    return index_folder(pictures, out, colour_model(), "colours", num_workers=0, progress=False, **kw)


def catalog_vectors(folder: Path) -> dict[str, np.ndarray]:
    with Catalog(folder, readonly=True) as catalog:
        paths = {row.id: path for path, row in catalog.rows().items()}
        return {paths[i]: v for ids, vectors in catalog.vectors() for i, v in zip(ids.tolist(), vectors)}


def answers(folder: Path) -> dict[str, list[tuple[float, str]]]:
    """Every name's ranking of every picture as (score, path), sorted: ties may come in another order."""
    return answers_of(SearchIndex(folder, model=colour_model()))


def answers_of(index: SearchIndex) -> dict[str, list[tuple[float, str]]]:
    names = [name for names in NAMES.values() for name in names]
    return {name: sorted((-h.score, h.path) for h in index.by_texts([name], len(index))[0][0]) for name in names}


@pytest.mark.parametrize("mode", ["exact", "approximate"])
def test_a_caption_finds_its_own_picture_in_three_languages(pictures, tmp_path, mode):
    report = build(pictures, tmp_path / "index")
    assert (report.images, report.encoded, report.skipped) == (len(COLOURS), len(COLOURS), [])
    index = SearchIndex(tmp_path / "index", model=colour_model(), mode=mode)
    assert index.mode == mode
    own = {i: path for path in catalog_vectors(tmp_path / "index") for i in [int(Path(path).stem[1:])]}
    for lang in ("en", "de", "yo"):
        for i, name in enumerate(NAMES[lang]):
            hits, _ = index.by_texts([name], 1)
            assert hits[0][0].path == own[i] and hits[0][0].score == pytest.approx(1.0)
    hits, pairs = index.by_texts([NAMES["de"][0], NAMES["en"][0], NAMES["yo"][0]], 3)
    assert [p.overlap for p in pairs] == [1.0, 1.0, 1.0]
    assert all(p.rank_correlation == pytest.approx(1.0) for p in pairs)
    assert [h.path for h in index.by_id(hits[0][0].id, 1)] == [own[0]]


def test_an_incremental_update_gives_what_a_fresh_index_gives(pictures, tmp_path):
    build(pictures, tmp_path / "incremental")
    (pictures / "c1.jpg").unlink()                                     # deleted
    paint(pictures / "c0.png", COLOURS[2])                             # changed: red to blue
    paint(pictures / "new" / "c7.png", COLOURS[1])                     # added
    shutil.copy2(pictures / "c3.gif", pictures / "c3_copy.gif")        # added: same bytes, other name
    (pictures / "c4.png").touch()                                      # new time stamp, same bytes
    report = build(pictures, tmp_path / "incremental")
    assert (report.encoded, report.removed, report.unchanged) == (3, 2, 5)  # c0 changed: removed, then encoded
    build(pictures, tmp_path / "fresh")
    incremental, fresh = catalog_vectors(tmp_path / "incremental"), catalog_vectors(tmp_path / "fresh")
    assert sorted(incremental) == sorted(fresh) and all(np.array_equal(incremental[p], fresh[p]) for p in fresh)
    assert answers(tmp_path / "incremental") == answers(tmp_path / "fresh")
    with Catalog(tmp_path / "incremental", readonly=True) as catalog:  # the edited inverted file holds as many vectors
        assert SearchIndex(tmp_path / "incremental", model=colour_model(), mode="approximate").mode == "approximate"
        stamp = json.loads((tmp_path / "incremental" / "vectors.json").read_text())
        assert stamp["count"] == len(catalog) and stamp["trained_on"] == len(COLOURS)  # edited, not rebuilt


def test_a_stopped_index_run_resumes_where_it_stopped(pictures, tmp_path):
    model, batches = colour_model(), []
    embed = model.embed_pixels

    def stopped_on_the_third_batch(pixels):
        batches.append(len(pixels))
        if batches.count(2) == 3:  # (one picture alone is the probe of the embedding width)
            raise KeyboardInterrupt  # Ctrl-C while the third batch is encoded
        return embed(pixels)

    model.embed_pixels = stopped_on_the_third_batch
    with pytest.raises(KeyboardInterrupt):
        index_folder(pictures, tmp_path / "index", model, "colours", batch_size=2, commit_every=2, num_workers=0,
                     progress=False)
    with Catalog(tmp_path / "index", readonly=True) as catalog:
        assert len(catalog) == 4  # two committed batches of two
    with pytest.raises(SearchIndexError, match="stopped"):  # the inverted file was never saved: no stale answers
        SearchIndex(tmp_path / "index", model=colour_model(), mode="approximate")
    report = build(pictures, tmp_path / "index")
    assert (report.encoded, report.unchanged, report.images) == (3, 4, len(COLOURS))
    build(pictures, tmp_path / "fresh")
    assert answers(tmp_path / "index") == answers(tmp_path / "fresh")
    assert SearchIndex(tmp_path / "index", model=colour_model(), mode="approximate").mode == "approximate"


def test_a_damaged_inverted_file_is_refused_then_rebuilt_by_the_next_index_run(pictures, tmp_path):
    build(pictures, tmp_path / "index")
    ann = tmp_path / "index" / "vectors.faiss"
    ann.write_bytes(ann.read_bytes()[:100])  # cut short
    with pytest.raises(SearchIndexError, match="stopped"):
        SearchIndex(tmp_path / "index", model=colour_model(), mode="approximate")
    ann.write_bytes(b"\0" * ann.stat().st_size)  # the size it was saved at, but not an index
    json_stamp = tmp_path / "index" / "vectors.json"
    json_stamp.write_text(json.dumps({**json.loads(json_stamp.read_text()), "bytes": ann.stat().st_size}))
    with pytest.raises(SearchIndexError, match="not a readable inverted file"):
        SearchIndex(tmp_path / "index", model=colour_model(), mode="approximate")
    ann.write_bytes(b"")
    assert build(pictures, tmp_path / "index").encoded == 0  # nothing to encode; the inverted file is rebuilt
    assert answers(tmp_path / "index") == answers_of(SearchIndex(tmp_path / "index", model=colour_model(),
                                                                 mode="approximate"))


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> tuple[Path, Path]:
    """Two saved tiny models: the same architecture, other random weights."""
    root = tmp_path_factory.mktemp("models")
    for name in ("a", "b"):
        create_model("tiny").save_pretrained(root / name)
    return root / "a", root / "b"


def test_bad_files_are_skipped_listed_and_tried_again_once_changed(pictures, tiny_models, tmp_path, capsys):
    (pictures / "truncated.png").write_bytes((pictures / "c0.png").read_bytes()[:40])
    (pictures / "text.jpg").write_text("not a picture")
    (pictures / "empty.webp").write_bytes(b"")
    (pictures / "notes.txt").write_text("not looked at")
    args = ["index", str(pictures), "--out", str(tmp_path / "index"), "--num-workers", "0", "--no-progress"]
    assert search_main([*args, "--model", str(tiny_models[0])]) == 0
    out = capsys.readouterr().out
    assert f"{len(COLOURS)} pictures indexed" in out and "3 file(s) skipped" in out
    listed = (tmp_path / "index" / "skipped.tsv").read_text().splitlines()
    assert [line.split("\t")[0] for line in listed] == ["empty.webp", "text.jpg", "truncated.png"]
    assert search_main(args) == 0  # the index's own model; nothing changed, nothing tried again
    assert "this run encoded 0" in capsys.readouterr().out
    paint(pictures / "text.jpg", COLOURS[0])
    assert search_main(args) == 0
    out = capsys.readouterr().out
    assert "this run encoded 1 " in out and "2 file(s) skipped" in out


def test_another_model_is_refused_by_query_and_index(pictures, tiny_models, tmp_path, capsys):
    model_a, model_b = map(str, tiny_models)
    index = tmp_path / "index"
    assert search_main(["index", str(pictures), "--out", str(index), "--model", model_a, "--num-workers", "0",
                        "--no-progress"]) == 0
    assert search_main(["query", str(index), "red", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out.splitlines()[-1])["queries"][0]["hits"]) == 7
    for argv in (["query", str(index), "red", "--model", model_b],
                 ["index", str(pictures), "--out", str(index), "--model", model_b, "--no-progress"]):
        with pytest.raises(SystemExit) as exit_info:
            search_main(argv)
        assert exit_info.value.code == 2 and "was built with the model" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["index", "{pictures}", "--out", "{tmp}/new"], "--model is required"),
    (["index", "{pictures}", "--out", "{pictures}", "--model", "tiny"], "holds files this command did not write"),
    (["index", "{tmp}/nowhere", "--out", "{tmp}/new", "--model", "tiny"], "is not a folder of pictures"),
    (["query", "{pictures}", "red"], "is not a search index"),
])
def test_bad_arguments_are_refused_before_any_work(pictures, tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        search_main([a.format(pictures=pictures, tmp=tmp_path) for a in argv])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The page's server, on a real uvicorn on 127.0.0.1, over the colour pictures' index."""
    tmp_path = tmp_path_factory.mktemp("served")
    pictures = write_pictures(tmp_path / "pictures")
    outside = tmp_path / "outside.png"
    paint(outside, COLOURS[0])
    (pictures / "link.png").symlink_to(outside)  # a link out of the folder is never indexed, so never served
    build(pictures, tmp_path / "index")
    app = create_app(SearchIndex(tmp_path / "index", model=colour_model()), model_name="colours")
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{uv.config.port}"
    uv.should_exit = True
    thread.join(timeout=10)


def get(url: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.read(), response.headers.get("content-type", "")
    except urllib.error.HTTPError as err:
        return err.code, err.read(), err.headers.get("content-type", "")


def search_url(base: str, q: str, k: int = 3, also: tuple[str, ...] = ()) -> str:
    return f"{base}/api/search?" + urllib.parse.urlencode([("q", q), ("k", k), *(("also", a) for a in also)])


def test_the_server_answers_in_several_languages_and_serves_indexed_files(server):
    status, body, _ = get(search_url(server, "rot", also=("red", "pupa")))
    answer = json.loads(body)
    assert status == 200 and [q["hits"][0]["path"] for q in answer["queries"]] == ["c0.png"] * 3
    assert answer["agreement"]["mean_overlap"] == 1.0 and len(answer["agreement"]["pairs"]) == 3
    first = answer["queries"][0]["hits"][0]["id"]
    status, body, kind = get(f"{server}/thumb/{first}")
    assert status == 200 and kind == "image/jpeg" and Image.open(io.BytesIO(body)).size == (24, 16)
    status, body, _ = get(f"{server}/api/similar/{first}?k=2")
    assert status == 200 and json.loads(body)["hits"][0]["id"] == first
    status, body, kind = get(server + "/")
    assert status == 200 and kind.startswith("text/html") and b"/static/app.js" in body
    assert json.loads(get(f"{server}/api/info")[1])["images"] == len(COLOURS)


@pytest.mark.parametrize("path", [
    "/image/999999", "/thumb/-1", "/image/..%2F..%2Fetc%2Fpasswd", "/image/%2Fetc%2Fpasswd", "/static/..%2F__init__.py",
    "/static/%2E%2E/catalog.py", "/../../etc/passwd", "/image/1/../../outside.png"])
def test_no_url_reaches_outside_the_index(server, path):
    status, body, _ = get(server + path)
    assert 400 <= status < 500 and b"import" not in body and b"root:" not in body


@pytest.mark.parametrize("query, message", [
    ({"q": "x" * (MAX_QUERY_CHARS + 1)}, f"at most {MAX_QUERY_CHARS} characters"),
    ({"q": "rot", "also": "x" * (MAX_QUERY_CHARS + 1)}, f"at most {MAX_QUERY_CHARS} are searched"),
    ({"q": "rot", "k": "1000"}, "less than or equal to 100"),
    ({"q": "rot", "k": "ten"}, "k:"),
    ({"q": "   "}, "empty"),
    ({}, "q: Field required"),
])
def test_a_bad_request_gets_a_4xx_with_a_message(server, query, message):
    status, body, kind = get(f"{server}/api/search?" + urllib.parse.urlencode(query))
    assert 400 <= status < 500 and kind == "application/json" and message in json.loads(body)["detail"]


def test_twenty_concurrent_queries_are_all_answered(server):
    names = [NAMES[lang][i % len(COLOURS)] for i, lang in zip(range(20), ["en", "de", "yo"] * 7)]
    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(lambda name: get(search_url(server, name, k=1)), names))
    assert [status for status, _, _ in results] == [200] * 20
    expected = {name: f"c{i}" for names_of in NAMES.values() for i, name in enumerate(names_of)}
    assert [Path(json.loads(body)["queries"][0]["hits"][0]["path"]).stem for _, body, _ in results] == [
        expected[name] for name in names]
