"""The server on Ray Serve: N model replicas behind one entry (``steering serve --replicas N``).

- ``app``: the Serve application (``build_app``, ``serve_on_ray``, ``app_builder`` for
  ``serve run``) and ``RayOptions``;
- ``replica``: one model replica, its own engine (this project's or vLLM);
- ``backend``: the entry's ``Backend``, sending each request to a replica;
- ``wire``: requests and jobs as bytes, the model and SAEs left behind as references;
- ``loopback``: keeping a one-machine cluster's listeners on 127.0.0.1;
- ``processes``: ending every process the server started, whatever Ray left behind.

Ray is optional (``pip install 'steering[ray]'``); nothing here imports it until a server
starts, and then its absence is a ``SteeringError`` that says how to install it.
"""

from .app import RayOptions, app_builder, build_app, serve_on_ray

__all__ = ["RayOptions", "app_builder", "build_app", "serve_on_ray"]
