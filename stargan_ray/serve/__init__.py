"""Ray Serve application: a FastAPI ingress (page, /translate, /domains, /healthz) in front of a
batched Translator deployment that holds the EMA networks.

- inputs: the checks of each request field (plain Python);
- batching: many requests through the generator with the outputs each would get alone (torch);
- translator: the model replica with @serve.batch;
- app: the FastAPI routes and the ingress deployment; page/: the web page's files;
- build: ServeOptions, build_app, and app_builder for Serve config files.
"""

from .build import ServeOptions, app_builder, build_app, parse_autoscale

__all__ = ["ServeOptions", "app_builder", "build_app", "parse_autoscale"]
