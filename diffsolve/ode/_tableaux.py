"""Butcher tableaux of the explicit Runge–Kutta pairs, with their continuous extensions.

Every tableau is stored as an *FSAL* method with ``s`` stages whose last stage is evaluated
at the new solution: row ``s - 1`` of ``A`` equals ``b`` and ``c[s - 1] = 1``, so the
argument of the last stage *is* ``y_{n+1}`` and its slope is the next step's first stage.
``e = b - b̂`` are the weights of the embedded error estimate ``h Σ e_i k_i`` (the sign does
not matter, only its norm is used). ``P`` holds the continuous extension: the solution
inside a step is ``y(t_n + θh) = y_n + h Σ_i b_i(θ) k_i`` with
``b_i(θ) = Σ_m P[i, m] θ^(m+1)``.

Sources (coefficients transcribed as facts, code our own):

- ``dopri5``: Dormand & Prince, J. Comput. Appl. Math. 6 (1980) 19–26; the quartic dense
  output of Shampine, Math. Comp. 46 (1986) 135–150, in the form SciPy's
  ``scipy/integrate/_ivp/rk.py`` (class ``RK45``, arrays ``E`` and ``P``) prints it.
- ``tsit5``: Tsitouras, Comput. Math. Appl. 62 (2011) 770–775, full-precision values as
  printed in diffrax ``diffrax/_solver/tsit5.py`` (tableau and the factored interpolation
  polynomials ``b1..b7``), which agree with OrdinaryDiffEq.jl's ``Tsit5ConstantCache``.
- ``bs3``: Bogacki & Shampine, Appl. Math. Lett. 2 (1989) 321–325; cubic Hermite dense
  output (SciPy ``RK23``'s ``P``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .. import _backend as B
from .._typing import HostArray

np = B.host_namespace()  # host float64 coefficients (array_api_compat.numpy)

__all__ = ["TABLEAUX", "Tableau", "get_tableau"]


@dataclass(frozen=True)
class Tableau:
    """An explicit embedded RK pair (FSAL form) with a continuous extension.

    Attributes
    ----------
    name : str
    A : ndarray (s, s)
        Strictly lower triangular; row ``s - 1`` equals ``b``.
    b, c, e : ndarray (s,)
        Weights, nodes, error weights ``b - b̂``.
    P : ndarray (s, m)
        Dense-output polynomial coefficients (powers θ¹..θᵐ).
    order : int
        Order of the propagated solution (5 or 3).
    error_order : int
        Order of the embedded solution (the error is ``O(h^(error_order+1))``).
    stability_boundary : float
        Where the real stability interval ends (the stiffness estimate ``hλ`` is compared
        against it).

    See Also
    --------
    diffsolve.ode.TABLEAUX : The pairs odeint uses, by name.
    diffsolve.ode.odeint : ``method=`` picks one.

    Examples
    --------
    >>> import diffsolve as ds
    >>> tab = ds.ode.TABLEAUX["tsit5"]
    >>> tab.name, tab.order, tab.error_order
    ('tsit5', 5, 4)
    """

    name: str
    A: HostArray
    b: HostArray
    c: HostArray
    e: HostArray
    P: HostArray
    order: int
    error_order: int
    stability_boundary: float

    @property
    def n_stages(self) -> int:
        return self.b.shape[0]

    @functools.cached_property
    def A_rows(self) -> list:
        """Row ``i`` of ``A`` up to the diagonal (C-contiguous float64 host arrays)."""
        return [np.asarray(self.A[i, :i], dtype=np.float64, copy=True)
                for i in range(self.n_stages)]

    @functools.cached_property
    def _P_rows(self) -> tuple:
        return tuple(tuple(float(v) for v in self.P[i, :]) for i in range(self.P.shape[0]))

    def host_step(self, n: int) -> Callable[..., Any]:
        """One attempted step for an ``n``-component state on Python floats.

        ``step = host_step(n)(f, p, mvs, bufs, shape, bad, rtol, atol)`` (once per solve)
        gives ``step(t, h, y, K)``, which fills ``K[1..s-1]`` (lists of ``n`` floats;
        ``K[0]`` given, the FSAL slope) by calling ``f(t_i, bufs[i], p)`` with the stage
        argument written into the preallocated float64 array ``bufs[i]`` (through its
        memoryview ``mvs[i]``), and returns ``(y_new, E)``: the new state (a list) and the
        scaled RMS error norm. ``bad(t_i, g)`` is called when ``f`` returns the wrong shape
        (it raises the error naming ``t_i``).

        Generated once per tableau and ``n``, unrolled over stages and components with the
        coefficients as float literals (their ``repr`` round-trips exactly) and every sum in
        the order of the compiled stage kernels ``ode.rk_combine`` / ``ode.rk_error_norm``
        (``Σ_j a_j k_j`` left to right, then ``y + h·Σ``;
        ``(h·Σ_j e_j k_j) / (atol + rtol max(|y|, |y_new|))``), so results equal theirs to
        the last bit (up to the sign of an exact zero sum). For a state of a few components
        this straight-line float code costs less than one compiled-kernel call per stage
        plus the copies around it.
        """
        key = (self.name, n, "step")
        fn = _HOST_CODE.get(key)
        if fn is None:
            fn = _HOST_CODE[key] = _make_host_step(self, n)
        return fn

    def host_dense(self, n: int) -> Callable[..., Any]:
        """``host_dense(n)(theta, h, y, K)``: ``y + h Σ_i b_i(θ) K[i]`` on Python floats.

        The continuous extension (weights by Horner in ``θ``, combination summed as
        ``ode.rk_combine`` sums it), unrolled for ``n`` components like :meth:`host_step`.
        """
        key = (self.name, n, "dense")
        fn = _HOST_CODE.get(key)
        if fn is None:
            fn = _HOST_CODE[key] = _make_host_dense(self, n)
        return fn

    def dense_weights(self, theta: float) -> list:
        """``b_i(θ)`` for the continuous extension, as Python floats (a list).

        Evaluated per output time on the host, so plain float arithmetic (Horner) is used.
        """
        out = []
        for row in self._P_rows:
            acc = 0.0
            for coef in reversed(row):
                acc = (acc + coef) * theta
            out.append(acc)
        return out


_HOST_CODE: dict = {}


def _lit(v) -> str:
    return f"({float(v)!r})"


def _compile(src: list, name: str, fn: str):
    import math

    scope = {"_sqrt": math.sqrt}
    exec(compile("\n".join(src), f"<diffsolve.ode {name}>", "exec"), scope)
    return scope[fn]


def _make_host_step(tab: Tableau, n: int):
    s = tab.n_stages

    def k(i, j):
        return f"k{i}_{j}"

    def lin(coeffs, m, j):  # "c0 * k0_j + c1 * k1_j + ...": left to right, as the kernels
        return " + ".join(f"{_lit(coeffs[i])} * {k(i, j)}" for i in range(m))

    ys = ", ".join(f"y{j}" for j in range(n))
    # a factory binding the per-solve constants (f, params, the stage buffers, ...) as
    # closure cells: the step itself takes only what changes
    src = ["def make(f, p, mvs, bufs, shape, bad, rtol, atol):",
           f"    {', '.join(f'mv{i}' for i in range(s))}, = mvs",
           f"    {', '.join(f'buf{i}' for i in range(s))}, = bufs",
           "    def host_step(t, h, y, K):",
           f"        {ys}, = y",
           f"        {', '.join(k(0, j) for j in range(n))}, = K[0]"]
    for i in range(1, s):
        for j in range(n):
            src.append(f"        mv{i}[{j}] = g{j} = y{j} + h * ({lin(tab.A[i, :i], i, j)})")
        src += [
            f"        ti = t + {_lit(tab.c[i])} * h",
            f"        out = f(ti, buf{i}, p)",
            "        if getattr(out, 'shape', None) != shape:",
            f"            bad(ti, buf{i})",
            f"        K[{i}] = ki = out.tolist()",
            f"        {', '.join(k(i, j) for j in range(n))}, = ki",
        ]
    src.append("        acc = 0.0")
    for j in range(n):
        src += [f"        a = abs(y{j})",
                f"        b = abs(g{j})",
                f"        r = h * ({lin(tab.e, s, j)}) / (atol + rtol * (b if b > a else a))",
                "        acc += r * r"]
    src.append(f"        return [{', '.join(f'g{j}' for j in range(n))}], _sqrt(acc / {n})")
    src.append("    return host_step")
    return _compile(src, f"host_step {tab.name} n={n}", "make")


def _make_host_dense(tab: Tableau, n: int):
    s = tab.n_stages
    src = ["def host_dense(theta, h, y, K):"]
    for i in range(s):
        acc = "0.0"
        for coef in reversed(tab.P[i, :].tolist()):  # as Tableau.dense_weights
            acc = f"({acc} + {_lit(coef)}) * theta"
        src.append(f"    w{i} = {acc}")
    src.append(f"    {', '.join(f'y{j}' for j in range(n))}, = y")
    for i in range(s):
        src.append(f"    {', '.join(f'k{i}_{j}' for j in range(n))}, = K[{i}]")
    rows = []
    for j in range(n):
        terms = " + ".join(f"w{i} * k{i}_{j}" for i in range(s))
        rows.append(f"y{j} + h * (0.0 + {terms})")
    src.append(f"    return [{', '.join(rows)}]")
    return _compile(src, f"host_dense {tab.name} n={n}", "host_dense")


def _fsal(A_rows, b, c, e, P, **kw):
    s = len(b)
    A = [[0.0] * s for _ in range(s)]
    for i, row in enumerate([*A_rows, b], start=1):
        A[i][: len(row)] = row  # the last row, b: the FSAL stage is y_{n+1}
    f64 = np.float64
    return dict(A=np.asarray(A, dtype=f64), b=np.asarray(b, dtype=f64),
                c=np.asarray(c, dtype=f64), e=np.asarray(e, dtype=f64),
                P=np.asarray(P, dtype=f64), **kw)


def _dopri5() -> Tableau:
    rows = [
        [1 / 5],
        [3 / 40, 9 / 40],
        [44 / 45, -56 / 15, 32 / 9],
        [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729],
        [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656],
    ]
    b = [35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0]
    c = [0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0]
    e = [-71 / 57600, 0.0, 71 / 16695, -71 / 1920, 17253 / 339200, -22 / 525, 1 / 40]
    P = [
        [1, -8048581381 / 2820520608, 8663915743 / 2820520608, -12715105075 / 11282082432],
        [0, 0, 0, 0],
        [0, 131558114200 / 32700410799, -68118460800 / 10900136933,
         87487479700 / 32700410799],
        [0, -1754552775 / 470086768, 14199869525 / 1410260304, -10690763975 / 1880347072],
        [0, 127303824393 / 49829197408, -318862633887 / 49829197408,
         701980252875 / 199316789632],
        [0, -282668133 / 205662961, 2019193451 / 616988883, -1453857185 / 822651844],
        [0, 40617522 / 29380423, -110615467 / 29380423, 69997945 / 29380423],
    ]
    return Tableau(name="dopri5", **_fsal(rows, b, c, e, P, order=5, error_order=4,
                                          stability_boundary=3.3066))


def _tsit5_dense() -> HostArray:
    """The Tsit5 interpolation weights b_i(θ), expanded from their factored form."""
    def polymul(a, b):  # coefficient lists, lowest power first
        out = [0.0] * (len(a) + len(b) - 1)
        for i, ai in enumerate(a):
            for j, bj in enumerate(b):
                out[i + j] += ai * bj
        return out

    # each entry: (leading constant, roots of linear factors, quadratic factors (1, p, q)
    # meaning θ² + pθ + q, power of θ)
    factored = [
        (-1.0530884977290216, [1.3299890189751412], [(-1.4364028541716351, 0.7139816917074209)], 1),
        (0.1017, [], [(-2.1966568338249754, 1.2949852507374631)], 2),
        (2.490627285651252793, [], [(-2.38535645472061657, 1.57803468208092486)], 2),
        (-16.54810288924490272, [1.21712927295533244, 0.61620406037800089], [], 2),
        (47.37952196281928122, [1.203071208372362603, 0.658047292653547382], [], 2),
        (-34.87065786149660974, [1.2, 0.666666666666666667], [], 2),
        (2.5, [1.0, 0.6], [], 2),
    ]
    rows = []
    for const, roots, quads, power in factored:
        p = [0.0] * power + [const]
        for r in roots:
            p = polymul(p, [-r, 1.0])
        for lin, cst in quads:
            p = polymul(p, [cst, lin, 1.0])
        rows.append(p[1:5])  # degree 4, no constant term: b_i(0) = 0
    return np.asarray(rows, dtype=np.float64)


def _tsit5() -> Tableau:
    rows = [
        [161 / 1000],
        [-0.8480655492356988544426874250230774675121177393430391537369234245294192976164141156943e-2,
         0.3354806554923569885444268742502307746751211773934303915373692342452941929761641411569],
        [2.897153057105493432130432594192938764924887287701866490314866693455023795137503079289,
         -6.359448489975074843148159912383825625952700647415626703305928850207288721235210244366,
         4.362295432869581411017727318190886861027813359713760212991062156752264926097707165077],
        [5.325864828439256604428877920840511317836476253097040101202360397727981648835607691791,
         -11.74888356406282787774717033978577296188744178259862899288666928009020615663593781589,
         7.495539342889836208304604784564358155658679161518186721010132816213648793440552049753,
         -0.9249506636175524925650207933207191611349983406029535244034750452930469056411389539635e-1],
        [5.861455442946420028659251486982647890394337666164814434818157239052507339770711679748,
         -12.92096931784710929170611868178335939541780751955743459166312250439928519268343184452,
         8.159367898576158643180400794539253485181918321135053305748355423955009222648673734986,
         -0.7158497328140099722453054252582973869127213147363544882721139659546372402303777878835e-1,
         -0.2826905039406838290900305721271224146717633626879770007617876201276764571291579142206e-1],
    ]
    b = [0.9646076681806522951816731316512876333711995238157997181903319145764851595234062815396e-1,
         1 / 100,
         0.4798896504144995747752495322905965199130404621990332488332634944254542060153074523509,
         1.379008574103741893192274821856872770756462643091360525934940067397245698027561293331,
         -3.290069515436080679901047585711363850115683290894936158531296799594813811049925401677,
         2.324710524099773982415355918398765796109060233222962411944060046314465391054716027841,
         0.0]
    bhat = [0.9468075576583945807478876255758922856117527357724631226139574065785592789071067303271e-1,  # noqa: E501
            0.9183565540343253096776363936645313759813746240984095238905939532922955247253608687270e-2,
            0.4877705284247615707855642599631228241516691959761363774365216240304071651579571959813,
            1.234297566930478985655109673884237654035539930748192848315425833500484878378061439761,
            -2.707712349983525454881109975059321670689605166938197378763992255714444407154902012702,
            1.866628418170587035753719399566211498666255505244122593996591602841258328965767580089,
            1 / 66]
    c = [0.0, 161 / 1000, 327 / 1000, 9 / 10,
         0.9800255409045096857298102862870245954942137979563024768854764293221195950761080302604,
         1.0, 1.0]
    e = [bi - bh for bi, bh in zip(b, bhat)]
    return Tableau(name="tsit5", **_fsal(rows, b, c, e, _tsit5_dense(), order=5,
                                         error_order=4, stability_boundary=3.5068))


def _bs3() -> Tableau:
    rows = [[1 / 2], [0.0, 3 / 4]]
    b = [2 / 9, 1 / 3, 4 / 9, 0.0]
    c = [0.0, 1 / 2, 3 / 4, 1.0]
    e = [5 / 72, -1 / 12, -1 / 9, 1 / 8]
    P = [[1, -4 / 3, 5 / 9], [0, 1, -2 / 3], [0, 4 / 3, -8 / 9], [0, -1, 1]]
    return Tableau(name="bs3", **_fsal(rows, b, c, e, P, order=3, error_order=2,
                                       stability_boundary=2.5127))


TABLEAUX = {t.name: t for t in (_dopri5(), _tsit5(), _bs3())}


def get_tableau(name: str) -> Tableau:
    return TABLEAUX[name]
