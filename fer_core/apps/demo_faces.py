"""Drawing one procedural demo face: the expression table, identity jitter, pose, lighting and noise.

``demo`` decides what to draw and where it goes (the splits, per-image seeds, the cached copy, the command
line); this module only turns (expression label, random generator, image size) into one 8-bit grayscale
face, so the look of the faces can change here without touching how datasets are written or cached (but
bump ``demo.GENERATOR_VERSION`` when it does, so cached copies are regenerated).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

# We draw at 4x the target resolution and downsample with LANCZOS: PIL's
# ImageDraw has no anti-aliasing, so drawing directly at 48x48 would give
# jagged, 1-pixel-quantised strokes where small expression cues (a slight
# smile, a brow tilt) would be lost or aliased.
_SUPERSAMPLE = 4

# Expression parameters at full intensity. Each image interpolates between
# neutral and its class's values with a random intensity, and adds per-identity
# jitter, so weak expressions drift towards neutral and classes overlap a bit.
#   curve   : mouth curvature, + smile (corners up), - frown (corners down)
#   open    : mouth opening (0 closed line, 1 wide open)
#   width   : mouth width factor
#   brow    : brow height (+ raised)
#   tilt    : brow tilt, + inner ends raised (sad/fear), - inner lowered (angry)
#   pull    : brows pulled together towards the nose
#   eye     : eye opening factor (1 normal, <1 narrowed, >1 wide)
#   snarl   : disgust: one-sided raised upper lip, lowered brow, wavy mouth
#   wrinkle : nose wrinkles (disgust)
_NEUTRAL: dict[str, float] = {
    "curve": 0.0,
    "open": 0.0,
    "width": 1.0,
    "brow": 0.0,
    "tilt": 0.0,
    "pull": 0.0,
    "eye": 1.0,
    "snarl": 0.0,
    "wrinkle": 0.0,
}

_EXPRESSIONS: dict[str, dict[str, float]] = {
    "neutral": dict(_NEUTRAL),
    "happy": dict(_NEUTRAL, curve=1.0, open=0.35, width=1.2, brow=0.1, eye=0.7),
    "sad": dict(_NEUTRAL, curve=-0.8, width=0.9, brow=0.05, tilt=1.0, pull=0.4, eye=0.8),
    "angry": dict(_NEUTRAL, curve=-0.15, width=0.8, brow=-0.7, tilt=-1.0, pull=0.8, eye=0.8),
    "surprise": dict(_NEUTRAL, open=1.0, width=0.5, brow=1.0, eye=1.45),
    "fear": dict(_NEUTRAL, curve=-0.3, open=0.35, width=1.2, brow=0.6, tilt=0.8, pull=0.8, eye=1.35),
    "disgust": dict(_NEUTRAL, curve=-0.3, width=0.95, brow=-0.2, eye=0.65, snarl=1.0, wrinkle=1.0),
}

# Per-identity jitter (standard deviation) added to every expression parameter:
# real people's resting faces differ, which makes low-intensity images of
# different classes genuinely ambiguous.
_JITTER: dict[str, float] = {
    "curve": 0.12,
    "open": 0.04,
    "width": 0.07,
    "brow": 0.15,
    "tilt": 0.15,
    "pull": 0.15,
    "eye": 0.08,
    "snarl": 0.05,
    "wrinkle": 0.0,
}


def _expression_params(label: str, rng: np.random.Generator) -> dict[str, float]:
    """Sample the expression parameters of one image of class ``label``."""
    target = _EXPRESSIONS[label]
    # Continuous intensity: weak expressions look close to neutral, which gives
    # the classes a small, realistic overlap.
    intensity = rng.uniform(0.35, 1.0)
    params = {}
    for key, neutral_value in _NEUTRAL.items():
        value = neutral_value + intensity * (target[key] - neutral_value)
        value += rng.normal(0.0, _JITTER[key])
        params[key] = value
    params["open"] = max(0.0, params["open"])
    params["snarl"] = max(0.0, params["snarl"])
    params["eye"] = max(0.35, params["eye"])
    params["width"] = max(0.4, params["width"])
    return params


def _polyline(draw: ImageDraw.ImageDraw, pts: Sequence[tuple[float, float]], fill: int, width: float) -> None:
    draw.line([tuple(p) for p in pts], fill=fill, width=max(1, int(round(width))), joint="curve")
    # Round caps: PIL lines have square ends that look odd on thick strokes.
    r = width / 2.0
    for x, y in (pts[0], pts[-1]):
        draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)


def draw_face(label: str, rng: np.random.Generator, img_size: int) -> np.ndarray:
    """Draw one face and return it as a uint8 array of shape (img_size, img_size)."""
    big = img_size * _SUPERSAMPLE
    p = _expression_params(label, rng)

    # --- Identity, framing and colours --------------------------------------
    scale = rng.uniform(0.9, 1.1)
    a = big * rng.uniform(0.27, 0.33) * scale  # face half-width
    b = a * rng.uniform(1.1, 1.28)  # face half-height
    cx = big / 2 + rng.uniform(-0.05, 0.05) * big
    cy = big / 2 + rng.uniform(-0.04, 0.05) * big

    skin = rng.uniform(105, 205)
    bg = rng.uniform(15, 240)
    while abs(bg - skin) < 30:  # keep the face outline visible
        bg = rng.uniform(15, 240)
    ink = int(np.clip(skin - rng.uniform(95, 140), 0, 255))  # feature strokes
    lw = a * rng.uniform(0.05, 0.07)  # base stroke width

    # Face layer + mask, so the face can be rotated on its own and composited
    # over a background gradient without rotation fill artefacts.
    face = Image.new("L", (big, big), int(skin))
    mask = Image.new("L", (big, big), 0)
    fd = ImageDraw.Draw(face)
    md = ImageDraw.Draw(mask)

    if rng.random() < 0.6:  # hair: a darker/lighter cap peeking out behind the face
        hair = int(np.clip(skin + rng.choice([-1, 1]) * rng.uniform(40, 90), 0, 255))
        ha, hb = a * rng.uniform(1.02, 1.12), b * rng.uniform(0.95, 1.05)
        hy = cy - b * rng.uniform(0.08, 0.2)
        box = [cx - ha, hy - hb, cx + ha, hy + hb]
        fd.ellipse(box, fill=hair)
        md.ellipse(box, fill=255)
    box = [cx - a, cy - b, cx + a, cy + b]
    fd.ellipse(box, fill=int(skin), outline=ink, width=max(1, int(lw * 0.6)))
    md.ellipse(box, fill=255)

    # --- Eyes ---------------------------------------------------------------
    eye_y = cy - b * rng.uniform(0.10, 0.22)
    eye_dx = a * rng.uniform(0.36, 0.46)
    eye_w = a * rng.uniform(0.15, 0.2)
    eye_h0 = eye_w * rng.uniform(0.45, 0.6)
    eye_h = eye_h0 * p["eye"]
    sclera = int(np.clip(skin + rng.uniform(30, 70), 0, 255))
    for side in (-1, 1):
        ex = cx + side * eye_dx
        if eye_h < lw * 0.9:  # nearly closed: just a lid line
            _polyline(fd, [(ex - eye_w, eye_y), (ex, eye_y - eye_h * 0.5), (ex + eye_w, eye_y)], ink, lw)
            continue
        fd.ellipse(
            [ex - eye_w, eye_y - eye_h, ex + eye_w, eye_y + eye_h],
            fill=sclera,
            outline=ink,
            width=max(1, int(lw * 0.7)),
        )
        # Pupil size tracks the eye size, not the opening, so wide eyes show
        # more white around it (surprise/fear) and narrow eyes crop it.
        pr = min(eye_h0 * 0.85, eye_w * 0.5)
        gaze = rng.uniform(-0.25, 0.25) * eye_w
        fd.ellipse([ex + gaze - pr, eye_y - min(pr, eye_h), ex + gaze + pr, eye_y + min(pr, eye_h)], fill=ink)

    # --- Brows ----------------------------------------------------------------
    brow_len = a * rng.uniform(0.17, 0.23)
    brow_w = lw * rng.uniform(1.1, 1.6)
    brow_gap = a * rng.uniform(0.10, 0.16)
    snarl_side = 1 if rng.random() < 0.5 else -1
    for side in (-1, 1):
        bx = cx + side * (eye_dx - p["pull"] * a * 0.07)
        by = eye_y - eye_h0 - brow_gap - p["brow"] * a * 0.13
        tilt = p["tilt"]
        if side == snarl_side:  # disgust lowers one brow
            by += p["snarl"] * a * 0.08
            tilt -= p["snarl"] * 0.4
        inner = (bx - side * brow_len, by - tilt * a * 0.09)
        outer = (bx + side * brow_len, by + tilt * a * 0.04)
        mid = (bx, (inner[1] + outer[1]) / 2 - a * 0.03)  # slight natural arch
        _polyline(fd, [inner, mid, outer], ink, brow_w)
    if p["pull"] > 0.5 and p["tilt"] < -0.4:  # angry frown line between the brows
        fy = eye_y - eye_h0 - brow_gap * 0.6
        _polyline(fd, [(cx, fy - a * 0.08), (cx, fy + a * 0.02)], ink, lw * 0.5)

    # --- Nose and disgust wrinkles --------------------------------------------
    ny = cy + b * rng.uniform(0.12, 0.2)
    nw = a * rng.uniform(0.07, 0.11)
    _polyline(fd, [(cx - nw, ny), (cx, ny + nw * 0.5), (cx + nw, ny)], ink, lw * 0.7)
    n_wrinkles = int(round(p["wrinkle"] * 2.2 * rng.uniform(0.6, 1.0)))
    for k in range(n_wrinkles):
        for side in (-1, 1):
            x0 = cx + side * a * (0.10 + 0.05 * k)
            y0 = eye_y + eye_h0 + a * (0.06 + 0.06 * k)
            _polyline(fd, [(x0, y0), (x0 + side * a * 0.10, y0 + a * 0.05)], ink, lw * 0.55)

    # --- Mouth ------------------------------------------------------------------
    my = cy + b * rng.uniform(0.40, 0.50)
    mw = a * rng.uniform(0.27, 0.35) * p["width"]
    amp = a * 0.20 * p["curve"]  # >0: centre lower than corners (smile)
    h0 = a * 0.25 * p["open"]  # half-height of the opening
    u = np.linspace(-1.0, 1.0, 25)
    xs = cx + mw * u
    arch = 1.0 - u**2
    mid_line = my + amp * arch
    # Disgust: one-sided sneer (upper lip lifted on one side), tilted, wavy line.
    mid_line = mid_line - p["snarl"] * a * 0.05 * u * snarl_side
    mid_line = mid_line + p["snarl"] * a * 0.03 * np.sin(2 * np.pi * u)
    lift = p["snarl"] * a * 0.13 * np.clip(u * snarl_side, 0, 1) * np.sqrt(arch)
    # A smiling open mouth has a flatter upper lip than lower lip ("D" shape).
    upper_bend = 0.45 if amp > 0 else 1.0
    upper = my + amp * upper_bend * arch - h0 * np.sqrt(arch) - lift
    upper = upper - p["snarl"] * a * 0.05 * u * snarl_side
    lower = mid_line + h0 * np.sqrt(arch)
    if np.max(lower - upper) < lw * 1.2:
        _polyline(fd, list(zip(xs, mid_line)), ink, lw * 1.1)
    else:
        outline = list(zip(xs, upper)) + list(zip(xs[::-1], lower[::-1]))
        cavity = int(np.clip(ink * rng.uniform(0.3, 0.7), 0, 255))
        fd.polygon(outline, fill=cavity)
        _polyline(fd, outline + [outline[0]], ink, lw)

    # --- Pose: in-plane rotation about the face centre ---------------------------
    angle = rng.uniform(-15, 15)
    face = face.rotate(angle, resample=Image.BICUBIC, center=(cx, cy))
    mask = mask.rotate(angle, resample=Image.BICUBIC, center=(cx, cy))

    # --- Background: a linear gradient in a random direction ----------------------
    yy, xx = np.mgrid[0:big, 0:big].astype(np.float32) / big - 0.5
    theta = rng.uniform(0, 2 * np.pi)
    grad = rng.uniform(0, 60)
    back = bg + grad * (np.cos(theta) * xx + np.sin(theta) * yy)
    alpha = np.asarray(mask, dtype=np.float32) / 255.0
    canvas = alpha * np.asarray(face, dtype=np.float32) + (1 - alpha) * back
    img = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))

    # --- Downsample (anti-aliasing) and photometric degradations -------------------
    img = img.resize((img_size, img_size), resample=Image.LANCZOS)
    blur = rng.uniform(0.0, 0.8)
    if blur > 0.15:
        img = img.filter(ImageFilter.GaussianBlur(radius=blur))
    arr = np.asarray(img, dtype=np.float32)
    # Lighting: global contrast/brightness plus a multiplicative side-light gradient.
    contrast = rng.uniform(0.7, 1.2)
    arr = (arr - arr.mean()) * contrast + arr.mean() + rng.uniform(-25, 25)
    sy, sx = np.mgrid[0:img_size, 0:img_size].astype(np.float32) / img_size - 0.5
    phi = rng.uniform(0, 2 * np.pi)
    arr = arr * (1.0 + rng.uniform(0.0, 0.5) * (np.cos(phi) * sx + np.sin(phi) * sy))
    arr = arr + rng.normal(0.0, rng.uniform(2.0, 8.0), size=arr.shape)
    return np.clip(np.rint(arr), 0, 255).astype(np.uint8)
