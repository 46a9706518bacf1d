"""The tour behind ``python -m diffsolve demo`` (NumPy backend, no framework needed)."""

from __future__ import annotations

import importlib.util
import time

import numpy as np
import scipy.optimize
import scipy.sparse as sp

from . import _demo_families, linear
from ._autodiff import vjp
from ._backend import CSR


def poisson_matrix(m: int, shift: float = 0.0):
    """The 5-point Laplacian on an m x m interior grid, scaled by (m+1)², plus shift·I."""
    h2 = (m + 1) ** 2
    t = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(m, m)) * h2
    A = (sp.kron(t, sp.eye(m)) + sp.kron(sp.eye(m), t) + shift * sp.eye(m * m)).tocsr()
    A.sum_duplicates()
    A.sort_indices()
    return A


def _rel(a, b) -> float:
    return abs(a - b) / max(abs(a), abs(b), 1e-300)


def run_demo(grid: int = 64, seed: int = 0) -> int:
    rng = np.random.default_rng(seed)
    m = grid
    A = poisson_matrix(m, shift=1.0)
    n = A.shape[0]
    s = np.linspace(0.0, 1.0, m)
    X, Y = np.meshgrid(s, s, indexing="ij")
    b_true = (np.exp(-40 * ((X - 0.3) ** 2 + (Y - 0.6) ** 2))
              - 0.5 * np.exp(-60 * ((X - 0.7) ** 2 + (Y - 0.3) ** 2))).ravel() * 100
    print(f"diffsolve demo: -Δu + u = f on a {m}x{m} grid (n = {n}, nnz = {A.nnz}), NumPy backend")
    print()

    print("1. Forward solves")
    t0 = time.perf_counter()
    linear.solve(poisson_matrix(3), np.ones(9), method="cg")  # compiles (or loads) the kernels
    print(f"   Numba kernels compiled/loaded from cache in {time.perf_counter() - t0:.2f} s")
    for method, opts in (("direct", {}), ("cg", {"rtol": 1e-10})):
        t0 = time.perf_counter()
        res = linear.solve(A, b_true, method=method, **opts)  # type: ignore[arg-type]  # rtol
        dt = time.perf_counter() - t0
        print(f"   method={method:<6} iterations={res.n_iters:>4}  ||b - Ax|| = "
              f"{res.residual_norm:.2e}  converged={res.converged}  {dt * 1e3:7.1f} ms")
    x_obs = linear.solve(A, b_true).x + 1e-4 * rng.standard_normal(n)

    print()
    print("2. Gradient of J(f) = ½||u(f) - u_obs||² by the adjoint (diffsolve.vjp)")
    b0 = np.zeros(n)

    def objective(b):
        res, f_vjp = vjp(linear.solve, A, b, method="cg", rtol=1e-12)
        r = res.x - x_obs
        _, b_bar = f_vjp(x=r)
        return 0.5 * float(r @ r), b_bar

    J, g = objective(b0 + 1.0)
    v = rng.standard_normal(n)
    h = 1e-3
    fd = (objective(b0 + 1.0 + h * v)[0] - objective(b0 + 1.0 - h * v)[0]) / (2 * h)
    print(f"   J = {J:.6e}   <∇J, v> = {g @ v:.10e}   central FD = {fd:.10e}   "
          f"rel. error {_rel(g @ v, fd):.1e}")

    print()
    print("3. Gradient with respect to the stored values of the sparse matrix A")
    w = rng.standard_normal(n)
    res, f_vjp = vjp(linear.solve, A, b_true)
    A_bar, _ = f_vjp(x=w)
    D = A.copy()
    D.data = rng.standard_normal(A.nnz)
    h = 1e-5
    plus = w @ linear.solve(A + h * D, b_true).x
    minus = w @ linear.solve(A - h * D, b_true).x
    fd = (plus - minus) / (2 * h)
    pred = float(A_bar.data @ D.data)
    print(f"   Ā has A's pattern ({A_bar.nnz} values)   <Ā, D> = {pred:.10e}   "
          f"central FD = {fd:.10e}   rel. error {_rel(pred, fd):.1e}")

    print()
    print("4. Inverse problem: recover f from noisy u_obs by SciPy's L-BFGS-B + adjoint gradients")
    alpha = 1e-10

    def regularised(b):
        J, g = objective(b)
        return J + 0.5 * alpha * float(b @ b), g + alpha * b

    t0 = time.perf_counter()
    opt = scipy.optimize.minimize(regularised, b0, jac=True, method="L-BFGS-B",
                                  options={"maxiter": 200})
    dt = time.perf_counter() - t0
    u_fit = linear.solve(A, opt.x).x
    u_true = linear.solve(A, b_true).x
    print(f"   {opt.nit} iterations, {opt.nfev} solve+adjoint pairs, {dt:.2f} s; "
          f"relative misfit ||u - u_true|| / ||u_true|| = "
          f"{np.linalg.norm(u_fit - u_true) / np.linalg.norm(u_true):.2e}")

    print()
    _bandit_tour(rng)

    print()
    print("6. The same gradient inside autodiff systems")
    C = CSR.from_sparse(A)
    ref = A_bar.data
    _autograd_check(C, b_true, w, ref)
    if importlib.util.find_spec("torch") is not None:
        _torch_check(C, b_true, w, ref)
    else:
        print("   torch: not installed (pip install 'diffsolve[torch]')")
    if importlib.util.find_spec("jax") is not None:
        _jax_check(C, b_true, w, ref)
    else:
        print("   jax: not installed (pip install 'diffsolve[jax]')")

    print()
    _demo_families.dcdm_tour(A, b_true)
    print()
    _demo_families.ot_tour(rng)
    print()
    _demo_families.ode_tour()
    return 0


def _bandit_tour(rng, T: int = 300):
    """Learning SOR's ω across a sequence of systems (the Learning-to-Relax set-up)."""
    from .linear import ContextualOmegaBandit, OmegaBandit

    print(f"5. Learning SOR's omega online over {T} systems A_t = L + c_t I "
          "(10x10 Laplacian, c_t random)")
    L = poisson_matrix(10) / 11**2  # the unscaled 5-point Laplacian, diagonal 4
    shifts = -0.15 + 0.6 * rng.beta(0.5, 1.5, size=T)  # the "high variance" set-up of
    # Khodak, Chow, Balcan & Talwalkar, "Learning to Relax", ICLR 2024
    tsallis = OmegaBandit(method="sor", seed=0)
    chebcb = ContextualOmegaBandit(context_range=(-0.15, 0.45), method="sor", seed=0)
    fixed = {1.0: 0, 1.8: 0}
    t0 = time.perf_counter()
    for c in shifts:
        A = (L + c * sp.eye(100)).tocsr()
        b = rng.standard_normal(100)
        tsallis.solve(A, b, rtol=1e-8, maxiter=10_000)
        chebcb.solve(A, b, context=float(c), rtol=1e-8, maxiter=10_000)
        for omega in fixed:
            fixed[omega] += linear.solve(A, b, method="sor", omega=omega, rtol=1e-8,
                                         maxiter=10_000).n_iters
    dt = time.perf_counter() - t0
    print(f"   total SOR sweeps: omega=1 (Gauss-Seidel) {fixed[1.0]:,}   omega=1.8 "
          f"{fixed[1.8]:,}   Tsallis-INF {int(tsallis.history.n_iters.sum()):,}   "
          f"ChebCB (context c_t) {int(chebcb.history.n_iters.sum()):,}   ({dt:.1f} s)")
    print(f"   Tsallis-INF's median omega over the last 100 systems: "
          f"{float(np.median(tsallis.history.omega[-100:])):.2f}. omega=1.8 is the best fixed "
          "value here, known only in hindsight;\n   over 5000 systems Tsallis-INF comes within "
          "1.18x of it and ChebCB beats it by 37% (docs/benchmarks.md)")


def _report(name, grad, ref):
    err = np.max(np.abs(grad - ref)) / np.max(np.abs(ref))
    print(f"   {name:<9} dJ/dA.data max rel. difference from diffsolve.vjp: {err:.1e}")


def _autograd_check(C, b, w, ref):
    import autograd
    import autograd.numpy as anp

    from .interop import to_autograd

    solve = to_autograd(linear.solve)
    grad = autograd.grad(lambda d: anp.sum(w * solve(C.with_data(d), b).x))(C.data)
    _report("autograd", grad, ref)


def _torch_check(C, b, w, ref):
    import torch

    from .interop import to_torch

    data = torch.tensor(C.data, requires_grad=True)
    res = to_torch(linear.solve)(C.with_data(data), torch.tensor(b))
    (res.x * torch.tensor(w)).sum().backward()
    _report("torch", data.grad.numpy(), ref)  # type: ignore[union-attr]  # set by backward


def _jax_check(C, b, w, ref):
    import jax
    import jax.numpy as jnp

    from .interop import to_jax

    jax.config.update("jax_enable_x64", True)  # the check is in float64
    solve = to_jax(linear.solve)
    grad = jax.jit(jax.grad(lambda d: jnp.sum(jnp.asarray(w) * solve(
        C.with_data(d), jnp.asarray(b)).x)))(jnp.asarray(C.data))
    _report("jax (jit)", np.asarray(grad), ref)
