"""Benchmarks of the CDS Hooks service (``python -m bench.run``; results in ``bench/RESULTS.md``).

* :mod:`bench.generator`: a seeded synthetic patient record, shaped into the prefetch keys the
  services advertise at ``GET /cds-services``;
* :mod:`bench.floor`: the "floor" app, a bare FastAPI endpoint that only parses the same body;
* :mod:`bench.server`: uvicorn started on a free loopback port, its RSS read from ``/proc``;
* :mod:`bench.load`: a bounded-concurrency httpx load driver (count and time bounded);
* :mod:`bench.issuer`: an ES384 test issuer (trusted-issuers file and per-request tokens);
* :mod:`bench.profile`: cProfile of one in-process 100-resource patient-view call;
* :mod:`bench.run`: the whole run, figures and target verdicts.
"""
