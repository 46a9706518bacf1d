"""Run every benchmark in bench/ in turn (``make bench``); results land in bench/results/."""

from __future__ import annotations

import importlib

BENCHMARKS = (
    "bench.bench_csr_kernels",
    "bench.bench_linear_solve",
    "bench.bench_sor_sweep",
    "bench.bench_bandits",
    "bench.bench_hypergradient",
    "bench.bench_bilevel",
    "bench.bench_dcdm",
    "bench.bench_sinkhorn",
    "bench.bench_sinkhorn_small",
    "bench.bench_ot_newton",
    "bench.bench_sparse_ot",
    "bench.bench_ode_forward",
    "bench.bench_ode_gradients",
    "bench.bench_ode_overhead",
    "bench.bench_ode_regularization",
)


def main() -> None:
    for name in BENCHMARKS:
        print(f"\n=== {name} ===", flush=True)
        importlib.import_module(name).main([])


if __name__ == "__main__":
    main()
