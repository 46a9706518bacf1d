"""Naive references for the convolution network of DCDM (plain loops / NumPy, slow)."""

from __future__ import annotations

import numpy as np


def naive_conv_same(x, w, bias):
    """'same' zero-padded stride-1 cross-correlation, one output value at a time.

    x (B, Cin, D, H, W), w (Cout, Cin, kd, kh, kw) with odd sizes, bias (Cout,).
    """
    nb, cin, nd, nh, nw = x.shape
    cout, _, kd, kh, kw = w.shape
    out = np.zeros((nb, cout, nd, nh, nw), dtype=np.float64)
    for b in range(nb):
        for co in range(cout):
            for d in range(nd):
                for h in range(nh):
                    for i in range(nw):
                        acc = float(bias[co])
                        for ci in range(cin):
                            for a in range(kd):
                                for c in range(kh):
                                    for e in range(kw):
                                        sd = d + a - kd // 2
                                        sh = h + c - kh // 2
                                        si = i + e - kw // 2
                                        if 0 <= sd < nd and 0 <= sh < nh and 0 <= si < nw:
                                            acc += (float(w[co, ci, a, c, e])
                                                    * float(x[b, ci, sd, sh, si]))
                        out[b, co, d, h, i] = acc
    return out


def naive_network(params, x, n_blocks, pool, conv=naive_conv_same):
    """The ConvDirectionModel network written out directly (float64, NumPy)."""

    def relu(v):
        return np.maximum(v, 0.0)

    def block(h, name):
        t = conv(relu(h), params[name + ".w1"], params[name + ".b1"])
        return h + conv(relu(t), params[name + ".w2"], params[name + ".b2"])

    h = conv(x, params["in.w"], params["in.b"])
    for i in range(n_blocks):
        h = block(h, f"fine_in{i}")
    nb, c, nd, nh, nw = h.shape
    fd, fh, fw = pool
    full = (-(-nd // fd) * fd, -(-nh // fh) * fh, -(-nw // fw) * fw)
    hp = np.zeros((nb, c, *full))
    hp[:, :, :nd, :nh, :nw] = h
    d = hp.reshape(nb, c, full[0] // fd, fd, full[1] // fh, fh, full[2] // fw, fw).mean(
        axis=(3, 5, 7))
    for i in range(n_blocks):
        d = block(d, f"coarse{i}")
    up = np.repeat(np.repeat(np.repeat(d, fd, axis=2), fh, axis=3), fw, axis=4)
    h = h + up[:, :, :nd, :nh, :nw]
    for i in range(n_blocks):
        h = block(h, f"fine_out{i}")
    return conv(h, params["out.w"], params["out.b"])
