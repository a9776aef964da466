"""`genrec serve` end to end: a real Ray Serve app on 127.0.0.1 over small checkpoints made here
(a tiny recommender on prepared synthetic data, a tiny CV->JD generator, a tiny reward model), every
endpoint over HTTP, a table of bad requests, a schemathesis fuzz of the OpenAPI schema and a burst
of concurrent requests; last, the faults: the Recommender replica killed under load, and `genrec
serve` stopped by SIGTERM."""
import concurrent.futures
import socket
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest
import yaml

from conftest import synth_and_prepare
from genrec.config import ServeConfig, TinyModel
from genrec.config_loader import load_config

MAX_K, MAX_HISTORY, MAX_CV_CHARS = 20, 5, 2000
TINY = dict(vocab_size=600, hidden=32, layers=1, heads=2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_recommender(root: Path) -> dict:
    from genrec.models.loading import load_model_and_tokenizer, save_checkpoint

    synth_and_prepare(root, num_users=60, num_items=80, history_len=5)
    catalog = pq.read_table(root / "prepared" / "catalog.parquet")
    model, tokenizer = load_model_and_tokenizer("tiny", texts=catalog.column("title").to_pylist(), device="cpu",
                                                tiny_size=TinyModel(**TINY))
    save_checkpoint(root / "rec", model, tokenizer, "sft", {"model": "tiny"}, {"valid_loss": 4.25})
    return {"ids": catalog.column("item_id").to_pylist(), "titles": catalog.column("title").to_pylist()}


def make_job_models(root: Path) -> None:
    """synthetic CVs and JDs, an (untrained) tiny generator checkpoint and tiny reward checkpoint."""
    from genrec.girl.market import synth_jobs
    from genrec.girl.reward import build_reward_model, build_tiny_tokenizer, save_reward
    from genrec.models.loading import load_model_and_tokenizer, save_checkpoint

    synth_jobs(root / "jobs", num_cvs=30, num_jds=40, seed=0)
    texts = (pq.read_table(root / "jobs" / "cvs.parquet").column("text").to_pylist()
             + pq.read_table(root / "jobs" / "jds.parquet").column("text").to_pylist())
    model, tokenizer = load_model_and_tokenizer("tiny", texts=texts, device="cpu", tiny_size=TinyModel(**TINY))
    save_checkpoint(root / "gen", model, tokenizer, "sft", {"model": "tiny"}, {"valid_loss": 5.5})
    reward_tokenizer = build_tiny_tokenizer(texts, 600)
    reward = build_reward_model("tiny", reward_tokenizer, tiny_size=TinyModel(hidden=32, layers=1, heads=2), max_len=256)
    save_reward(root / "reward", reward, reward_tokenizer, {"backbone": "tiny", "max_len": 256, "metrics": {"auc": 0.5}})


def serve_overrides(root) -> list[str]:
    """The Serve config of a test app over the models make_recommender and make_job_models wrote in
    `root`: every deployment, small and on a quarter CPU each, on a free loopback port."""
    return [
        f"port={free_port()}", "blocking=false",
        f"recommender.checkpoint_dir={root / 'rec'}", f"recommender.data_dir={root / 'prepared'}",
        f"recommender.max_k={MAX_K}", f"recommender.max_history={MAX_HISTORY}", "recommender.num_beams=10",
        "recommender.num_cpus=0.25",
        f"generator.checkpoint_dir={root / 'gen'}", "generator.max_new_tokens=12", "generator.num_cpus=0.25",
        f"generator.max_cv_chars={MAX_CV_CHARS}", "generator.long_text=reject",
        f"matcher.reward_dir={root / 'reward'}", f"matcher.generator_dir={root / 'gen'}",
        f"matcher.jds_path={root / 'jobs' / 'jds.parquet'}", "matcher.embedder=tfidf", "matcher.num_cpus=0.25",
        f"matcher.max_k={MAX_K}",
    ]


@pytest.fixture(scope="module")
def app(ray_session, tmp_path_factory):
    from ray import serve

    from genrec.serve.launch import start_serve

    root = tmp_path_factory.mktemp("serve")
    catalog = make_recommender(root)
    make_job_models(root)
    cfg = load_config(ServeConfig, None, serve_overrides(root) + [
        "recommender.max_batch_size=8", "recommender.batch_wait_timeout_s=0.02",
        f"matcher.max_cv_chars={MAX_CV_CHARS}", "matcher.long_text=truncate",
    ])
    url = start_serve(cfg)
    with httpx.Client(base_url=url, timeout=120) as client:
        yield {"url": url, "client": client, "root": root, "cfg": cfg, **catalog}
    serve.shutdown()


def post(app, path, body):
    return app["client"].post(path, json=body)


# ------------------------------------------------------------------------------------ endpoints
def test_healthz_and_models_name_the_loaded_checkpoints(app):
    health = app["client"].get("/healthz")
    assert health.status_code == 200
    assert health.json() == {"status": "ok", "deployed": {"recommender": True, "generator": True, "matcher": True}}
    models = app["client"].get("/v1/models").json()
    rec = models["recommender"]
    last_two = lambda path: str(Path(*path.resolve().parts[-2:]))  # noqa: E731  (expose_paths is off)
    assert rec["checkpoint"] == last_two(app["root"] / "rec") and not rec["catalog"].startswith("/")
    assert rec["catalog_items"] == len(app["ids"]) and rec["training_metrics"] == {"valid_loss": 4.25}
    assert {k: rec["batching"][k] for k in ("max_batch_size", "batch_wait_timeout_s")} == {
        "max_batch_size": 8, "batch_wait_timeout_s": 0.02}
    assert models["generator"]["checkpoint"] == last_two(app["root"] / "gen")
    assert models["generator"]["training_metrics"] == {"valid_loss": 5.5}
    assert models["matcher"]["reward"]["metrics"] == {"auc": 0.5} and models["matcher"]["recommend"] is True
    paths = app["client"].get("/openapi.json").json()["paths"]
    assert {"/v1/recommend", "/v1/jobs/generate", "/v1/jobs/score", "/v1/jobs/recommend"} <= set(paths)
    assert app["client"].get("/docs").status_code == 200


def test_recommend_returns_k_distinct_catalog_items(app):
    ids, titles = app["ids"], app["titles"]
    body = post(app, "/v1/recommend", {"history": ids[:3], "k": 7})
    assert body.status_code == 200, body.text
    items = body.json()["items"]
    assert len(items) == 7 and len({i["item_id"] for i in items}) == 7
    assert all(titles[ids.index(i["item_id"])] == i["title"] for i in items)
    scores = [i["score"] for i in items]
    assert scores == sorted(scores, reverse=True) and body.json()["source"] == "model"
    # Titles name the same items as ids: the same answer.
    by_title = post(app, "/v1/recommend", {"history": [titles[0], ids[1], titles[2]], "k": 7}).json()
    assert [i["item_id"] for i in by_title["items"]] == [i["item_id"] for i in items]


def test_recommend_exclude_history_and_truncation(app):
    ids = app["ids"]
    history = ids[:4]
    kept = post(app, "/v1/recommend", {"history": history, "k": MAX_K, "exclude_history": True}).json()["items"]
    assert len({i["item_id"] for i in kept}) == MAX_K and not {i["item_id"] for i in kept} & set(history)
    assert [i["score"] for i in kept] == sorted((i["score"] for i in kept), reverse=True)
    # Over max_history: the oldest items go (long_history=truncate), the answer is the last ones'.
    long = post(app, "/v1/recommend", {"history": ids[10:10 + MAX_HISTORY + 3], "k": 5}).json()
    recent = post(app, "/v1/recommend", {"history": ids[13:13 + MAX_HISTORY], "k": 5}).json()
    assert long["history_truncated"] == 3 and long["history_used"] == MAX_HISTORY
    assert long["items"] == recent["items"]


def test_job_endpoints(app):
    cvs = pq.read_table(app["root"] / "jobs" / "cvs.parquet").column("text").to_pylist()
    jds = pq.read_table(app["root"] / "jobs" / "jds.parquet")
    greedy = {"cv": cvs[0], "max_new_tokens": 8, "temperature": 0}
    first, again = post(app, "/v1/jobs/generate", greedy), post(app, "/v1/jobs/generate", greedy)
    assert first.status_code == 200, first.text
    assert first.json() == again.json() and first.json()["cv_truncated"] is False
    # Greedy text equals the jobs stage's own generator on the same checkpoint: the same prompt.
    from genrec.girl.recommend import JDGenerator

    assert first.json()["jd"] == JDGenerator(app["root"] / "gen", device="cpu", max_new_tokens=8).generate([cvs[0]])[0]
    sampled = post(app, "/v1/jobs/generate", {"cv": cvs[1], "max_new_tokens": 8, "temperature": 1.5})
    assert sampled.status_code == 200 and isinstance(sampled.json()["jd"], str)

    from genrec.girl.reward import load_reward

    pairs = [(cvs[0], jds.column("text")[0].as_py()), (cvs[1], jds.column("text")[5].as_py())]
    expected = load_reward(app["root"] / "reward", device="cpu").score([c for c, _ in pairs], [j for _, j in pairs])
    for (cv, jd), want in zip(pairs, expected):
        got = post(app, "/v1/jobs/score", {"cv": cv, "jd": jd}).json()
        assert got["score"] == pytest.approx(float(want), abs=1e-4)
    long_cv = post(app, "/v1/jobs/score", {"cv": cvs[0] + " x" * MAX_CV_CHARS, "jd": "a job"}).json()
    assert long_cv["cv_truncated"] is True and long_cv["jd_truncated"] is False

    jobs = post(app, "/v1/jobs/recommend", {"cv": cvs[2], "k": 6})
    assert jobs.status_code == 200, jobs.text
    ranked = jobs.json()["jobs"]
    assert len(ranked) == 6 and len({j["jd_id"] for j in ranked}) == 6
    assert {j["jd_id"] for j in ranked} <= set(jds.column("jd_id").to_pylist())


def test_demo_requests(app):
    from genrec.serve.launch import demo_requests

    answers = demo_requests(app["url"], app["ids"], app["titles"])
    assert [status for status, _ in answers.values()] == [200, 200, 200, 422]
    assert "'no such item'" in answers["unknown item (422)"][1]["detail"]


# ---------------------------------------------------------------------------------- bad requests
BAD_REQUESTS = [
    # (path, body: JSON-able or raw bytes, headers, status, text the detail must hold)
    ("/v1/recommend", b'{"history": ["i00001"', None, 400, "malformed JSON body"),
    ("/v1/recommend", b"{history: 1}", None, 400, "malformed JSON body"),
    ("/v1/recommend", b'{"history": ["i00001"]}', {"content-type": "text/plain"}, 415, "expected application/json"),
    ("/v1/recommend", [1, 2], None, 422, "body: Input should be a valid dictionary"),
    ("/v1/recommend", {"k": 3}, None, 422, "history: Field required"),
    ("/v1/recommend", {"history": "i00001"}, None, 422, "history: Input should be a valid list"),
    ("/v1/recommend", {"history": [1.5]}, None, 422, "history.0: expected an item id or title"),
    ("/v1/recommend", {"history": ["no such item"]}, None, 422, "unknown item ids or titles: 'no such item'"),
    ("/v1/recommend", {"history": ["ITEM0", "nope2"]}, None, 422, "unknown item ids or titles: 'nope2'"),
    ("/v1/recommend", {"history": []}, None, 422, "history: empty"),
    ("/v1/recommend", {"history": ["ITEM0"], "k": 0}, None, 422, "k: Input should be greater than or equal to 1"),
    ("/v1/recommend", {"history": ["ITEM0"], "k": MAX_K + 1}, None, 422, f"k: Input should be less than or equal to {MAX_K}"),
    ("/v1/recommend", {"history": ["ITEM0"], "k": "five"}, None, 422, "k: Input should be a valid integer"),
    ("/v1/recommend", {"history": ["ITEM0"], "exclude": True}, None, 422, "exclude: Extra inputs are not permitted"),
    ("/v1/jobs/generate", {"cv": ""}, None, 422, "cv: String should have at least 1 character"),
    ("/v1/jobs/generate", {"cv": "   \n "}, None, 422, "cv: empty"),
    ("/v1/jobs/generate", {"cv": "x" * (MAX_CV_CHARS + 1)}, None, 413, f"over the limit of {MAX_CV_CHARS}"),
    ("/v1/jobs/generate", {"cv": "a cv", "temperature": 5}, None, 422, "temperature: Input should be less than or equal to 2"),
    ("/v1/jobs/generate", b'{"cv": "a cv", "temperature": NaN}', {"content-type": "application/json"}, 422, "temperature"),
    ("/v1/jobs/generate", {"cv": "a cv", "max_new_tokens": 13}, None, 422, "max_new_tokens: Input should be less than or equal to 12"),
    ("/v1/jobs/score", {"cv": "a cv"}, None, 422, "jd: Field required"),
    ("/v1/jobs/recommend", {"cv": "a cv", "k": 0}, None, 422, "k: Input should be greater than or equal to 1"),
]


@pytest.mark.parametrize("path,body,headers,status,message", BAD_REQUESTS,
                         ids=[f"{i}-{case[3]}" for i, case in enumerate(BAD_REQUESTS)])
def test_bad_request_gets_its_4xx_and_message(app, path, body, headers, status, message):
    if isinstance(body, dict) and body.get("history") and isinstance(body["history"], list):
        body = dict(body, history=[app["ids"][0] if h == "ITEM0" else h for h in body["history"]])
    if isinstance(body, bytes):
        response = app["client"].post(path, content=body, headers=headers or {"content-type": "application/json"})
    else:
        response = app["client"].post(path, json=body)
    assert response.status_code == status, response.text
    assert message in response.json()["detail"]


def test_wrong_method_and_unknown_path(app):
    assert app["client"].get("/v1/recommend").status_code == 405
    assert app["client"].post("/v1/nothing", json={}).status_code == 404


# ------------------------------------------------------------------------------ fuzz and load
def test_openapi_fuzz_finds_no_server_error(app):
    """Schemathesis draws requests from /openapi.json, valid and invalid; none may get a 5xx."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings

    schema = schemathesis.openapi.from_url(f"{app['url']}/openapi.json")
    for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
        seen = []

        @settings(max_examples=25, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(case=schema.as_strategy(generation_mode=mode))
        def fuzz(case):
            response = case.call(base_url=app["url"], timeout=120)
            seen.append(response.status_code)
            assert response.status_code < 500, (case.method, case.path, case.body, response.text)

        fuzz()
        assert seen, f"{mode}: no request was sent"
        if mode == schemathesis.GenerationMode.NEGATIVE:
            assert any(400 <= code < 500 for code in seen)


def test_concurrent_requests_all_succeed(app):
    """48 requests from 16 threads: batched on the replica, every answer equals the one alone."""
    ids = app["ids"]
    histories = [ids[i:i + 1 + i % 4] for i in range(48)]
    alone = {i: post(app, "/v1/recommend", {"history": histories[i], "k": 5}).json() for i in (0, 17, 46)}

    def ask(i):
        with httpx.Client(base_url=app["url"], timeout=120) as client:
            return i, client.post("/v1/recommend", json={"history": histories[i], "k": 5})

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = dict(pool.map(ask, range(48)))
    assert all(r.status_code == 200 for r in answers.values()), [r.text for r in answers.values() if r.status_code != 200]
    assert all(len({i["item_id"] for i in r.json()["items"]}) == 5 for r in answers.values())
    for i, single in alone.items():
        assert [x["item_id"] for x in answers[i].json()["items"]] == [x["item_id"] for x in single["items"]]
    batching = app["client"].get("/v1/models").json()["recommender"]["batching"]
    assert batching["requests"] > batching["batches"]  # some requests did share a beam search


def test_a_body_over_max_body_bytes_gets_413_through_serve(app):
    huge = {"history": [app["ids"][0]] * 150_000}  # about 1.5 MB of JSON, over the 1 MB default
    response = post(app, "/v1/recommend", huge)
    assert response.status_code == 413 and "max_body_bytes" in response.json()["detail"]
    assert post(app, "/v1/recommend", {"history": app["ids"][:2], "k": 3}).status_code == 200


# ----------------------------------------------------- policies, configs (no second Serve app)
def test_reject_and_popularity_policies(app):
    """long_history=reject -> 413 and empty_history=popular -> the most popular training items, through
    the same FastAPI app with the recommender in this process."""
    from fastapi.testclient import TestClient

    from genrec.rec.baselines import MostPopular, load_sequences
    from genrec.serve.api import Backends, LocalBackend, create_api
    from genrec.serve.recommender import RecommenderModel

    cfg = load_config(ServeConfig, None, [
        f"recommender.checkpoint_dir={app['root'] / 'rec'}", f"recommender.data_dir={app['root'] / 'prepared'}",
        f"recommender.max_history={MAX_HISTORY}", "recommender.long_history=reject",
        "recommender.empty_history=popular", "recommender.num_beams=10"])
    model = RecommenderModel(cfg.recommender)

    class Local:
        def recommend(self, history, k, exclude_history):
            checked = model.check(history, k, exclude_history)
            return checked.as_dict() if not hasattr(checked, "history") else model.rank([checked])[0]

    client = TestClient(create_api(cfg, Backends(recommender=LocalBackend(Local()))))
    too_long = client.post("/v1/recommend", json={"history": app["ids"][:MAX_HISTORY + 1]})
    assert too_long.status_code == 413 and f"over the limit of {MAX_HISTORY}" in too_long.json()["detail"]
    popular = client.post("/v1/recommend", json={"history": [], "k": 5}).json()
    sequences = load_sequences(app["root"] / "prepared")
    expected = MostPopular(len(app["ids"])).fit(sequences.training_parts()).recommend([[]], k=5)[0]
    assert popular["source"] == "popularity"
    assert [i["item_id"] for i in popular["items"]] == [app["ids"][i] for i in expected]


def test_shipped_configs_parse():
    """configs/serve.yaml is a valid ServeConfig; configs/serve_run.yaml a valid Serve config file
    whose application builder reads it."""
    from ray.serve.schema import ServeDeploySchema

    root = Path(__file__).resolve().parents[1]
    cfg = load_config(ServeConfig, root / "configs" / "serve.yaml")
    assert cfg.recommender.max_replicas > cfg.recommender.min_replicas  # autoscaling on
    run = ServeDeploySchema.model_validate(yaml.safe_load((root / "configs" / "serve_run.yaml").read_text()))
    (application,) = run.applications
    assert application.import_path == "genrec.serve.deployments:build_app"
    assert application.args == {"config": "configs/serve.yaml"}
    with pytest.raises(Exception, match="max_batch_size"):
        load_config(ServeConfig, None, ["recommender.max_batch_size=0"])


def test_serve_run_builder_and_deployment_options():
    """The `serve run` builder reads a genrec YAML plus key=value args; options carry autoscaling,
    request limits, batching (user_config) and GPUs from the config."""
    from genrec.config_loader import ConfigError
    from genrec.serve.deployments import build_app, deployment_options

    root = Path(__file__).resolve().parents[1]
    with pytest.raises(ConfigError, match="recommender.nope"):
        build_app({"config": str(root / "configs" / "serve.yaml"), "recommender.nope": 1})
    with pytest.raises(ValueError, match="nothing to serve"):
        build_app({"config": str(root / "configs" / "serve.yaml"), "recommender.checkpoint_dir": ""})

    cfg = load_config(ServeConfig, root / "configs" / "serve.yaml",
                      ["recommender.max_batch_size=4", "recommender.use_gpu=true", "generator.max_replicas=1"])
    rec = deployment_options(cfg.recommender)
    assert rec["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 4.0}
    assert "num_replicas" not in rec and rec["max_ongoing_requests"] == 64
    assert rec["user_config"] == {"max_batch_size": 4, "batch_wait_timeout_s": 0.005}
    assert rec["ray_actor_options"] == {"num_cpus": 1.0, "num_gpus": 1}
    gen = deployment_options(cfg.generator)
    assert gen["num_replicas"] == 1 and "autoscaling_config" not in gen and gen["ray_actor_options"]["num_gpus"] == 0


# ------------------------------------------------------------------ faults (last: they kill things)
def serve_replica(deployment: str) -> tuple[str, str]:
    """(name, namespace) of the one live replica actor of `deployment` in the genrec app."""
    import ray

    found = [(a["name"], a["namespace"]) for a in ray.util.list_named_actors(all_namespaces=True)
             if a["name"].startswith("SERVE_REPLICA::") and f"#{deployment}#" in a["name"]]
    assert len(found) == 1, found
    return found[0]


def wait_until(condition, timeout_s: float, what: str):
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout_s} s")


def test_killing_the_recommender_replica_under_load_gives_answers_or_503s_and_serve_replaces_it(app):
    """Four clients keep asking while the only Recommender replica is killed: every request ends with
    200 or 503 + Retry-After (none hangs: each client has a 60 s timeout), and Serve starts a new
    replica that answers."""
    import threading

    import ray

    name, namespace = serve_replica("Recommender")
    stop, results = threading.Event(), []

    def client_loop(offset):
        with httpx.Client(base_url=app["url"], timeout=60) as client:
            i = offset
            while not stop.is_set():
                try:
                    response = client.post("/v1/recommend", json={"history": app["ids"][i % 20:i % 20 + 2], "k": 3})
                    results.append((response.status_code, response.headers.get("retry-after")))
                except httpx.HTTPError as e:  # a timeout is a hang: recorded, so the assertions below see it
                    results.append((type(e).__name__, None))
                i += 4

    threads = [threading.Thread(target=client_loop, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    wait_until(lambda: len(results) >= 8, 60, "answers before the kill")
    ray.kill(ray.get_actor(name, namespace=namespace), no_restart=True)
    replaced = wait_until(lambda: serve_replica_or_none("Recommender", name), 120, "a new Recommender replica")
    wait_until(lambda: post(app, "/v1/recommend", {"history": app["ids"][:2], "k": 3}).status_code == 200, 120,
               "an answer from the new replica")
    stop.set()
    for t in threads:
        t.join(timeout=90)
    assert not any(t.is_alive() for t in threads), "a client hung"
    statuses = [code for code, _ in results]
    assert set(statuses) <= {200, 503}, statuses
    assert all(retry == "1" for code, retry in results if code == 503)
    assert statuses.count(200) > 8 and replaced != name


def serve_replica_or_none(deployment: str, old_name: str):
    try:
        name, _ = serve_replica(deployment)
    except AssertionError:
        return None
    return name if name != old_name else None


def test_sigterm_shuts_serve_and_ray_down(app, tmp_path):
    """`genrec serve` in its own process (its own local Ray): SIGTERM ends it with exit code 0, after
    it has shut Serve and Ray down, and its port stops answering."""
    import os
    import signal
    import subprocess
    import sys

    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    log_path = tmp_path / "serve.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "genrec.cli", "serve", f"port={port}", "recommender.num_cpus=0.5",
             f"recommender.checkpoint_dir={app['root'] / 'rec'}", f"recommender.data_dir={app['root'] / 'prepared'}"],
            stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"

    def healthy():
        if process.poll() is not None:
            raise AssertionError(f"genrec serve exited with {process.returncode}: {log_path.read_text()[-3000:]}")
        try:
            return httpx.get(f"{url}/healthz", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(healthy, 240, "genrec serve answering /healthz")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=120) == 0, log_path.read_text()[-3000:]
    finally:
        if process.poll() is None:
            process.kill()
    assert "SIGTERM: shutting down Serve and Ray" in log_path.read_text()
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{url}/healthz", timeout=5)
