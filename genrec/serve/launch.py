"""`genrec serve`: start Serve's HTTP proxy on the configured host and port and run the app."""
from __future__ import annotations

import logging
import time

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
    """Run until Ctrl-C (blocking=true), or deploy and return (blocking=false: the app lives as long
    as the Ray cluster, so use it with RAY_ADDRESS pointing at one)."""
    from ray import serve

    url = start_serve(cfg)
    log.info("genrec serving at %s: a page to try it at %s/, OpenAPI docs at %s/docs", url, url, url)
    if cfg.blocking:
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            log.info("shutting down Serve")
        finally:
            serve.shutdown()
    return {"url": url, "page": f"{url}/", "docs": f"{url}/docs", "app": cfg.app_name}


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
