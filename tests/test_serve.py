"""Serving: a run loaded from its artifacts ranks as it was evaluated; requests are validated and
fall back as documented; the real HTTP server answers real requests, bad ones included."""

from __future__ import annotations

import json
import pickle
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests
import torch
from omegaconf import OmegaConf

from conftest import compose_config
from recozoo.ensemble import fuse_sweep
from recozoo.ensemble.fusion import FusionSpec
from recozoo.serve.engine import Engine, Query, RequestError
from recozoo.serve.loading import RunLoadError, load_run
from recozoo.serve.process import ServerProcess
from recozoo.train import run


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """A tiny sweep folder with an EASE run (history-based) and a BPR run (user embeddings)."""
    folder = tmp_path_factory.mktemp("sweep")
    for model in ("ease", "bpr"):
        run(compose_config([f"model={model}"], folder / model))
    return folder


@pytest.fixture(scope="module")
def ease(sweep) -> Engine:
    return Engine.load(sweep / "ease")


@pytest.fixture(scope="module")
def bpr(sweep) -> Engine:
    return Engine.load(sweep / "bpr")


def evaluation_queries(engine: Engine, run_dir: Path) -> tuple[list[int], list[Query]]:
    """Each test user's query with the evaluation inputs (every known item but the held-out
    test items)."""
    targets = pd.read_parquet(run_dir / "targets_test.parquet")
    users = sorted(targets["user"].unique())
    held_out = targets.groupby("user")["item"].apply(set)
    queries = []
    for user in users:
        known = engine.catalog.user_history(user)
        inputs = np.array([i for i in known if i not in held_out[user]], dtype=np.int64)
        queries.append(Query(user_id=None, user=int(user), inputs=inputs, strategy="user",
                             fallback=None, k=10))
    return users, queries

def assert_ranks_as_evaluated(engine: Engine, run_dir: Path) -> None:
    rankings = pd.read_parquet(run_dir / "rankings_test.parquet")
    users, queries = evaluation_queries(engine, run_dir)
    for user, (items, _) in zip(users, engine.rank(queries)):
        expected = rankings[rankings["user"] == user].sort_values("rank")["item"].head(10)
        assert items.tolist() == expected.tolist(), user

@pytest.mark.parametrize("model", ["ease", "bpr"])
def test_served_model_ranks_as_evaluated(sweep, model):
    # the model rebuilt from config.yaml + items.parquet and its checkpoint gives the evaluated
    # top-10 of every test user
    assert_ranks_as_evaluated(Engine.load(sweep / model), sweep / model)

@pytest.fixture(scope="module")
def reranked(tmp_path_factory) -> Path:
    """Runs whose evaluated lists are not the top of the model's scores: re-ranked ones
    (``rerank=``) and a sequence model (its input is the order of the history)."""
    folder = tmp_path_factory.mktemp("reranked")
    for name, overrides in (("bpr_xquad", ["model=bpr", "rerank=xquad", "rerank.weight=0.6"]),
                            ("ease_calibrated", ["model=ease", "rerank=calibrated",
                                                 "rerank.weight=0.7"]),
                            ("sasrec", ["model=sasrec"])):
        run(compose_config(overrides, folder / name))
    return folder


@pytest.mark.parametrize("name", ["bpr_xquad", "ease_calibrated", "sasrec"])
def test_served_lists_are_the_evaluated_lists(reranked, name):
    """A served run ranks through the run's own re-ranker: every test user's top-10 is the
    evaluated one (before, serving skipped ``rerank=`` and served the model's plain order)."""
    engine = Engine.load(reranked / name)
    assert engine.scorer.ranker.reranker is not None or name == "sasrec"
    assert_ranks_as_evaluated(engine, reranked / name)


def test_reranking_changes_the_lists_it_serves(reranked):
    # the check above could pass vacuously if the re-ranker never moved an item
    rankings = pd.read_parquet(reranked / "bpr_xquad" / "rankings_test.parquet")
    engine = Engine.load(reranked / "bpr_xquad")
    engine.scorer.ranker.reranker = None
    users, queries = evaluation_queries(engine, reranked / "bpr_xquad")
    plain = [items.tolist() for items, _ in engine.rank(queries)]
    evaluated = [rankings[rankings["user"] == u].sort_values("rank")["item"].head(10).tolist()
                 for u in users]
    assert plain != evaluated


def test_served_fusion_of_reranked_members_ranks_as_evaluated(reranked, tmp_path):
    # a run composed outside a Hydra app names its re-ranker by class; the fusion then values
    # its lists by position (not by the model scores they keep), served and evaluated alike
    assert json.loads((reranked / "bpr_xquad" / "metrics.json").read_text())["rerank"] == "xquad"
    (fusion,) = fuse_sweep([reranked / "bpr_xquad", reranked / "sasrec"],
                           out_dir=tmp_path / "fusion")
    members = json.loads((fusion / "fusion.json").read_text())["members"]
    assert [m["valued_by"] for m in members] == ["position", "score"]
    assert_ranks_as_evaluated(Engine.load(fusion), fusion)


def test_served_fusion_ranks_as_evaluated(sweep, tmp_path):
    (fusion,) = fuse_sweep(sweep, out_dir=tmp_path / "fusion")
    engine = Engine.load(fusion)
    assert engine.scorer.name == "fusion(bpr,ease)" or engine.scorer.name == "fusion(ease,bpr)"
    assert_ranks_as_evaluated(engine, fusion)

def test_served_reciprocal_rank_fusion_ranks_as_evaluated(sweep, tmp_path):
    """Reciprocal rank fusion's scores tie wherever two members put two items at the same
    places; the fused lists and the service both take equal scores in item order
    (`recozoo.top_k`), so they agree there too. Members chosen on validation: the service
    loads those alone and ranks as the fused lists."""
    (fusion,) = fuse_sweep(sweep, FusionSpec(method="rrf", rrf_members="all"),
                           out_dir=tmp_path / "rrf")
    rankings = pd.read_parquet(fusion / "rankings_test.parquet")
    top = rankings[rankings["rank"] <= 11]
    assert top.duplicated(["user", "score"]).any()  # ties within the lists checked
    assert_ranks_as_evaluated(Engine.load(fusion), fusion)
    (chosen,) = fuse_sweep(sweep, FusionSpec(method="rrf"), out_dir=tmp_path / "rrf_chosen")
    description = json.loads((chosen / "fusion.json").read_text())
    used = [m["model"] for m in description["members"]]
    assert len(used) + len(description["left_out"]) == len(description["weights"])
    engine = Engine.load(chosen)
    assert engine.scorer.name == f"fusion({','.join(used)})"
    assert_ranks_as_evaluated(engine, chosen)


def test_loading_never_touches_the_raw_data(sweep, tmp_path):
    # a run whose data source can no longer be built still serves: only artifacts are read
    copy = tmp_path / "ease"
    for path in (sweep / "ease").rglob("*"):
        if path.is_file():
            target = copy / path.relative_to(sweep / "ease")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    cfg = OmegaConf.load(copy / "config.yaml")
    cfg.data.source._target_ = "no.such.Source"
    OmegaConf.save(cfg, copy / "config.yaml")
    assert Engine.load(copy).recommend([Engine.load(copy).parse({"user_id": "u1", "k": 3})])

class _Payload:
    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))

def test_checkpoint_with_objects_is_refused_unexecuted(sweep, tmp_path):
    marker = tmp_path / "executed"
    payload = _Payload()
    payload.marker = str(marker)
    state = torch.load(sweep / "ease" / "checkpoints" / "last.ckpt", weights_only=True)
    state["evil"] = payload
    bad = tmp_path / "evil.ckpt"
    with open(bad, "wb") as handle:
        pickle.dump(state, handle)
    with pytest.raises(RunLoadError, match="not a weights-only checkpoint"):
        from recozoo.serve.loading import load_model
        load_model(sweep / "ease", bad)
    assert not marker.exists()

def test_checkpoint_path_and_missing_run(sweep, tmp_path):
    loaded = load_run(sweep / "bpr" / "checkpoints" / "best.ckpt")
    assert loaded.path == sweep / "bpr" and loaded.scorer.name == "bpr"
    with pytest.raises(RunLoadError, match="does not exist"):
        load_run(tmp_path / "nothing")
    with pytest.raises(RunLoadError, match="config.yaml not found"):
        load_run(tmp_path)

def test_known_user_gets_unseen_items_with_ids_titles_scores(ease):
    (answer,) = ease.recommend([ease.parse({"user_id": "u1", "k": 5})])
    assert answer["strategy"] == "user" and answer["fallback"] is None
    assert len(answer["items"]) == 5
    seen = set(ease.catalog.item_ids[ease.catalog.user_history(ease.catalog.user_index["u1"])])
    assert not seen & {item["item_id"] for item in answer["items"]}
    scores = [item["score"] for item in answer["items"]]
    assert scores == sorted(scores, reverse=True)
    assert all(item["title"] and item["category"] for item in answer["items"])
    (with_seen,) = ease.recommend([ease.parse({"user_id": "u1", "k": 80,
                                               "exclude_seen": False})])
    assert seen <= {item["item_id"] for item in with_seen["items"]}

def test_history_of_a_new_user_is_scored_by_a_history_model(ease):
    history = ["i1", "i2", "i3"]
    (anonymous, unknown) = ease.recommend([ease.parse({"history": history, "k": 5}),
                                           ease.parse({"user_id": "new", "history": history,
                                                       "k": 5})])
    assert anonymous["strategy"] == unknown["strategy"] == "history"
    assert anonymous["fallback"] is None and "unknown" in unknown["fallback"]
    assert anonymous["items"] == unknown["items"]
    assert not set(history) & {item["item_id"] for item in anonymous["items"]}

def test_user_embedding_model_falls_back_to_popularity_and_says_so(bpr):
    (answer,) = bpr.recommend([bpr.parse({"history": ["i1"], "k": 3})])
    assert answer["strategy"] == "popularity" and "bpr" in answer["fallback"]
    others = bpr.catalog.items.drop(index=bpr.catalog.item_index["i1"])
    top = others["popularity"].sort_values(ascending=False).head(3).tolist()
    assert [item["score"] for item in answer["items"]] == top  # ties may come in any order
    assert "i1" not in {item["item_id"] for item in answer["items"]}
    (nobody,) = bpr.recommend([bpr.parse({"user_id": "nobody", "k": 3})])
    assert nobody["strategy"] == "popularity" and "nobody" in nobody["fallback"]

def test_category_filter_and_tail_boost(ease):
    category = ease.catalog.item_category_name[ease.catalog.item_index["i1"]]
    (answer,) = ease.recommend([ease.parse({"user_id": "u2", "k": 5, "category": category})])
    assert answer["items"] and all(i["category"] == category for i in answer["items"])
    # a user whose history is mostly tail items: full xQuAD weight lists more tail items
    share = [ease.catalog.is_tail[ease.catalog.user_history(u)].mean()
             for u in range(ease.catalog.n_users)]
    user_id = str(ease.catalog.user_ids[int(np.argmax(share))])
    plain, boosted = ease.recommend([ease.parse({"user_id": user_id, "k": 10}),
                                     ease.parse({"user_id": user_id, "k": 10, "tail_boost": 1.0})])
    n_tail = [sum(i["is_tail"] for i in a["items"]) for a in (plain, boosted)]
    assert n_tail[1] > n_tail[0]
    # tail slots at 0.3: places 4, 7 and 10 hold tail items; the list is the model's top 7 and
    # the 3 best tail items below them
    (slotted,) = ease.recommend([ease.parse({"user_id": user_id, "k": 10, "tail_slots": 0.3})])
    (deep,) = ease.recommend([ease.parse({"user_id": user_id, "k": 40})])
    order = [(i["item_id"], i["is_tail"]) for i in deep["items"]]
    below = [item for item, is_tail in order[7:] if is_tail][:3]
    assert all(slotted["items"][p]["is_tail"] for p in (3, 6, 9))
    assert {i["item_id"] for i in slotted["items"]} == {item for item, _ in order[:7]} | set(below)

@pytest.mark.parametrize("body, field, text", [
    ({"history": ["i1", "nope", "gone"]}, "history", "'nope', 'gone'"),
    ({"user_id": "u1", "k": 81}, "k", "1..80"),
    ({"user_id": "u1", "category": "no such"}, "category", "unknown category"),
    ({"k": 3}, None, "user_id"),
    ({"user_id": "u1", "tail_boost": 0.3, "tail_slots": 0.2}, "tail_slots", "not both"),
])
def test_bad_requests_are_explained(ease, body, field, text):
    with pytest.raises(RequestError) as error:
        ease.parse(body)
    (detail,) = error.value.errors
    assert text in detail["msg"] and (field is None or detail["loc"][-1] == field)

# ---------------------------------------------------------------------------- the real server
@pytest.fixture(scope="module")
def server(sweep, tmp_path_factory):
    log = tmp_path_factory.mktemp("server") / "server.log"
    with ServerProcess(sweep / "ease", startup_timeout=240, log_file=log, accelerator="cpu",
                       max_batch_size=8, batch_timeout=0.05) as process:
        yield process
    assert process.process.poll() is not None  # stopped

def post(server, body, **kwargs) -> requests.Response:
    data = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return requests.post(server.url + "/predict", data=data, timeout=30,
                         headers={"Content-Type": "application/json"}, **kwargs)

def test_http_health_schema_and_answers(server):
    assert requests.get(server.url + "/health", timeout=10).text == "ok"
    schema = requests.get(server.url + "/openapi.json", timeout=10).json()
    assert "/predict" in schema["paths"]
    assert {"user_id", "history", "k", "exclude_seen", "tail_boost", "tail_slots",
            "category"} <= set(
        schema["components"]["schemas"]["RecommendRequest"]["properties"])
    known = post(server, {"user_id": "u1", "k": 4})
    assert known.status_code == 200
    body = known.json()
    assert body["strategy"] == "user" and body["model"] == "ease" and len(body["items"]) == 4
    assert {"item_id", "title", "score"} <= set(body["items"][0])
    new = post(server, {"user_id": "stranger", "k": 3}).json()
    assert new["strategy"] == "popularity" and "stranger" in new["fallback"]

@pytest.mark.parametrize("body, status, text", [
    ({"history": ["i1", "zzz"], "k": 3}, 422, "zzz"),
    ({"user_id": "u1", "k": 0}, 422, "greater than or equal to 1"),
    ({"user_id": "u1", "k": 81}, 422, "1..80"),
    ('{"user_id": "u1", "k": ', 400, "malformed JSON"),
    ("not json at all", 400, "malformed JSON"),
    ({"user_id": "u1", "k": "ten"}, 422, "integer"),
    ({"user_id": "u1", "kk": 3}, 422, "Extra inputs"),
])
def test_http_bad_requests(server, body, status, text):
    answer = post(server, body)
    assert answer.status_code == status
    assert text in answer.text
    assert "Traceback" not in answer.text and "File \"" not in answer.text
    if status == 422 and isinstance(body, dict) and "history" in body:
        assert answer.json()["detail"][0]["unknown_items"] == ["zzz"]

def test_http_batch_with_a_bad_request_answers_each_alone(server):
    # concurrent requests are batched; the bad one must not fail the good ones of its batch
    bodies = [{"user_id": f"u{i}", "k": 3} for i in range(1, 12)] + [{"history": ["zzz"]}]
    with ThreadPoolExecutor(len(bodies)) as pool:
        answers = list(pool.map(lambda body: post(server, body), bodies))
    assert [a.status_code for a in answers] == [200] * 11 + [422]
    assert [a.json()["user_id"] for a in answers[:11]] == [f"u{i}" for i in range(1, 12)]


@pytest.mark.slow
def test_load_test_reports_latency_and_throughput(sweep):
    from recozoo.serve.loadtest import load_test

    figures = load_test(sweep / "ease", requests=24, clients=4, time_cap=60, accelerator="cpu",
                        startup_timeout=240, verbose=False)
    for phase in ("single", "batched"):
        result = figures[phase]
        assert result["requests"] == 24 and result["failures"] == 0
        assert 0 < result["p50_ms"] <= result["p99_ms"] <= result["max_ms"] and result["rps"] > 0
