"""The API's limits without Ray: a body over max_body_bytes gets 413 before it is read, a request
unanswered in request_timeout_s gets 504, a model that cannot answer gives 503 with Retry-After,
and /v1/models keeps the server's paths private. The FastAPI app of genrec/serve/api.py in this
process (TestClient), its backend a local object; the same limits over a real Serve app are in
tests/test_serve.py."""
import asyncio

import pytest
from fastapi.testclient import TestClient

from genrec.config import ServeConfig
from genrec.config_loader import load_config
from genrec.serve.api import Backends, BackendUnavailable, HandleBackend, LocalBackend, create_api, hide_paths

ANSWER = {"items": [], "source": "model", "history_used": 1, "history_truncated": 0}


class Model:
    """A stand-in recommender whose answer takes `delay` seconds, or that is unavailable."""

    def __init__(self, delay: float = 0.0, unavailable: bool = False):
        self.delay, self.unavailable, self.calls, self.cancelled = delay, unavailable, 0, 0

    async def recommend(self, history, k, exclude_history):
        self.calls += 1
        if self.unavailable:
            raise BackendUnavailable("RayActorError: the replica died")
        try:
            await asyncio.sleep(self.delay)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return ANSWER

    def info(self):
        return {"checkpoint": "/srv/models/toys/sft/final", "catalog": "/srv/data/toys/prepared/catalog.parquet",
                "nested": [{"path": "/srv/a/b/c"}], "device": "cpu", "note": "/ not a path"}


def client(model: Model, *overrides: str) -> TestClient:
    cfg = load_config(ServeConfig, None, ["recommender.checkpoint_dir=unused", *overrides])
    return TestClient(create_api(cfg, Backends(recommender=LocalBackend(model))))


def test_a_body_over_the_limit_gets_413_before_the_model_sees_it():
    model = Model()
    api = client(model, "max_body_bytes=200")
    assert api.post("/v1/recommend", json={"history": ["a"] * 10}).status_code == 200
    big = {"history": ["item"] * 100}
    declared = api.post("/v1/recommend", json=big)
    assert declared.status_code == 413 and "over the limit of 200 bytes" in declared.json()["detail"]

    def chunks():  # no Content-Length: the body arrives in pieces and is cut off at the limit
        yield b'{"history": ['
        for _ in range(100):
            yield b'"item", '
        yield b'"item"]}'

    streamed = api.post("/v1/recommend", content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413 and "so far" in streamed.json()["detail"]
    small = api.post("/v1/recommend", content=iter([b'{"history": ', b'["a"]}']), headers={"content-type": "application/json"})
    assert small.status_code == 200, small.text
    assert model.calls == 2  # the refused bodies never reached it


def test_a_request_unanswered_in_time_gets_504_and_its_model_call_is_cancelled():
    model = Model(delay=30)
    api = client(model, "request_timeout_s=0.3")
    response = api.post("/v1/recommend", json={"history": ["a"]})
    assert response.status_code == 504 and "within 0.3 s" in response.json()["detail"]
    assert model.cancelled == 1
    assert client(Model(delay=0.05), "request_timeout_s=5").post("/v1/recommend", json={"history": ["a"]}).status_code == 200


def test_an_unavailable_model_gives_503_with_retry_after():
    response = client(Model(unavailable=True)).post("/v1/recommend", json={"history": ["a"]})
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert "replica died" in response.json()["detail"]


def test_serve_handle_errors_of_a_dead_or_overloaded_replica_become_unavailable():
    import ray
    from ray.serve.exceptions import BackPressureError

    class Method:
        def __init__(self, error):
            self.error = error

        def remote(self, *args):
            async def fail():
                raise self.error
            return fail()

    class Handle:
        def __init__(self, error):
            self.recommend = Method(error)

    for error in (BackPressureError(num_queued_requests=3, max_queued_requests=2),
                  ray.exceptions.ActorUnavailableError("the replica is restarting", None)):
        with pytest.raises(BackendUnavailable, match=type(error).__name__):
            asyncio.run(HandleBackend(Handle(error)).call("recommend"))
    with pytest.raises(ZeroDivisionError):  # a bug in the model stays an error (a 500), not "unavailable"
        asyncio.run(HandleBackend(Handle(ZeroDivisionError())).call("recommend"))


def test_models_shows_the_last_two_parts_of_paths_unless_configured_to_show_them():
    hidden = client(Model()).get("/v1/models").json()["recommender"]
    assert hidden["checkpoint"] == "sft/final" and hidden["catalog"] == "prepared/catalog.parquet"
    assert hidden["nested"] == [{"path": "b/c"}] and hidden["note"] == "/ not a path" and hidden["device"] == "cpu"
    shown = client(Model(), "expose_paths=true").get("/v1/models").json()["recommender"]
    assert shown == Model().info()
    assert hide_paths(["/a", "/a/b/c/d", 3]) == ["/a", "c/d", 3]
    assert hide_paths({"checkpoint": "s3://bucket/runs/sft/best/"}) == {"checkpoint": "sft/best"}
