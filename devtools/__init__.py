"""Development tooling shared by the tests and the benchmarks (never imported by the
production packages, not installed with them): real processes (:mod:`devtools.procs`) and
multi-host set-ups behind HAProxy (:mod:`devtools.hosts`)."""
