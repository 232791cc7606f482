"""Ray Serve application: a FastAPI ingress (page, /translate, /domains, /healthz) in front of a
batched Translator deployment that holds the EMA networks.

- inputs: the checks of each request field (plain Python);
- batching: many requests through the generator with the outputs each would get alone (torch);
- clips: POST /translate_video's clip through the replica's Translator, with its limits (torch);
- translator: the model replica (its Batcher for images, one clip at a time for videos);
- app: the FastAPI routes and the ingress deployment; page/: the web page's files;
- build: ServeOptions, build_app, and app_builder for Serve config files.
"""

from .build import ServeOptions, app_builder, build_app, parse_autoscale

__all__ = ["ServeOptions", "app_builder", "build_app", "parse_autoscale"]
