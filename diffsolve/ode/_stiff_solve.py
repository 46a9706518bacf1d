"""odeint's entry points into the stiff methods: one trajectory forward, its adjoint back.

:func:`odeint <diffsolve.ode.odeint>` calls :func:`stiff_trajectory` per trajectory when
``method`` names an implicit tableau (:data:`._stiff_tableaux.STIFF_TABLEAUX`), and
:func:`stiff_adjoint` from its backward rule. The forward Jacobian follows ``jac`` (finite
differences by default); the backward one is exact (``jac`` or the VJP assembly).
"""

from __future__ import annotations

import math
from typing import Any

from .. import _backend as B
from ._stiff_adjoint import esdirk_adjoint
from ._stiff_auto import auto_adjoint
from ._stiff_compiled import COMPILED_MAX_N, compiled_stiff_trajectory
from ._stiff_esdirk import ESDIRKStepper, integrate_esdirk
from ._stiff_jacobian import make_jacobian
from ._stiff_newton import IterationMatrix
from ._stiff_rosenbrock import RODAS5, integrate_rosenbrock
from ._stiff_tableaux import STIFF_TABLEAUX
from ._vector_field import make_vjp

np = B.host_namespace()

__all__ = ["IMPLICIT_TABLEAUX", "auto_backward", "lazy_vjp", "stiff_adjoint",
           "stiff_trajectory"]

#: every implicit method by name: the ESDIRK pairs and the Rosenbrock pair
IMPLICIT_TABLEAUX = {**STIFF_TABLEAUX, RODAS5.name: RODAS5}


def lazy_vjp(f, vjp, params, shape, xp, jitted):
    """``fvjp(t, y, v)`` built on its first call (a forward solve that never forms ``J``
    from VJPs and is never differentiated does not pay for it)."""
    built: list[Any] = []

    def fvjp(t, y, v):
        if not built:
            built.append(make_vjp(f, vjp, params, shape, xp, jitted))
        return built[0](t, y, v)

    return fvjp


def pullback_factory(f, vjp, params, shape, xp, jitted, fvjp):
    """``at(t, y) -> pull`` with ``pull(v) -> (v_y, v_p)``: for a NumPy field traced by
    autograd, ONE trace of ``f`` per point serves every product there (a Jacobian's rows
    and the parameter cotangent); otherwise ``None`` (the products go through ``fvjp``)."""
    if vjp is not None or jitted or not B.is_numpy(xp):
        return None
    from autograd import make_vjp as ag_make_vjp

    n = math.prod(shape)
    flat = tuple(shape) != (n,)

    def call(t, yy, pp):  # boxes reshape by their own methods
        out = f(t, yy.reshape(shape) if flat else yy, pp)
        return out.reshape((n,)) if flat else out

    def at(t, y):
        if params is None:
            def fun(yy):
                return call(t, yy, None)

            back, _ = ag_make_vjp(fun)(y)
            return lambda v: (back(v), None)

        def fun2(yy, pp):
            return call(t, yy, pp)

        back2, _ = ag_make_vjp(fun2, argnum=(0, 1))(y, params)
        return back2

    return at


def stiff_trajectory(tab, settings, *, rhs, fvjp, y0, t_out, params, shape, xp, dtype,
                     device, step_ts, f0, callback, trajectory, jac_sparsity, jump_ts,
                     f=None, jitted=False):
    """Integrate one (flattened) trajectory with the implicit tableau ``tab``.

    ``f`` (the user's field) and ``jitted`` (whether it is a Numba function) are for the
    compiled loop (:mod:`._stiff_compiled`), taken when :func:`_compiled_ok` allows it and
    ``f`` has the float64 signature; the Python loop calls ``rhs``.
    """
    n = y0.shape[0]
    direct = settings.linear_solver == "direct"  # the compiled loop factorises
    if jitted and callback is None and direct and _compiled_ok(settings.jac, jac_sparsity,
                                                               y0, f0, params, shape, xp):
        jac = settings.jac if callable(settings.jac) else None
        traj = compiled_stiff_trajectory(tab, settings, f=f, jac=jac, y0=y0, f0=f0,
                                         t_out=t_out, params=params, step_ts=step_ts,
                                         jump_ts=jump_ts, trajectory=trajectory)
        if traj is not None:
            traj.stats[3] += 1  # f0
            return traj
    jacobian = make_jacobian(settings.jac, jac_sparsity, xp=xp, n=n, dtype=dtype,
                             device=device, rhs=rhs, fvjp=fvjp, params=params, shape=shape)
    rtol, atol = settings.norm_tolerances
    if tab is RODAS5:
        traj = integrate_rosenbrock(
            tab, jacobian, rhs, y0, t_out, xp=xp, dtype=dtype, device=device, rtol=rtol,
            atol=atol, controller=settings.controller, first_step=settings.first_step,
            max_steps=settings.max_steps, step_ts=step_ts, f0=f0, callback=callback,
            shape=shape, trajectory=trajectory, jump_ts=jump_ts)
        traj.stats[3] += 1  # f0
        return traj
    mat = IterationMatrix(jacobian, float(tab.gamma), settings.linear_solver,
                          settings.preconditioner)
    stepper = ESDIRKStepper(xp, tab, n, dtype, device, rtol, atol, mat)
    traj = integrate_esdirk(stepper, rhs, y0, t_out, controller=settings.controller,
                            first_step=settings.first_step, max_steps=settings.max_steps,
                            step_ts=step_ts, f0=f0, callback=callback, shape=shape,
                            trajectory=trajectory, jump_ts=jump_ts)
    traj.stats[3] += 1  # f0
    return traj


def _compiled_ok(jac, jac_sparsity, y0, f0, params, shape, xp) -> bool:
    """Whether the compiled loop can run this solve: host NumPy float64 state, slope and
    parameters (1-D: the kernel calls ``f`` on the flat state), a dense Jacobian
    (``jac_sparsity`` keeps the Python loop and its sparse LU) by differences or from an
    ``@njit`` ``jac``, and at most :data:`COMPILED_MAX_N` unknowns (dense LU)."""
    if jac_sparsity is not None or not B.is_numpy(xp) or len(shape) != 1:
        return False
    n = shape[0]
    if not 1 <= n <= COMPILED_MAX_N:
        return False
    for a in (y0, f0, params):
        if type(a) is not np.ndarray or a.dtype != np.float64 or a.ndim != 1:
            return False
    if callable(jac):
        return bool(B.get_kernel(xp, "ode.is_jitted")(jac))
    return jac == "fd"


def stiff_adjoint(fwd, traj, ys_bar):
    """``(ȳ_0, p̄, a_0)`` of one stiff trajectory (see :mod:`._stiff_adjoint`)."""
    st = fwd.settings
    if fwd.tab is RODAS5:
        raise NotImplementedError(
            "diffsolve.ode.odeint: method='rodas5' has no discrete adjoint (that of a "
            "Rosenbrock step needs the derivative of the Jacobian itself); pass "
            "adjoint='backsolve' (the continuous adjoint, integrated by kvaerno5 with y(t) "
            "from rodas5's steps), or use method='kvaerno5' (or 'kvaerno3') for the exact "
            "gradient of the computed solution")
    jacobian = make_jacobian(st.jac, fwd.jac_sparsity, xp=fwd.xp, n=fwd.n,
                             dtype=fwd.y0.dtype, device=fwd.device, rhs=fwd.rhs,
                             fvjp=fwd.fvjp, params=fwd.params_eff, shape=fwd.shape,
                             exact=True)
    _trace_fast(jacobian, fwd, traj)
    return esdirk_adjoint(fwd.tab, jacobian, fwd.fvjp, traj, ys_bar, fwd.xp,
                          has_params=fwd.params_eff is not None)


def auto_backward(fwd, traj, ys_bar):
    """``(ȳ_0, p̄, a_0)`` of one ``method="auto"`` trajectory (see :mod:`._stiff_auto`)."""
    st = fwd.settings
    jacobian = make_jacobian(st.jac, fwd.jac_sparsity, xp=fwd.xp, n=fwd.n,
                             dtype=fwd.y0.dtype, device=fwd.device, rhs=fwd.rhs,
                             fvjp=fwd.fvjp, params=fwd.params_eff, shape=fwd.shape,
                             exact=True)
    _trace_fast(jacobian, fwd, traj)
    return auto_adjoint(fwd.stepper, fwd.rhs, fwd.fvjp, jacobian, traj, ys_bar, fwd.xp,
                        has_params=fwd.params_eff is not None)


def _trace_fast(jacobian, fwd, traj):
    """Give ``jacobian`` the one-trace-per-point products, after the first VJP has been
    taken through odeint's checked path (it raises NotTraceableError for a field autograd
    cannot trace, instead of a silently zero gradient)."""
    at = pullback_factory(fwd.f, fwd.settings.vjp, fwd.params_eff, fwd.shape, fwd.xp,
                          fwd.jitted, fwd.fvjp)
    if at is None:
        return
    y0 = traj.states[0]
    fwd.fvjp(float(traj.ts[0]), y0, fwd.xp.zeros_like(y0))
    jacobian.pullback_at = at
