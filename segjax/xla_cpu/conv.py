"""Convolutions as matmuls where XLA:CPU's convolution is slow: :func:`conv_general_dilated_gemm`.

XLA:CPU lowers the weight gradient of a convolution to a "backward-filter" convolution whose
inner (feature) dimension is the batch size, which misses its fast conv kernels: measured 3–4×
slower than the forward conv, and ~50× for transposed convs (docs/PERFORMANCE.md).
:func:`conv_general_dilated_gemm` computes the same numbers with what XLA:CPU runs fast:

* the weight gradient as one matmul per kernel tap, ``dW[i, j] = shift_ij(x)ᵀ · dy``
  contracting N·Ho·Wo (forward and input gradient stay XLA's convolutions);
* 1×1 convs as matmuls (forward and both gradients);
* depthwise convs as sums of shifted, per-channel scaled slices (one fused loop);
* atrous convs whose taps mostly read padding (ASPP rates 12/24/36 on 32×32 maps) as shifted
  matmuls over the output regions each tap really reaches;
* dense stride-1 3×3 convs (≥ 64 channels) as Winograd F(m×m, 3×3) (:mod:`segjax.xla_cpu.winograd`;
  m = 2 by default, 4 under ``winograd.output_tile_scope(4)``): 16 GEMMs per conv with 2.25×
  fewer multiply-adds (36 with 4× fewer for m = 4), forward and both gradients.

:func:`segjax.xla_cpu.conv_impl_scope` routes every traced ``nn.Conv`` through it.
"""

import jax
import jax.numpy as jnp

from segjax.xla_cpu.winograd import after, conv3x3_winograd, use_winograd

_NHWC = ("NHWC", "HWIO", "NHWC")


def _own_transpose(v, perm):
    """``jnp.transpose`` run as a copy of its own, of an already materialised buffer.

    Left to itself XLA:CPU fuses the transposing copy a weight-gradient dot needs into the
    elementwise ops producing its operand (batch-norm backward, a shifted slice), and its loop
    emitter then reads every input in transposed order: measured 5–15× slower than the same
    transpose alone, a third of a ResNet-50 train step. The barriers keep the producer out and
    stop the dot from folding the transpose back into its dimension numbers.
    """
    barrier = jax.lax.optimization_barrier
    return barrier(jnp.transpose(barrier(v), perm))


def _tap_windows(x, dy, kshape, strides, padding, rhs_dilation, lhs_dilation):
    """The two operands of the per-tap weight-gradient matmuls and where each tap's window lies.

    Returns ``(varying, fixed, window_bounds)``: tap ``(i, j)`` multiplies the window
    ``window_bounds(i, j) = (start, stop, strides)`` (spatial) of ``varying`` (already padded)
    with the whole of ``fixed``. Which of ``x`` and ``dy`` varies is explained in
    :func:`_taps_weight_grad`.
    """
    kh, kw, _, _ = kshape
    _, h, w, _ = x.shape
    _, ho, wo, _ = dy.shape
    (sh, sw), (dh, dw) = strides, rhs_dilation
    if tuple(lhs_dilation) == (1, 1):
        # Tap (i, j): a window of the padded input against the whole output gradient.
        varying, fixed, steps = x, dy, (sh, sw)
        pad_cfg = ((0, 0, 0), (*padding[0], 0), (*padding[1], 0), (0, 0, 0))

        def window(i, j):
            return (i * dh, j * dw), (ho, wo)

    else:
        if (sh, sw, dh, dw) != (1, 1, 1, 1):
            raise ValueError(
                "_taps_weight_grad: input dilation needs unit window strides and kernel dilation, "
                f"got strides {strides}, rhs_dilation {rhs_dilation}"
            )
        # Tap (i, j): the undilated input against a strided window of the padded output grad.
        (lh, lw), (lo_h, lo_w) = lhs_dilation, (padding[0][0], padding[1][0])
        left_h, left_w = kh - 1 + max(0, -lo_h), kw - 1 + max(0, -lo_w)
        right_h = max(0, lo_h + lh * (h - 1) + 1 - ho)
        right_w = max(0, lo_w + lw * (w - 1) + 1 - wo)
        varying, fixed, steps = dy, x, (lh, lw)
        pad_cfg = ((0, 0, 0), (left_h, right_h, 0), (left_w, right_w, 0), (0, 0, 0))

        def window(i, j):
            return (lo_h - i + left_h, lo_w - j + left_w), (h, w)

    if any(v for dim in pad_cfg for v in dim):
        varying = jax.lax.pad(varying, jnp.zeros((), varying.dtype), pad_cfg)

    def window_bounds(i, j):  # spatial start, stop and strides of tap (i, j)'s window
        (top, left), (rows, cols) = window(i, j)
        stop = (top + (rows - 1) * steps[0] + 1, left + (cols - 1) * steps[1] + 1)
        return (top, left), stop, steps

    return varying, fixed, window_bounds


def _nhwc_window(varying, bounds):
    """``[N, rows, cols, C]`` window of the (padded) varying operand; ``bounds`` as above."""
    (start, stop, strides), (n, c) = bounds, (varying.shape[0], varying.shape[-1])
    return jax.lax.slice(varying, (0, *start, 0), (n, *stop, c), (1, *strides, 1))


def _dense_taps_weight_grad(varying, fixed, window_bounds, kshape, x_varies, acc):
    """Ungrouped taps as ``[C, P] · [P, C']`` GEMMs, the narrower operand transposed once.

    Every tap contracts the pixels, so one operand must be pixel-minor. Returns the kernel
    gradient ``[KH, KW, Cin, Cout]`` in ``acc`` precision.
    """
    kh, kw, ci, co = kshape
    n = varying.shape[0]
    p = n * fixed.shape[1] * fixed.shape[2]
    dot = lambda a, b: jax.lax.dot(a, b, preferred_element_type=acc)
    c_var, c_fix = (ci, co) if x_varies else (co, ci)
    taps = []
    if c_fix <= c_var:  # transpose the fixed operand once: [c_fix, P] · window [P, c_var]
        fixed_t = _own_transpose(fixed.reshape(p, c_fix), (1, 0))
        for i in range(kh):
            for j in range(kw):
                win = _nhwc_window(varying, window_bounds(i, j)).reshape(p, c_var)
                taps.append(dot(fixed_t, win))  # [c_fix, c_var]
        out = jnp.stack(taps)  # [taps, c_fix, c_var]
        out = out.transpose(0, 2, 1) if x_varies else out  # → [taps, ci, co]
    else:  # transpose the varying operand once: window [c_var, P] · [P, c_fix]
        var_t = _own_transpose(varying, (3, 0, 1, 2))  # [c_var, N, H, W]
        fixed_flat = fixed.reshape(p, c_fix)
        for i in range(kh):
            for j in range(kw):
                start, stop, strides_ = window_bounds(i, j)
                win = jax.lax.slice(var_t, (0, 0, *start), (c_var, n, *stop), (1, 1, *strides_))
                taps.append(dot(win.reshape(c_var, p), fixed_flat))  # [c_var, c_fix]
        out = jnp.stack(taps)
        out = out if x_varies else out.transpose(0, 2, 1)
    return out.reshape(kh, kw, ci, co)


def _taps_weight_grad(
    x, dy, kshape, strides, padding, rhs_dilation, groups, out_dtype, lhs_dilation=(1, 1)
):
    """dL/dkernel of an NHWC/HWIO conv as ``KH·KW`` matmuls (float32 accumulation).

    Tap ``(i, j)`` pairs every output pixel with the input pixel it reads: a strided slice of the
    padded input (plain / strided / atrous convs) or, for input-dilated (transposed) convs with
    unit stride and kernel dilation, a strided slice of the padded output gradient against the
    undilated input (no multiplications by the inserted zeros). Every tap contracts the pixels,
    so one operand must be pixel-minor: the narrower of the two is transposed once, up front,
    and each tap is a plain ``[C, P] · [P, C']`` GEMM.
    """
    kh, kw, cig, co = kshape
    n = x.shape[0]
    cog = co // groups
    varying, fixed, window_bounds = _tap_windows(
        x, dy, kshape, strides, padding, rhs_dilation, lhs_dilation
    )
    p = n * fixed.shape[1] * fixed.shape[2]
    acc = jnp.promote_types(x.dtype, jnp.float32)  # float32 accumulation, float64 kept
    x_varies = tuple(lhs_dilation) == (1, 1)
    if groups == 1 and cig > 1:
        out = _dense_taps_weight_grad(varying, fixed, window_bounds, kshape, x_varies, acc)
        return out.astype(out_dtype)

    taps = []  # grouped and depthwise kernels: pixel-major operands, batched over groups
    for i in range(kh):
        for j in range(kw):
            win = _nhwc_window(varying, window_bounds(i, j))
            a, b = (win, dy) if x_varies else (x, win)
            a, b = a.reshape(p, groups, cig), b.reshape(p, groups, cog)
            if cig == 1:  # depthwise: a per-channel reduction, not a matmul
                t = jnp.sum(a.astype(acc) * b.astype(acc), axis=0)
            else:  # [G, cig, cog] batched over groups, contracting the pixels
                t = jax.lax.dot_general(
                    a, b, (((0,), (0,)), ((1,), (1,))), preferred_element_type=acc
                ).transpose(1, 0, 2)
            taps.append(t.reshape(cig, co).astype(out_dtype))
    return jnp.stack(taps).reshape(kh, kw, cig, co)


def _use_taps(kshape, groups, lhs_dilation=(1, 1)) -> bool:
    """Where per-tap matmuls beat XLA:CPU's backward-filter conv (benchmarks/conv_impl.py)."""
    kh, kw, cig, _ = kshape
    if kh * kw > 49:  # one matmul per tap: keep the unrolled graph small (FCN's 64×64 convT)
        return False
    return tuple(lhs_dilation) != (1, 1) or kh * kw == 1 or cig == 1 or cig >= 128


def _xla_conv(x, k, strides, padding, lhs_dilation, rhs_dilation, groups, precision):
    return jax.lax.conv_general_dilated(
        x,
        k,
        strides,
        padding,
        lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation,
        dimension_numbers=_NHWC,
        feature_group_count=groups,
        precision=precision,
    )


_conv_taps = jax.custom_vjp(_xla_conv, nondiff_argnums=(2, 3, 4, 5, 6, 7))


def _conv_taps_fwd(x, k, strides, padding, lhs_dilation, rhs_dilation, groups, precision):
    y = _conv_taps(x, k, strides, padding, lhs_dilation, rhs_dilation, groups, precision)
    return y, (x, k)


def _conv_taps_bwd(strides, padding, lhs_dilation, rhs_dilation, groups, precision, res, dy):
    x, k = res
    conv = lambda x, k: _xla_conv(
        x, k, strides, padding, lhs_dilation, rhs_dilation, groups, precision
    )
    if not _use_taps(k.shape, groups, lhs_dilation):
        return jax.vjp(conv, x, k)[1](dy)
    (dx,) = jax.vjp(lambda x: conv(x, k), x)[1](dy)  # XLA's input gradient (fast already)
    dk = _taps_weight_grad(
        x, dy, k.shape, strides, padding, rhs_dilation, groups, k.dtype, lhs_dilation
    )
    # The kernel gradient feeds only the optimiser: unfenced, XLA:CPU schedules it at the end
    # of the backward and every layer's dy stays alive until then (docs/PERFORMANCE.md).
    return after(dx, dk), dk


_conv_taps.defvjp(_conv_taps_fwd, _conv_taps_bwd)


def _pointwise_fwd_impl(x, k, precision):
    return jnp.einsum("nhwc,cd->nhwd", x, k, precision=precision)


_pointwise = jax.custom_vjp(_pointwise_fwd_impl, nondiff_argnums=(2,))


def _pointwise_fwd(x, k, precision):
    return _pointwise(x, k, precision), (x, k)


def _pointwise_bwd(precision, res, dy):
    x, k = res
    dx = jnp.einsum("nhwd,cd->nhwc", dy, k, precision=precision)
    dk = _taps_weight_grad(x, dy, (1, 1, *k.shape), (1, 1), ((0, 0), (0, 0)), (1, 1), 1, k.dtype)
    return after(dx, dk), dk[0, 0]  # fenced as in _conv_taps_bwd


_pointwise.defvjp(_pointwise_fwd, _pointwise_bwd)


def _is_2d_nhwc(lhs, rhs, dimension_numbers) -> bool:
    """Whether a ``lax.conv_general_dilated`` call is a 2-D NHWC/HWIO/NHWC convolution."""
    nd = lhs.ndim - 2
    return nd == 2 and (
        dimension_numbers == _NHWC
        or (
            isinstance(dimension_numbers, jax.lax.ConvDimensionNumbers)
            and dimension_numbers == jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
        )
    )


def _explicit_padding(lhs_shape, rhs_shape, strides, padding, rhs_dilation):
    """``((top, bottom), (left, right))`` as Python ints for explicit or string padding."""
    if isinstance(padding, str):
        window = tuple((k - 1) * d + 1 for k, d in zip(rhs_shape[:2], rhs_dilation))
        padding = jax.lax.padtype_to_pads(lhs_shape[1:3], window, strides, padding)
    return tuple(tuple(int(v) for v in p) for p in padding)


def conv_general_dilated_gemm(
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count=1,
    batch_group_count=1,
    precision=None,
    preferred_element_type=None,
):
    """Drop-in ``lax.conv_general_dilated`` that runs convolutions as matmuls where that is faster.

    1×1 convs are einsums; depthwise convs are sums of shifted slices times per-channel weights;
    stride-1 atrous convs doing mostly padding work are shifted matmuls over live regions; dense
    stride-1 3×3 convs with ≥ 64 channels run as Winograd F(m×m, 3×3) GEMMs, m from
    ``winograd.active_output_tile()`` (forward and both gradients); every other conv keeps
    XLA's forward and input gradient and gets a per-tap matmul weight gradient (custom VJP).

    Same forward result and the same gradients (within float rounding) as
    ``lax.conv_general_dilated``. 2-D NHWC/HWIO convs take the custom VJP (input-dilated, i.e.
    transposed, ones only with unit strides and kernel dilation and explicit padding, which is
    what ``lax.conv_transpose`` produces); everything else falls through to
    ``lax.conv_general_dilated``. Pass it to
    ``nn.Conv(conv_general_dilated=...)`` or use :func:`segjax.xla_cpu.conv_impl_scope`.
    """
    nd = lhs.ndim - 2
    lhs_dilation = tuple(lhs_dilation or (1,) * nd)
    rhs_dilation = tuple(rhs_dilation or (1,) * nd)
    transposed = any(v != 1 for v in lhs_dilation)
    if not (
        _is_2d_nhwc(lhs, rhs, dimension_numbers)
        and (not transposed or all(v == 1 for v in (*window_strides, *rhs_dilation)))
        and not (transposed and isinstance(padding, str))
        and batch_group_count == 1
        and preferred_element_type is None
    ):
        return jax.lax.conv_general_dilated(
            lhs,
            rhs,
            window_strides,
            padding,
            lhs_dilation,
            rhs_dilation,
            dimension_numbers,
            feature_group_count,
            batch_group_count,
            precision,
            preferred_element_type,
        )
    strides = tuple(int(s) for s in window_strides)
    padding = _explicit_padding(lhs.shape, rhs.shape, strides, padding, rhs_dilation)
    if (
        not transposed
        and rhs.shape[:2] == (1, 1)
        and feature_group_count == 1
        and all(v == 0 for pad in padding for v in pad)
    ):
        # 1×1 conv: a matmul (XLA:CPU runs dots ~2× faster than the same 1×1 convolution).
        x = lhs[:, :: strides[0], :: strides[1]] if strides != (1, 1) else lhs
        return _pointwise(x, rhs[0, 0], precision)
    channels = lhs.shape[-1]
    if not transposed and feature_group_count == channels == rhs.shape[-1] and channels > 1:
        return _depthwise_taps_conv(lhs, rhs, strides, padding, rhs_dilation)
    if not transposed and strides == (1, 1) and feature_group_count == 1:
        live = _live_fraction(lhs.shape[1:3], rhs.shape[:2], padding, rhs_dilation)
        # Measured: a win on ASPP (2048 → 256 channels) from 56 % live work down, a loss on
        # 256-channel convs unless most taps are dead (benchmarks/conv_impl.py).
        if live <= 0.3 or (live <= 0.8 and channels >= 512):
            return _shifted_matmul_conv(lhs, rhs, padding, rhs_dilation, precision)
    if not transposed:
        rhs, padding = _crop_dead_taps(lhs.shape[1:3], rhs, strides, padding, rhs_dilation)
        if use_winograd(lhs.shape, rhs.shape, strides, padding, rhs_dilation, feature_group_count):
            return conv3x3_winograd(lhs, rhs, padding, rhs_dilation[0], precision)
    return _conv_taps(
        lhs, rhs, strides, padding, lhs_dilation, rhs_dilation, int(feature_group_count), precision
    )


def _tap_ranges(size, k, d, lo, out):
    """For each tap of one spatial dim: the output range ``[a, b)`` whose input is not padding."""
    return [(max(0, lo - i * d), min(out, size + lo - i * d)) for i in range(k)]


def _live_fraction(spatial, kernel, padding, rhs_dilation) -> float:
    """Share of a stride-1 conv's multiply-adds that read real input rather than padding."""
    fraction = 1.0
    for size, k, d, (lo, hi) in zip(spatial, kernel, rhs_dilation, padding):
        out = size + lo + hi - d * (k - 1)
        if out <= 0:
            return 1.0
        live = sum(max(0, b - a) for a, b in _tap_ranges(size, k, d, lo, out))
        fraction *= live / (k * out)
    return fraction


def _live_taps(x_shape, k_shape, padding, rhs_dilation):
    """Output size and, per kernel tap that reads real input, its input and output windows.

    Returns ``(ho, wo, taps)`` with ``taps`` a list of ``(i, j, (r0, c0), (ra, rb, ca, cb))``:
    tap ``(i, j)`` adds ``x[:, r0 : r0 + rb - ra, c0 : c0 + cb - ca] · k[i, j]`` to the output
    rows ``[ra, rb)`` and columns ``[ca, cb)``; taps that would only read padding are left out.
    """
    _, h, w, _ = x_shape
    kh, kw = k_shape[:2]
    (dh, dw), ((top, bottom), (left, right)) = rhs_dilation, padding
    ho, wo = h + top + bottom - dh * (kh - 1), w + left + right - dw * (kw - 1)
    taps = []
    for i, (ra, rb) in enumerate(_tap_ranges(h, kh, dh, top, ho)):
        for j, (ca, cb) in enumerate(_tap_ranges(w, kw, dw, left, wo)):
            if ra < rb and ca < cb:
                taps.append((i, j, (ra + i * dh - top, ca + j * dw - left), (ra, rb, ca, cb)))
    return ho, wo, taps


def _window(v, start, rows, cols):
    """``v[:, start[0] : start[0] + rows, start[1] : start[1] + cols]`` (NHWC)."""
    return _nhwc_window(v, (start, (start[0] + rows, start[1] + cols), (1, 1)))


def _shifted_matmul_conv_impl(x, k, padding, rhs_dilation, precision):
    """A stride-1 NHWC conv as one matmul per kernel tap over the outputs it really reaches.

    Exact reformulation for atrous convs whose rate is large next to the feature map (ASPP rates
    12/24/36 on 32×32 or 64×64 maps): taps that would multiply zero padding are skipped region by
    region, and forward and both gradients are plain matmuls (plus slices, pads and adds). The
    backward keeps only ``x`` and ``k`` and slices ``x`` again (saving every tap's window of a
    2048-channel input, up to 8 shifted copies of it, cost 1.9 GiB at batch 8, 512²), and
    computes the input gradient block by block (:func:`_shifted_input_grad`).
    """
    n = x.shape[0]
    ho, wo, taps = _live_taps(x.shape, k.shape, padding, rhs_dilation)
    y = None
    for i, j, start, (ra, rb, ca, cb) in taps:
        part = _pointwise_fwd_impl(_window(x, start, rb - ra, cb - ca), k[i, j], precision)
        part = jnp.pad(part, ((0, 0), (ra, ho - rb), (ca, wo - cb), (0, 0)))
        y = part if y is None else y + part
    if y is None:  # every tap reads padding only
        return jnp.zeros((n, ho, wo, k.shape[-1]), jnp.result_type(x, k))
    return y


_shifted_matmul_conv = jax.custom_vjp(_shifted_matmul_conv_impl, nondiff_argnums=(2, 3, 4))


def _shifted_matmul_conv_fwd(x, k, padding, rhs_dilation, precision):
    return _shifted_matmul_conv(x, k, padding, rhs_dilation, precision), (x, k)


def _cut_intervals(size, spans):
    """``[0, size)`` cut at every boundary of ``spans``: the intervals no span boundary splits."""
    cuts = sorted({0, size, *(v for span in spans for v in span if 0 <= v <= size)})
    return list(zip(cuts, cuts[1:]))


def _shifted_input_grad(dy, k, x_shape, taps, precision):
    """dL/dx of :func:`_shifted_matmul_conv`, one GEMM per region of x that the same taps read.

    x is cut where a tap's window starts or ends; every block of the cut is read by one set of
    taps, so its gradient is ``concat(their dy windows) · concat(their kernels)ᵀ`` (channels
    concatenated): one GEMM with K = taps × Cout, and nothing as large as x but x's gradient
    itself. (A partial input gradient per tap, summed, held up to 9 of them at once: 4 GiB in
    deeplabv3_resnet50's ASPP backward at batch 8, 512².)
    """
    _, h, w, _ = x_shape
    spans = [  # (input rows, input cols, output-minus-input offset) per tap
        ((s[0], s[0] + rb - ra), (s[1], s[1] + cb - ca), (ra - s[0], ca - s[1]), (i, j))
        for i, j, s, (ra, rb, ca, cb) in taps
    ]
    bands = []
    for r0, r1 in _cut_intervals(h, [rows for rows, _, _, _ in spans]):
        blocks = []
        for c0, c1 in _cut_intervals(w, [cols for _, cols, _, _ in spans]):
            cover = [
                (off, ij)
                for rows, cols, off, ij in spans
                if rows[0] <= r0 and r1 <= rows[1] and cols[0] <= c0 and c1 <= cols[1]
            ]
            if not cover:  # only padding reads this block
                blocks.append(jnp.zeros((dy.shape[0], r1 - r0, c1 - c0, k.shape[2]), dy.dtype))
                continue
            windows = [_window(dy, (r0 + dr, c0 + dc), r1 - r0, c1 - c0) for (dr, dc), _ in cover]
            kernels = jnp.concatenate([k[i, j].T for _, (i, j) in cover], axis=0)  # [T·Co, Ci]
            blocks.append(
                jnp.einsum(
                    "nhwd,dc->nhwc", jnp.concatenate(windows, -1), kernels, precision=precision
                )
            )
        bands.append(jnp.concatenate(blocks, axis=2))
    return jnp.concatenate(bands, axis=1)


def _shifted_matmul_conv_bwd(padding, rhs_dilation, precision, res, dy):
    x, k = res
    _, _, taps = _live_taps(x.shape, k.shape, padding, rhs_dilation)
    acc = jnp.promote_types(x.dtype, jnp.float32)  # float32 accumulation, float64 kept
    tap_grads = {}
    fence = dy[0, 0, 0, 0]
    for i, j, start, (ra, rb, ca, cb) in taps:
        rows, cols = rb - ra, cb - ca
        # x's window is sliced anew once dy exists (a fence: XLA's CSE would otherwise merge it
        # with the forward's slice and keep it alive from the forward on), after the previous
        # tap's, so that one window of x at a time is alive.
        xs = after(_window(x, start, rows, cols), fence).reshape(-1, x.shape[-1])
        dys = _window(dy, (ra, ca), rows, cols).reshape(-1, dy.shape[-1])
        tap_grad = jax.lax.dot(_own_transpose(dys, (1, 0)), xs, preferred_element_type=acc)
        tap_grads[i, j] = tap_grad.T.astype(k.dtype)  # [Cin, Cout]
        fence = tap_grad[0, 0]
    zero = jnp.zeros(k.shape[2:], k.dtype)  # taps that read padding only
    kh, kw = k.shape[:2]
    dk = jnp.stack([tap_grads.get((i, j), zero) for i in range(kh) for j in range(kw)])
    dk = dk.reshape(k.shape)
    dx = _shifted_input_grad(dy, k, x.shape, taps, precision)
    return after(dx, dk), dk


_shifted_matmul_conv.defvjp(_shifted_matmul_conv_fwd, _shifted_matmul_conv_bwd)


def _depthwise_taps_conv(x, k, strides, padding, rhs_dilation):
    """Depthwise conv (channel multiplier 1) as a sum of shifted, per-channel scaled slices.

    XLA fuses it into one elementwise loop (forward and both gradients), which measured tens of
    times faster than XLA:CPU's grouped convolution with one channel per group.
    """
    n, _, _, c = x.shape
    kh, kw = k.shape[:2]
    (sh, sw), (dh, dw) = strides, rhs_dilation
    xp = jax.lax.pad(
        x, jnp.zeros((), x.dtype), ((0, 0, 0), (*padding[0], 0), (*padding[1], 0), (0, 0, 0))
    )
    ho = (xp.shape[1] - dh * (kh - 1) - 1) // sh + 1
    wo = (xp.shape[2] - dw * (kw - 1) - 1) // sw + 1
    y = None
    for i in range(kh):
        for j in range(kw):
            start = (0, i * dh, j * dw, 0)
            stop = (n, i * dh + (ho - 1) * sh + 1, j * dw + (wo - 1) * sw + 1, c)
            part = jax.lax.slice(xp, start, stop, (1, sh, sw, 1)) * k[i, j, 0]
            y = part if y is None else y + part
    return y


def _crop_dead_taps(spatial, rhs, strides, padding, rhs_dilation):
    """Drops kernel rows/columns that only ever read padding (exact: they add zeros).

    With atrous rates as large as the feature map (ASPP rate 36 on a 32×32 map) the outer taps
    of a 3×3 kernel see nothing but zero padding for every output pixel; the conv is then the
    centre tap alone. The gradient of the dropped taps is exactly zero, as before.
    """
    new_padding, starts, stops = [], [], []
    for size, k, s, d, (lo, hi) in zip(spatial, rhs.shape[:2], strides, rhs_dilation, padding):
        out = (size + lo + hi - d * (k - 1) - 1) // s + 1
        live = [
            i for i in range(k) if any(0 <= o * s + i * d - lo < size for o in range(max(out, 0)))
        ]
        if not live:
            return rhs, padding
        first, last = live[0], live[-1]
        new_lo, new_hi = lo - first * d, hi - (k - 1 - last) * d
        if new_lo < 0 or new_hi < 0:
            return rhs, padding
        new_padding.append((new_lo, new_hi))
        starts.append(first)
        stops.append(last + 1)
    if starts == [0, 0] and stops == list(rhs.shape[:2]):
        return rhs, padding
    return rhs[starts[0] : stops[0], starts[1] : stops[1]], tuple(new_padding)
