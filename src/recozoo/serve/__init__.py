"""Serving: recommendations from a finished run, a checkpoint or a fusion of runs.

* ``python -m recozoo.serve run=<folder>``: the LitServe HTTP service (`service`), ``POST
  /predict``, ``GET /health``, ``GET /openapi.json``.
* ``python -m recozoo.recommend run=<folder> out=recs.parquet``: every user's top-K (batch).
* ``python -m recozoo.serve.loadtest run=<folder>``: a bounded load test (`loadtest.load_test`).

Modules: `run_files` (which files make a servable run), `loading` (the model rebuilt from them,
weights read without unpickling objects; fusion of member runs), `engine` (validation, fallbacks,
ranking: the one code path of the service and the export), `schema` (request/response bodies),
`process` (the server in a child process, for tests and the load test).
"""
