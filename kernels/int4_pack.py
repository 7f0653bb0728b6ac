"""The load-time half of dtype="int4" in torch: group-wise 4-bit quantisation of a float weight
(quantize_int4), int4_linear's packed layout (pack_int4_weight, csrc/gemm_int4.cpp) and its inverse
(unpack_int4, what kernels.reference.int4_linear multiplies). kernels.cpu.quantize_pack_int4 is the
same arithmetic in one C++ pass."""
from __future__ import annotations

import torch


def _int4_grid(w: torch.Tensor, scale: torch.Tensor, low: torch.Tensor, top: int):
    """(fp16 scale, fp16 min, u, squared error per group) of w [rows, groups, G] on the grid
    min + scale * (0..top), u rounded (to nearest even) from the fp16 values the kernel reads."""
    s, m = scale.clamp_min(2 ** -24).half(), low.half()
    u = torch.round((w - m.float()[..., None]) / s.float()[..., None]).clamp_(0, top)
    err = (u * s.float()[..., None] + m.float()[..., None] - w).square_().sum(dim=2)
    return s, m, u, err


def _int4_refit(w: torch.Tensor, u: torch.Tensor, scale: torch.Tensor, low: torch.Tensor):
    """The least-squares scale and min of w ~= scale * u + min per group for fixed u (closed form;
    the old ones where u is constant)."""
    n = w.shape[2]
    su, suu, sw, suw = u.sum(2), (u * u).sum(2), w.sum(2), (u * w).sum(2)
    det = n * suu - su * su
    fit = det > 0
    s = torch.where(fit, (n * suw - su * sw) / det.clamp_min(1e-30), scale)
    return s, torch.where(fit, (sw - s * su) / n, low)


def quantize_int4(weight: torch.Tensor, group_size: int = 64, asymmetric: bool = True,
                  rows: int = 4096) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[N, K] float -> (u [N, Kp] uint8 in 0..15, scales [N, Kp / G] fp16, mins [N, Kp / G] fp16) with
    w[n, k] ~= scales[n, k // G] * u[n, k] + mins[n, k // G] for groups of G = group_size consecutive
    inputs (Kp = K rounded up to G; u = 0 past K). asymmetric: the grid of the group's min and max
    (scale (max - min) / 15), then a least-squares refit of scale and min to those u and u rounded
    again on the new grid, kept where its squared error is lower (+0.6 points of next-token agreement
    on the bundled model); else symmetric: scale = max|w| / 7, u = clamp(round(w / scale), -8, 7) + 8,
    mins = -8 scale. `rows` output channels at a time, so a large weight's fp32 temporaries stay small."""
    if group_size <= 0 or group_size % 32:
        raise ValueError(f"group_size: must be a positive multiple of 32, got {group_size}")
    n, k = weight.shape
    kp = -(-k // group_size) * group_size
    u = torch.zeros(n, kp, dtype=torch.uint8, device=weight.device)
    scales = torch.empty(n, kp // group_size, dtype=torch.float16, device=weight.device)
    mins = torch.empty_like(scales)
    for r in range(0, n, rows):
        w = torch.nn.functional.pad(weight[r:r + rows].detach().float(), (0, kp - k))
        w = w.view(w.shape[0], -1, group_size)  # [rows, groups, G]
        if asymmetric:
            lo = w.amin(dim=2)
            s, m, q, err = _int4_grid(w, (w.amax(dim=2) - lo) / 15, lo, 15)
            s2, m2, q2, err2 = _int4_grid(w, *_int4_refit(w, q, s.float(), m.float()), 15)
            better = err2 < err
            s, m, q = torch.where(better, s2, s), torch.where(better, m2, m), torch.where(better[..., None], q2, q)
        else:
            amax = w.abs().amax(dim=2)
            s, m, q, _ = _int4_grid(w, amax / 7, (amax / 7).clamp_min(2 ** -24).half().float() * -8, 15)
        u[r:r + rows] = q.view(q.shape[0], kp).to(torch.uint8)
        scales[r:r + rows], mins[r:r + rows] = s, m
    u[:, k:] = 0
    return u, scales, mins


def pack_int4_weight(u: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int4_linear's layout of quantize_int4's output (csrc/gemm_int4.cpp): packed [ceil(N / 16), Kp / 8,
    16, 4] uint8 with packed[p, k8, c, i] = u[16 p + c, 8 k8 + i] | u[16 p + c, 8 k8 + 4 + i] << 4, and
    params [ceil(N / 16), Kp / G, 2, 16] fp16: each group's 16 column scales, then its 16 mins
    (zeros past N)."""
    n, kp = u.shape
    if u.dtype != torch.uint8 or kp % 32 or scales.shape != mins.shape or scales.shape[0] != n \
            or kp % scales.shape[1]:
        raise ValueError(f"u: expected uint8 [N, Kp] with fp16 [N, Kp / G] scales and mins, got {list(u.shape)} "
                         f"{u.dtype}, {list(scales.shape)}, {list(mins.shape)}")
    pad = -n % 16
    u = torch.nn.functional.pad(u, (0, 0, 0, pad)).view(-1, 16, kp // 8, 2, 4)  # [p, c, k8, lo/hi, i]
    packed = (u[:, :, :, 0] | (u[:, :, :, 1] << 4)).permute(0, 2, 1, 3).contiguous()
    params = torch.stack([torch.nn.functional.pad(t, (0, 0, 0, pad)).view(-1, 16, t.shape[1]).transpose(1, 2)
                          for t in (scales, mins)], dim=2).contiguous()
    return packed, params


def quantize_pack_int4(weight: torch.Tensor, group_size: int = 64,
                       asymmetric: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """A float weight [out, in] -> (packed, params) for int4_linear (the load-time step of dtype="int4")."""
    return pack_int4_weight(*quantize_int4(weight, group_size, asymmetric))


def unpack_int4(packed: torch.Tensor, params: torch.Tensor, out_features: int) -> torch.Tensor:
    """The fp32 weight [out_features, Kp] that int4_linear multiplies: scale * u + min per group."""
    num_panels, k8, groups = packed.shape[0], packed.shape[1], params.shape[1]
    nibbles = torch.stack([packed & 15, packed >> 4], dim=2)  # [p, k8, lo/hi, 16, 4]
    u = nibbles.permute(0, 3, 1, 2, 4).reshape(num_panels * 16, k8 * 8)[:out_features].float()
    scales, mins = (params[:, :, j].transpose(1, 2).reshape(-1, groups)[:out_features].float() for j in (0, 1))
    group = k8 * 8 // groups
    return u * scales.repeat_interleave(group, dim=1) + mins.repeat_interleave(group, dim=1)
