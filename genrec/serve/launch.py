"""`genrec serve`: start Serve's HTTP proxy on the configured host and port and run the app."""
from __future__ import annotations

import logging
import signal
import threading

from genrec.config import ServeConfig
from genrec.runtime import init_ray

log = logging.getLogger("genrec.serve")


def start_serve(cfg: ServeConfig) -> str:
    """Deploy the app (waiting until every replica is up); returns its base URL."""
    from ray import serve

    from genrec.serve.deployments import build_application

    init_ray()
    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    serve.run(build_application(cfg), name=cfg.app_name, route_prefix=cfg.route_prefix)
    return f"http://{cfg.host}:{cfg.port}{cfg.route_prefix.rstrip('/')}"


def serve_app(cfg: ServeConfig) -> dict:
    """Run until SIGINT (Ctrl-C) or SIGTERM (blocking=true), then shut Serve and this process's Ray
    connection down and return; or deploy and return at once (blocking=false: the app lives as long
    as the Ray cluster, so use it with RAY_ADDRESS pointing at one)."""
    import ray
    from ray import serve

    init_ray()  # first: ray.init sets a SIGTERM handler of its own (sys.exit), which ours replaces
    signals = Signals(signal.SIGINT, signal.SIGTERM) if cfg.blocking else None  # a signal while deploying counts
    url = start_serve(cfg)
    log.info("genrec serving at %s: a page to try it at %s/, OpenAPI docs at %s/docs", url, url, url)
    if signals is not None:
        received = signals.wait()
        log.info("%s: shutting down Serve and Ray", signal.Signals(received).name)
        serve.shutdown()
        ray.shutdown()  # a local Ray stops with it; on a cluster (RAY_ADDRESS) this driver disconnects
    return {"url": url, "page": f"{url}/", "docs": f"{url}/docs", "app": cfg.app_name}


class Signals:
    """Catches `signals` from its creation on; `wait` blocks until one has arrived, puts the handlers
    before back and returns it."""

    def __init__(self, *signals: int) -> None:
        self.received: list[int] = []
        self.arrived = threading.Event()
        self.previous = {sig: signal.signal(sig, self._handle) for sig in signals}

    def _handle(self, signum, frame) -> None:
        self.received.append(signum)
        self.arrived.set()

    def wait(self) -> int:
        try:
            while not self.arrived.wait(0.5):
                pass
        finally:
            for sig, old in self.previous.items():
                signal.signal(sig, old)
        return self.received[0]


def demo_requests(url: str, item_ids: list[str], titles: list[str]) -> dict:
    """Sample requests for `genrec demo` / `make demo`: a recommendation by ids, one by titles, and a
    bad request with its 422; returns {name: (status, body)}."""
    import httpx

    requests = {
        "recommend by ids": {"history": item_ids[:3], "k": 5},
        "recommend by titles, history excluded": {"history": titles[:3], "k": 5, "exclude_history": True},
        "unknown item (422)": {"history": [item_ids[0], "no such item"], "k": 5},
    }
    with httpx.Client(base_url=url, timeout=120) as client:
        answers = {"GET /healthz": (lambda r: (r.status_code, r.json()))(client.get("/healthz"))}
        for name, body in requests.items():
            response = client.post("/v1/recommend", json=body)
            answers[name] = (response.status_code, response.json())
    return answers
