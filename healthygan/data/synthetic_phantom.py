"""One synthetic chest radiograph: the phantom that synthetic.py renders its datasets from.

Anatomy model. Every image is rendered in an "attenuation" space A (0 = air, about
0.15 = aerated lung, 0.45 = soft tissue, 0.6-0.8 = heart/mediastinum/bone) and mapped
to 8-bit grey levels at the end with a per-subject gain, offset and gamma. Geometry
lives in normalised coordinates (x to the right, y downwards, both in [0, 1]) that are
shifted, slightly rotated and scaled per subject. The film is a PA view as the viewer
sees it, so the heart bulges into the image's right half.

    body        soft-tissue silhouette, narrow neck widening into the shoulders
    abdomen     denser tissue below the two diaphragm domes (the lung bases)
    lungs       two teardrop fields: narrow apices at ~15% of the height, a straight
                medial border along the mediastinum, a curved lateral border and a
                domed base with a sharp lateral costophrenic angle
    vessels     tapering branching lines radiating from the hila into the lungs
    heart       tilted ellipse plus the mediastinal band and aortic knob
    ribs        posterior ribs as curved bands with brighter cortical edges; fainter
                anterior ribs; both clavicles
    spine       bright vertical band with faint vertebral banding
    background  smooth low-frequency exposure variation plus film noise

Diseased subjects get 1 to 3 opacities placed inside the visible lung fields only:
ground glass (patchy, lobar size), consolidation (denser, irregular, about as dense as
the heart shadow) and nodules (small, round, soft edge). The lesions are added in
attenuation space before the grey-level mapping; they cover a few per cent of the image,
so the image mean barely tells the classes apart (docs/results.md gives the AUROC of ranking
the test images by it), while locally they are clear. `LESION_STRENGTH` (or the
`lesion_strength` keyword) scales their contrast: 0.3 gives faint, hard lesions.

Every random draw comes from the `np.random.Generator` passed in, anatomy first and
lesions last, so the same generator state renders the same subject with or without
lesions (`render_radiograph(..., lesions=False)`).
"""

import math
from functools import lru_cache

import numpy as np
from scipy import ndimage

LESION_STRENGTH = 1.0
LESION_KINDS = ("ground_glass", "consolidation", "nodule")
# Per kind: (radius range as a fraction of the image width, peak amplitude range as a
# fraction of the lung-to-bone attenuation range), before `lesion_strength`.
LESION_SHAPES = {
    # Lobar-size patches, as in pneumonia; consolidation about as dense as the heart shadow.
    "ground_glass": ((0.10, 0.16), (0.56, 0.84)),
    "consolidation": ((0.08, 0.13), (0.77, 1.12)),
    "nodule": ((0.025, 0.04), (0.60, 0.90)),
}
LUNG_TO_BONE = 0.5  # attenuation units between aerated lung (~0.17) and bone (~0.7)
# A pixel belongs to a lesion where its opacity exceeds this fraction of the lesion's peak.
MASK_FRACTION = 0.15


# ----------------------------------------------------------------------------- helpers

def _sigmoid(z):
    """Logistic function via tanh (the fastest float32 route in numpy, no overflow)."""
    return 0.5 + 0.5 * np.tanh(0.5 * z)


def _smoothstep(z):
    """Cubic 0-to-1 ramp on [0, 1]."""
    z = np.clip(z, 0.0, 1.0)
    return z * z * (3.0 - 2.0 * z)


@lru_cache(maxsize=64)
def _bump_basis(size, cells):
    """(size, cells+2) matrix of Gaussian bumps on a regular grid, for separable smooth noise."""
    centres = (np.arange(cells + 2) - 0.5) / cells
    x = (np.arange(size) + 0.5) / size
    w = np.exp(-0.5 * ((x[:, None] - centres[None, :]) * cells / 0.7) ** 2)
    # Flush negligible weights: float32 denormals make the matrix products far slower
    # (docs/speed.md, synthetic data).
    w[w < 1e-6] = 0.0
    return w.astype(np.float32)


def _smooth_noise(rng, size, cells):
    """Unit-variance smooth random field with feature size ~size/cells (sum of Gaussian bumps)."""
    # A separable sum of bumps: two small matrix products, far cheaper than spline
    # zooming or wide Gaussian filters.
    w = _bump_basis(size, cells)
    field = w @ rng.standard_normal((cells + 2, cells + 2), dtype=np.float32) @ w.T
    return (field - field.mean()) / (field.std() + 1e-6)


# ----------------------------------------------------------------------------- anatomy

def sample_subject(rng):
    """Draw one subject's anatomy and acquisition parameters."""
    u = rng.uniform
    return dict(
        shift_x=u(-0.025, 0.025), shift_y=u(-0.02, 0.02), angle=u(-0.06, 0.06),
        scale_x=u(0.94, 1.06), scale_y=u(0.94, 1.06),
        apex_y=u(0.14, 0.17), base_y=u(0.70, 0.76), left_drop=u(0.0, 0.03),
        lateral=u(0.36, 0.40), medial=u(0.065, 0.08), dome=u(0.05, 0.09),
        heart_x=u(0.54, 0.575), heart_y=u(0.66, 0.70), heart_a=u(0.155, 0.19),
        heart_b=u(0.12, 0.15), heart_tilt=u(-0.45, -0.2),
        lung_level=u(0.11, 0.17), tissue_level=u(0.40, 0.48), heart_level=u(0.60, 0.68),
        rib_start=u(0.10, 0.125), rib_spacing=u(0.046, 0.058), rib_curve=u(1.3, 1.8),
        rib_contrast=u(0.7, 1.3), vessel_contrast=u(0.7, 1.3),
        gain=u(0.9, 1.1), offset=u(-0.04, 0.04), gamma=u(0.9, 1.125),
        noise=u(0.006, 0.02), exposure=u(0.02, 0.06), tilt_light=u(-0.05, 0.05),
    )


def subject_coords(size, p):
    """Image pixel centres mapped into the subject's (shifted, rotated, scaled) frame."""
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    y, x = np.meshgrid(c, c, indexing="ij")
    # Anchor the scaling at mid-chest so the apices stay below the cropped top rows.
    x0, y0 = x - 0.5 - p["shift_x"], y - 0.45 - p["shift_y"]
    ca, sa = math.cos(p["angle"]), math.sin(p["angle"])
    u = (ca * x0 + sa * y0) / p["scale_x"] + 0.5
    v = (-sa * x0 + ca * y0) / p["scale_y"] + 0.45
    return u.astype(np.float32), v.astype(np.float32)


def lung_field(u, v, apex_x, apex_y, medial_x, lateral_x, base_y, dome):
    """Hard mask of one teardrop lung; works for either side since s runs lateral->medial."""
    s = (u - lateral_x) / (medial_x - lateral_x)
    s_apex = (apex_x - lateral_x) / (medial_x - lateral_x)
    t = (v - apex_y) / (base_y - apex_y)
    # Lateral border is round and reaches full width at 70% height; medial border
    # meets the mediastinum early, which gives the narrow apex.
    g = np.sqrt(np.clip(1.0 - (1.0 - np.clip(t / 0.7, 0, 1)) ** 2, 0, 1))
    h = np.clip(t / 0.3, 0, 1) ** 0.6
    s_lat = s_apex * (1.0 - g)
    s_med = s_apex + (1.0 - s_apex) * h
    # Diaphragm dome: highest a bit medial of centre, lowest at the costophrenic angle.
    sc = np.clip(s, 0, 1)
    bottom = base_y - dome * np.clip(np.sin(np.pi * sc ** 0.8), 0, 1) ** 0.7
    return (t >= 0) & (s >= s_lat) & (s <= s_med) & (v <= bottom)


def dome_line(u, p):
    """Height of the diaphragm below each column (the abdomen starts there)."""
    right = u >= 0.5
    side = np.where(right, 1.0, -1.0).astype(np.float32)
    lat, med = 0.5 + side * p["lateral"], 0.5 + side * p["medial"]
    base = p["base_y"] + np.where(right, p["left_drop"], 0.0).astype(np.float32)
    sc = np.clip((u - lat) / (med - lat), 0, 1)
    return base - p["dome"] * np.clip(np.sin(np.pi * sc ** 0.8), 0, 1) ** 0.7


def _box(u, v, u_lo, u_hi, v_lo, v_hi):
    """Row and column slices of the pixels whose subject coordinates can fall in a box."""
    rows = np.flatnonzero((v.max(1) >= v_lo) & (v.min(1) <= v_hi))
    cols = np.flatnonzero((u.max(0) >= u_lo) & (u.min(0) <= u_hi))
    if len(rows) == 0 or len(cols) == 0:
        return slice(0, 0), slice(0, 0)
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def lung_masks(u, v, p):
    """Both lung fields (image-left, image-right) as hard masks in the subject frame."""
    masks = []
    for side in (-1, 1):
        # The left hemidiaphragm (image right) usually sits a little lower.
        base = p["base_y"] + (p["left_drop"] if side > 0 else 0.0)
        lateral, medial = 0.5 + side * p["lateral"], 0.5 + side * p["medial"]
        # Each lung covers under a third of the image: evaluate only its bounding box.
        rs, cs = _box(u, v, min(lateral, medial), max(lateral, medial), p["apex_y"], base)
        mask = np.zeros(u.shape, bool)
        mask[rs, cs] = lung_field(u[rs, cs], v[rs, cs], apex_x=0.5 + side * 0.2, apex_y=p["apex_y"],
                                  medial_x=medial, lateral_x=lateral, base_y=base, dome=p["dome"])
        masks.append(mask)
    return masks[0], masks[1]


def body_and_abdomen(u, v, p, px):
    """Soft-tissue attenuation: neck/shoulder silhouette plus denser abdomen below the domes."""
    half_width = 0.12 + 0.35 * _smoothstep((v - 0.0) / 0.17)
    body = _sigmoid((half_width - np.abs(u - 0.5)) / (1.5 * px))
    abdomen = _sigmoid((v - dome_line(u, p)) / (1.5 * px))
    # Thicker tissue medially and towards the abdomen.
    tissue = p["tissue_level"] + 0.05 * (1 - 2 * np.abs(u - 0.5)) + 0.14 * abdomen
    return 0.03 + body * (tissue - 0.03)


def heart_mediastinum(u, v, p, px):
    """Soft mask (0-1) of the heart, the mediastinal band and the aortic knob."""
    du, dv = u - p["heart_x"], v - p["heart_y"]
    ct, st = math.cos(p["heart_tilt"]), math.sin(p["heart_tilt"])
    r = np.sqrt(((ct * du + st * dv) / p["heart_a"]) ** 2 + ((-st * du + ct * dv) / p["heart_b"]) ** 2)
    heart = _sigmoid((1.0 - r) * p["heart_a"] / (1.5 * px))
    width = 0.06 + 0.015 * _smoothstep((v - 0.1) / 0.4)
    band = _sigmoid((width - np.abs(u - 0.5)) / (1.5 * px)) * _sigmoid((v - 0.06) / (2 * px))
    knob = np.exp(-(((u - 0.555) / 0.035) ** 2 + ((v - 0.30) / 0.035) ** 2))
    return np.maximum(np.maximum(heart, band), np.clip(1.6 * knob, 0, 1))


def subject_to_image(p, u, v):
    """Inverse of `subject_coords`: subject-frame points -> image coordinates."""
    a, b = (u - 0.5) * p["scale_x"], (v - 0.45) * p["scale_y"]
    ca, sa = math.cos(p["angle"]), math.sin(p["angle"])
    return ca * a - sa * b + 0.5 + p["shift_x"], sa * a + ca * b + 0.45 + p["shift_y"]


def _draw_segments(size, p, starts, ends, amps):
    """Tapering line segments (subject frame) splatted onto the pixel grid, before blurring."""
    starts, ends, amps = np.asarray(starts), np.asarray(ends), np.asarray(amps)
    # Sample each segment every ~half pixel and splat bilinearly: far cheaper than
    # evaluating a distance field per segment.
    n_pts = max(8, int(0.6 * size))
    t = np.linspace(0.0, 1.0, n_pts)[None, :]
    xs = starts[:, :1] + t * (ends[:, :1] - starts[:, :1])
    ys = starts[:, 1:] + t * (ends[:, 1:] - starts[:, 1:])
    seg_len = np.hypot(*(ends - starts).T)[:, None] * size
    # Intensity tapers towards the periphery; weight by sample spacing so the line
    # density (and hence the blurred peak) does not depend on the segment length.
    w = amps[:, None] * (1.0 - 0.6 * t) * seg_len / (n_pts - 1)
    ix, iy = subject_to_image(p, xs, ys)
    fx, fy = ix * size - 0.5, iy * size - 0.5
    x0, y0 = np.floor(fx).astype(int), np.floor(fy).astype(int)
    dx, dy = fx - x0, fy - y0
    out = np.zeros(size * size)
    for ox, oy, wt in ((0, 0, (1 - dx) * (1 - dy)), (1, 0, dx * (1 - dy)),
                       (0, 1, (1 - dx) * dy), (1, 1, dx * dy)):
        xx, yy = x0 + ox, y0 + oy
        ok = (xx >= 0) & (xx < size) & (yy >= 0) & (yy < size)
        out += np.bincount((yy * size + xx)[ok], (w * wt)[ok], minlength=size * size)
    return out.reshape(size, size).astype(np.float32)


def vessel_markings(rng, size, p):
    """Bronchovascular markings: branching tapering lines fanning out from both hila."""
    n = 9
    starts, ends, amps = [], [], []
    for side in (-1, 1):
        # Spread the roots over the hilum so they do not pile up into one bright dot.
        hx = 0.5 + side * rng.uniform(0.08, 0.11, n)
        hy = rng.uniform(0.37, 0.48, n)
        # Fan over the lung: from up-lateral through lateral to down-lateral.
        theta = rng.uniform(-0.45 * np.pi, 0.45 * np.pi, n)
        length = rng.uniform(0.14, 0.26, n)
        a = rng.uniform(0.04, 0.075, n)
        ex, ey = hx + side * np.cos(theta) * length, hy + np.sin(theta) * length * 1.1
        # One side branch from the middle of each vessel.
        mx, my = 0.5 * (hx + ex), 0.5 * (hy + ey)
        phi = theta + rng.choice([-1.0, 1.0], n) * rng.uniform(0.3, 0.7, n)
        blen = 0.5 * length * rng.uniform(0.6, 1.0, n)
        bx, by = mx + side * np.cos(phi) * blen, my + np.sin(phi) * blen
        starts += list(zip(hx, hy)) + list(zip(mx, my))
        ends += list(zip(ex, ey)) + list(zip(bx, by))
        amps += list(a) + list(0.6 * a)
    # Vessels are ~0.6% of the width across; the blur both widens and anti-aliases them.
    sigma = max(0.006 * size, 0.6)
    lines = ndimage.gaussian_filter(_draw_segments(size, p, starts, ends, amps), sigma)
    return p["vessel_contrast"] * math.sqrt(2 * math.pi) * sigma * lines


def add_ribs(u, v, p, px):
    """Posterior ribs (curved bands with cortical edges), faint anterior ribs and clavicles."""
    d = np.abs(u - 0.5)
    sp = p["rib_spacing"]
    # Ribs are parallel curves, so one "rib phase" map replaces a loop over ribs:
    # the nearest rib index is round(q) and the distance to it is the fractional part.
    a, b = p["rib_curve"], 0.2
    q = (v - (p["rib_start"] - b * d + a * d * d)) / sp
    k = np.clip(np.rint(q), 0, 9)
    dist = np.abs(q - k) * sp / np.sqrt(1.0 + (2 * a * d - b) ** 2)
    half = 0.010 + 0.004 * k / 9  # lower ribs are broader
    posterior = _sigmoid((half - dist) / (0.6 * px)) + 0.5 * np.exp(-((dist - half) / (0.9 * px)) ** 2)
    posterior *= _sigmoid((d - 0.045) / (1.5 * px))
    # Anterior ribs run the other way: high laterally, descending towards the sternum.
    e = 0.45 - d
    qa = (v - (p["rib_start"] + 0.08 + 0.35 * e - 0.3 * e * e)) / (1.3 * sp)
    ka = np.clip(np.rint(qa), 0, 4)
    dist_a = np.abs(qa - ka) * 1.3 * sp / np.sqrt(1.0 + (0.35 - 0.6 * e) ** 2)
    anterior = 0.35 * _sigmoid((0.011 - dist_a) / (0.6 * px)) * _sigmoid((d - 0.16) / (3 * px))
    # Only inside the rib cage, which hugs the lungs.
    cage = (_sigmoid((p["lateral"] + 0.035 - d) / (2 * px))
            * _sigmoid((v - p["apex_y"] + 0.035) / (2 * px)))
    ribs = 0.045 * p["rib_contrast"] * (posterior + anterior) * cage
    # Clavicles: rising gently from the sternal ends towards the shoulders.
    clav_c = p["apex_y"] + 0.005 - 0.10 * (d - 0.05) + 0.01 * np.sin(8 * d)
    clav = (_sigmoid((0.012 - np.abs(v - clav_c)) / (0.6 * px)) * _sigmoid((d - 0.05) / px)
            * _sigmoid((0.36 - d) / px))
    return ribs + 0.12 * clav


def spine(u, v, px):
    """Vertebral column: a bright vertical band with faint periodic vertebral bodies."""
    band = _sigmoid((0.035 - np.abs(u - 0.5)) / (1.2 * px))
    vertebrae = 0.75 + 0.25 * np.cos(2 * np.pi * v / 0.045) ** 2
    # Darker trachea column in the upper mediastinum.
    trachea = np.exp(-((u - 0.5) / 0.012) ** 2) * _sigmoid((0.36 - v) / (3 * px))
    return 0.07 * band * vertebrae - 0.08 * trachea


def render_anatomy(rng, size):
    """Healthy attenuation map, the visible-lung mask, the subject parameters and film noise."""
    p = sample_subject(rng)
    px = 1.0 / size
    u, v = subject_coords(size, p)
    right, left = lung_masks(u, v, p)
    lungs_hard = right | left
    # At least ~1 px of blur so small renders do not show staircase lung borders.
    lungs = ndimage.gaussian_filter(lungs_hard.astype(np.float32), 0.008 * size + 0.6)
    # Lungs are darker peripherally and at the apices, denser at the bases and hila.
    t = np.clip((v - p["apex_y"]) / (p["base_y"] - p["apex_y"]), 0, 1)
    hilum = np.exp(-(((np.abs(u - 0.5) - 0.1) / 0.12) ** 2 + ((v - 0.45) / 0.15) ** 2))
    lung_level = p["lung_level"] + 0.04 * t + 0.08 * hilum
    texture = 0.015 * _smooth_noise(rng, size, 24)
    A = body_and_abdomen(u, v, p, px)
    A = A * (1 - lungs) + (lung_level + texture) * lungs
    A += lungs * vessel_markings(rng, size, p)
    heart = heart_mediastinum(u, v, p, px)
    A = A * (1 - heart) + p["heart_level"] * heart
    A += add_ribs(u, v, p, px) * (1 - 0.75 * heart)
    A += spine(u, v, px) * (1 - 0.4 * _sigmoid((v - p["heart_y"] + 0.05) / 0.03))
    # Uneven exposure: a smooth field plus a gentle left-right gradient.
    A += p["exposure"] * _smooth_noise(rng, size, 3) + p["tilt_light"] * (u - 0.5)
    # Quantum mottle is close to white at this resolution; no need to correlate it.
    noise = p["noise"] * rng.standard_normal((size, size), dtype=np.float32)
    visible = lungs_hard & (heart < 0.5)
    return A.astype(np.float32), visible, p, noise


def to_grey(A, p):
    """Per-subject gain/offset/gamma mapping of attenuation to 8-bit grey levels."""
    g = p["offset"] + p["gain"] * np.clip(A, 0, None) ** p["gamma"]
    return np.clip(np.rint(g * 255.0), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- lesions

def make_lesion(rng, kind, centre, radius, size):
    """One lesion's opacity profile (peak about 1) centred at `centre` (pixel row, col)."""
    c = np.arange(size, dtype=np.float32)
    y, x = np.meshgrid(c, c, indexing="ij")
    ang = rng.uniform(0, np.pi)
    elong = rng.uniform(0.75, 1.3)
    dy, dx = y - centre[0], x - centre[1]
    ca, sa = math.cos(ang), math.sin(ang)
    r_px = radius * size
    d = np.sqrt(((ca * dx + sa * dy) / (r_px * elong)) ** 2 + ((-sa * dx + ca * dy) * elong / r_px) ** 2)
    if kind == "nodule":
        return _sigmoid((1.0 - d) / 0.22)
    # Irregular outlines: a radial falloff perturbed by smooth noise, then softened.
    cells = max(4, int(round(size / max(r_px * 0.6, 1.0))))
    n = _smooth_noise(rng, size, cells)
    if kind == "consolidation":
        prof = _sigmoid((1.4 * (1.0 - d) + 0.45 * n) / 0.12)
        return ndimage.gaussian_filter(prof, 0.12 * r_px)
    # Ground glass: patchier, with faint holes in it.
    prof = _sigmoid((1.0 * (1.0 - d) + 0.6 * n) / 0.2) * (0.75 + 0.25 * np.tanh(n + 0.5))
    return ndimage.gaussian_filter(prof, 0.2 * r_px)


def lesion_layer(rng, lungs, size, strength=LESION_STRENGTH):
    """Attenuation added by 1-3 random opacities and its mask, both confined to `lungs`."""
    dist = ndimage.distance_transform_edt(lungs) / size
    # A slightly eroded, softened lung mask keeps opacities from spilling across the pleura.
    inside = ndimage.gaussian_filter((dist > 0.012).astype(np.float32), 0.006 * size)
    layer = np.zeros((size, size), np.float32)
    mask = np.zeros((size, size), bool)
    n_lesions = int(rng.choice([1, 2, 3], p=[0.5, 0.3, 0.2]))
    for _ in range(n_lesions):
        kind = LESION_KINDS[int(rng.integers(len(LESION_KINDS)))]
        (r_lo, r_hi), (a_lo, a_hi) = LESION_SHAPES[kind]
        radius, amp = rng.uniform(r_lo, r_hi), rng.uniform(a_lo, a_hi)
        # Centre at least ~half a radius inside the lung; fall back to the deepest points.
        cand = np.argwhere(dist >= 0.6 * radius)
        if len(cand) == 0:
            cand = np.argwhere(dist >= dist.max() * 0.8)
        centre = cand[int(rng.integers(len(cand)))]
        prof = make_lesion(rng, kind, centre, radius, size) * inside
        peak = prof.max()
        if peak <= 0:
            continue
        prof /= peak
        layer += strength * amp * LUNG_TO_BONE * prof
        mask |= (prof > MASK_FRACTION) & lungs
    return layer, mask


def render_radiograph(rng: np.random.Generator, size: int, anomalous: bool, *,
                      lesion_strength: float = LESION_STRENGTH, lesions: bool = True,
                      return_lungs: bool = False):
    """Render one subject: (uint8 image, lesion mask[, visible-lung mask]).

    With `lesions=False` an anomalous subject is drawn identically (same RNG
    consumption) but its lesions are left out and the mask is empty, so that two
    generators with the same state give the subject with and without disease.
    """
    A, lungs, p, noise = render_anatomy(rng, size)
    mask = np.zeros((size, size), bool)
    if anomalous:
        layer, lesion_mask = lesion_layer(rng, lungs, size, lesion_strength)
        if lesions:
            A = A + layer
            mask = lesion_mask
    img = to_grey(A + noise, p)
    return (img, mask, lungs) if return_lungs else (img, mask)
