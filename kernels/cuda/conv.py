"""CuPy twin of :mod:`diffsolve.kernels.cpu.conv` (identical signature, in place).

A cuDNN-free direct convolution: one thread per output value, looping over the input
channels and the filter taps. With the model's 16 channels and 3×3(×3) filters that is
144 (432) multiply-adds per thread, reading ``x`` through the read-only cache; no im2col
buffer is allocated.
"""

from __future__ import annotations

import cupy

from ._raw import KernelCache, as_device, launch

__all__ = ["conv_same"]

_SOURCE = r"""
extern "C" __global__ void conv_same(const real_t* __restrict__ x, const real_t* __restrict__ w,
                                     const real_t* __restrict__ bias, real_t* out,
                                     int nb, int cin, int nd, int nh, int nw, int cout,
                                     int kd, int kh, int kw)
{
    const long long total = (long long)nb * cout * nd * nh * nw;
    const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= total) return;
    long long t = idx;
    const int i = t % nw; t /= nw;
    const int h = t % nh; t /= nh;
    const int d = t % nd; t /= nd;
    const int co = t % cout;
    const int b = t / cout;
    const int pd = kd / 2, ph = kh / 2, pw = kw / 2;
    const long long plane = (long long)nd * nh * nw;
    real_t acc = bias[co];
    for (int ci = 0; ci < cin; ++ci) {
        const real_t* xc = x + ((long long)b * cin + ci) * plane;
        const real_t* wc = w + ((long long)co * cin + ci) * kd * kh * kw;
        for (int a = 0; a < kd; ++a) {
            const int sd = d + a - pd;
            if (sd < 0 || sd >= nd) continue;
            for (int c = 0; c < kh; ++c) {
                const int sh = h + c - ph;
                if (sh < 0 || sh >= nh) continue;
                for (int e = 0; e < kw; ++e) {
                    const int si = i + e - pw;
                    if (si < 0 || si >= nw) continue;
                    acc += wc[(a * kh + c) * kw + e] * xc[((long long)sd * nh + sh) * nw + si];
                }
            }
        }
    }
    out[idx] = acc;
}
"""

_KERNELS = KernelCache({"conv_same": (_SOURCE, ("real_t",))})


def conv_same(x, w, bias, out):
    """``out = conv(x, w) + bias`` with zero 'same' padding, stride 1 (in place).

    Same contract as :func:`diffsolve.kernels.cpu.conv.conv_same`, on CuPy arrays.
    """
    x = as_device(x, "conv_same: x")
    w = as_device(w, "conv_same: w")
    bias = as_device(bias, "conv_same: bias")
    if x.ndim != 5 or w.ndim != 5 or w.shape[1] != x.shape[1]:
        raise ValueError(f"conv_same: x {x.shape} and w {w.shape} must be 5-D with matching "
                         "input channels")
    if any(k % 2 == 0 for k in w.shape[2:]):
        raise ValueError(f"conv_same: filter sizes must be odd, got {w.shape[2:]}")
    if out.shape != (x.shape[0], w.shape[0], *x.shape[2:]):
        raise ValueError(f"conv_same: out has shape {out.shape}, expected "
                         f"{(x.shape[0], w.shape[0], *x.shape[2:])}")
    if not (x.dtype == w.dtype == bias.dtype == out.dtype):
        raise TypeError(f"conv_same: x, w, bias and out must share one dtype, got "
                        f"{x.dtype}, {w.dtype}, {bias.dtype}, {out.dtype}")
    if not out.flags.c_contiguous:
        raise ValueError("conv_same: out must be C-contiguous")
    kern = _KERNELS.get("conv_same", (x, "conv_same: x"))
    nb, cin, nd, nh, nw = x.shape
    cout, _, kd, kh, kw = w.shape
    launch(kern, out.size, (x, w, bias, out, cupy.int32(nb), cupy.int32(cin), cupy.int32(nd),
                            cupy.int32(nh), cupy.int32(nw), cupy.int32(cout), cupy.int32(kd),
                            cupy.int32(kh), cupy.int32(kw)))
    return out
