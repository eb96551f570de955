"""
The built-in synthetic benchmark: five procedural biomedical modalities (endoscopy, echocardiography,
real-time MRI, cell microscopy, ophthalmic surgery) whose captions state attributes that a script can
measure from the pixels, so that prompt following is a number. Rendered in numpy (data.py re-exports it),
about 2 ms per clip (32 px, 17 frames, 2-core laptop CPU; `python data.py` prints it). Also here: held-out
captions (phrasings never used in training), one pixel analyser per attribute (evaluate.py's measure of
prompt following), and the 1/f textures of the VAE stage.
    frames, caption, attrs = render_synthetic("ultrasound", seed=3, num_frames=17, size=32)
"""
import numpy as np
import torch
from PIL import Image

MODALITIES = ["endoscopy", "ultrasound", "rt-mri", "cell", "ophthalmic-surgery"]
MODALITY_NAMES = {"endoscopy": "endoscopy", "ultrasound": "ultrasound", "rt-mri": "real-time MRI",
                  "cell": "cell microscopy", "ophthalmic-surgery": "ophthalmic surgery"}

# ----------------------------------------------------------------------------------------------
# caption vocabulary: per modality some nouns, per attribute value several interchangeable phrases. The clip's
# own RNG picks one of each, so a text encoder has to learn that "rapid heart rate" = "a fast heartbeat". Four
# to six phrases a value, not two or three: with few, the DiT keys on the literal words ("fast", "slow") and
# misses the same value said otherwise (RESULTS.md, Motion: "A wider caption vocabulary"). No phrase is one of
# HELDOUT's (test_benchmark checks it), and no attribute word of HELDOUT is used here.

CAPTIONS = {
    "endoscopy": {
        "noun": ["colonoscopy video", "endoscopic view of the colon", "GI endoscopy clip",
                 "endoscopy footage of the bowel"],
        "speed": {"slow": ["the scope advancing slowly", "a slow advance through the lumen",
                           "slow forward motion", "the endoscope inching ahead", "a sluggish advance",
                           "the scope crawling along the colon", "low-speed insertion"],
                  "fast": ["the scope advancing fast", "a fast advance through the lumen",
                           "rapid forward motion", "the endoscope darting ahead", "a swift advance",
                           "the scope rushing along the colon", "high-speed insertion"]},
        "polyp": {True: ["a pale polyp on the wall", "a polyp bulging from the mucosa", "one visible polyp",
                         "an adenoma on a fold", "a sessile polyp"],
                  False: ["no polyp", "healthy mucosa without polyps", "no visible lesion",
                          "normal mucosa", "a polyp-free colon"]}},
    "ultrasound": {
        "noun": ["echocardiogram", "cardiac ultrasound", "B-mode echo of the heart",
                 "ultrasound video of the heart"],
        "rate": {"slow": ["a slow heartbeat", "a slow heart rate of one beat", "one slow beat",
                          "a slow pulse", "one contraction", "a heart beating at a slow pace"],
                 "normal": ["a normal heartbeat", "a normal heart rate of two beats", "two regular beats",
                            "a steady pulse", "two contractions", "a heart beating at a normal pace"],
                 "fast": ["a fast heartbeat", "a rapid heart rate of three beats", "three fast beats",
                          "a rapid pulse", "three contractions", "a heart beating at a fast pace"]},
        "chamber": {"normal": ["a normal-sized ventricle", "a small left ventricle", "a normal chamber",
                               "a healthy-sized ventricle"],
                    "dilated": ["a dilated ventricle", "an enlarged left ventricle", "a dilated chamber",
                                "a widened ventricle"]}},
    "rt-mri": {
        "noun": ["real-time MRI of the vocal tract", "midsagittal rt-MRI of speech",
                 "dynamic MRI of the head and neck", "real-time MRI video"],
        "speed": {"slow": ["slow speech", "slow articulation", "slowly moving articulators",
                           "slow-paced talking", "drawn-out speech", "a slow speaking rate"],
                  "fast": ["fast speech", "rapid articulation", "quickly moving articulators",
                           "fast-paced talking", "brisk speech", "a fast speaking rate"]},
        "articulator": {"tongue": ["the tongue moving", "tongue motion", "a rising and falling tongue",
                                   "lingual motion"],
                        "jaw": ["the jaw opening and closing", "jaw motion", "a moving lower jaw",
                                "the jaw dropping and lifting"]}},
    "cell": {
        "noun": ["microscopy video of cells", "time-lapse cell microscopy", "live-cell imaging",
                 "cell microscopy clip"],
        "density": {"few": ["a few cells", "only {count} cells", "sparse cells",
                             "scattered cells", "a handful of cells"],
                    "many": ["many cells", "{count} cells crowding the field", "a dense field of cells",
                              "densely packed cells", "{count} cells filling the view"]},
        "stain": {"phase-contrast": ["phase contrast", "a gray phase-contrast field",
                                     "dark cells with bright halos",
                                     "label-free phase imaging"],
                  "fluorescent": ["fluorescence", "green fluorescent cells", "GFP-labelled cells on black",
                                  "bright green cells on a dark background"]},
        "drift": {d: [f"cells drifting {d}", f"a slow drift {d}", f"{d}ward motion", f"cells flowing {d}",
                      f"the whole field drifting {d}", f"cells gliding {d}"]
                  for d in ("left", "right", "up", "down")}},
    "ophthalmic-surgery": {
        "noun": ["cataract surgery video", "ophthalmic surgery under the microscope", "eye surgery footage",
                 "operating-microscope view of eye surgery"],
        "side": {s: [f"an instrument entering from the {s}", f"a tool coming in from the {s} side",
                     f"a {s}-side instrument", f"a probe entering from the {s}",
                     f"the instrument approaching from the {s}", f"a {s}-hand instrument"]
                 for s in ("left", "right")},
        "iris": {"brown": ["a brown iris", "a dark brown iris", "brown iris colour", "brown eyes"],
                 "blue": ["a blue iris", "a light blue iris", "blue iris colour", "blue eyes"]}},
}

def _pick(rng, options):
    return options[int(rng.integers(len(options)))]  # a plain Python value, unlike rng.choice's numpy scalars

def _caption(rng, vocab, attrs, shuffle=True, templates=("{} with {}.", "{} showing {}.", "{}: {}.")):
    """A noun and one phrase per attribute from vocab (CAPTIONS[m] or HELDOUT[m]), in a template."""
    phrases = [_pick(rng, vocab[k][attrs[k]]).format(**attrs) for k in vocab if k != "noun"]
    if shuffle:
        rng.shuffle(phrases)
    body = ", ".join(phrases[:-1]) + " and " + phrases[-1]
    template = _pick(rng, templates) if len(templates) > 1 else templates[0]
    text = template.format(_pick(rng, vocab["noun"]), body)
    return text[0].upper() + text[1:]

# ----------------------------------------------------------------------------------------------
# drawing helpers. Coordinates are in [-1, 1] with y growing downwards like image rows, so a shape
# drawn at size 32 and at size 256 is the same shape; time t runs over [0, 1) across the clip.

def _grid(F, S):
    c = (np.arange(S, dtype=np.float32) + 0.5) / S * 2 - 1
    y, x = np.meshgrid(c, c, indexing="ij")                      # (H, W) each
    t = (np.arange(F, dtype=np.float32) / F)[:, None, None]      # (F, 1, 1)
    return t, y, x

def _soft(d, S):
    # anti-aliased 0 -> 1 step at d = 0, a one-pixel (2/S) ramp: smooth edges at 32 px without supersampling
    return np.clip(0.5 + d * (S / 2), 0, 1)

def _ellipse(x, y, cx, cy, rx, ry, S):
    q = np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2)    # 1 on the boundary
    return _soft((1 - q) * np.minimum(rx, ry).astype(np.float32), S)  # roughly a signed distance

def _segment(x, y, x0, y0, x1, y1):
    # distance from every pixel to the segment (x0, y0)-(x1, y1), whose ends may move per frame
    ux, uy = x1 - x0, y1 - y0
    h = np.clip(((x - x0) * ux + (y - y0) * uy) / (ux ** 2 + uy ** 2), 0, 1)  # (F, H, W) position along it
    return np.sqrt((x - x0 - h * ux) ** 2 + (y - y0 - h * uy) ** 2)          # (F, H, W)

def _noise(rng, S, cells):
    # band-limited noise: a (cells, cells) Gaussian grid upsampled bicubically, features the same at any S
    g = rng.standard_normal((cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(g).resize((S, S), Image.BICUBIC))  # (S, S)

def _u(rng, lo, hi, size):
    return rng.uniform(lo, hi, size).astype(np.float32)  # float32 all the way: float64 would double the cost

def _rgb(r, g, b):
    return np.array([r, g, b], np.float32)

def _paint(img, mask, value):
    return img + (value - img) * mask   # painter's algorithm: `value` covers img where mask is 1

def _cycle(t, cycles, phase):
    return 0.5 - 0.5 * np.cos(2 * np.pi * (cycles * t + phase))   # in [0, 1], `cycles` times per clip

# ----------------------------------------------------------------------------------------------
# the five renderers: (rng, F frames, S pixels, noise) -> float video (F, S, S, 3) in [0, 1], attrs that the
# pixels show (ANALYSERS below). Scalar parameters are drawn first, per-pixel noise last: one seed is one
# scene at every size. noise scales the sensor noise redrawn every frame (rt-mri, cell): 1 benchmark, 0 none.

def _endoscopy(rng, F, S, noise=1.0):
    t, y, x = _grid(F, S)
    speed, polyp = _pick(rng, ["slow", "fast"]), bool(rng.random() < 0.5)
    cycles = {"slow": 1.0, "fast": 3.0}[speed]          # folds that pass the camera per clip
    c0, wander, ph = _u(rng, -0.2, 0.2, 2), _u(rng, -0.08, 0.08, 2), _u(rng, 0, 1, 3)
    cx = c0[0] + wander[0] * np.sin(2 * np.pi * (t + ph[0]))   # (F, 1, 1) the lumen drifts a little
    cy = c0[1] + wander[1] * np.sin(2 * np.pi * (t + ph[1]))
    r, th = np.sqrt((x - cx) ** 2 + (y - cy) ** 2) + 1e-3, np.arctan2(y - cy, x - cx)  # (F, H, W) polar
    # folds are rings equally spaced in log-radius (a tunnel in perspective); subtracting cycles*t moves them
    # outward, as advancing a scope into a tube looks; sin(3 th) bends them into triangular haustral folds.
    phase = 2.4 * np.log(r) + 0.15 * np.sin(3 * th + 6.3 * ph[2]) - cycles * t
    folds = ((0.5 + 0.5 * np.cos(2 * np.pi * phase)) ** 1.5)[..., None]  # (F, H, W, 1): sharp ridges
    light = (1 - np.exp(-(r / 0.4) ** 2))[..., None]           # the far lumen gets no light: dark centre
    dark = _rgb(0.55, 0.10, 0.10) * _u(rng, 0.9, 1.1, 3)
    ridge = _rgb(0.95, 0.48, 0.42) * _u(rng, 0.93, 1.05, 3)
    img = light * (dark + (ridge - dark) * folds)              # (F, H, W, 3)
    if polyp:  # a pale dome on the wall that grows and slides outward as we approach it
        a, rp = np.float32(2 * np.pi * rng.random()), 0.5 + 0.08 * t
        px, py, sp = cx + rp * np.cos(a), cy + rp * np.sin(a), 0.2 + 0.04 * t
        d2 = ((x - px) ** 2 + (y - py) ** 2) / sp ** 2         # (F, H, W)
        shade = 0.7 + 0.3 * np.sqrt(np.clip(1 - d2, 0, 1))      # (F, H, W) brighter at the top of the dome
        dome = _soft((1 - np.sqrt(d2)) * sp, S)[..., None]  # (F, H, W, 1)
        img = _paint(img, dome, _rgb(0.97, 0.80, 0.74) * shade[..., None])
    field = _soft(1.02 - np.sqrt(x ** 2 + y ** 2), S)[..., None]  # (H, W, 1) round scope field, black corners
    return img * field, dict(speed=speed, polyp=polyp)

def _ultrasound(rng, F, S, noise=1.0):
    t, y, x = _grid(F, S)
    beats, chamber = int(rng.integers(1, 4)), _pick(rng, ["normal", "dilated"])
    half, ph = rng.uniform(0.65, 0.8), rng.random()             # half opening angle of the fan (rad)
    cx, cy = rng.uniform(-0.1, 0.1), rng.uniform(0.1, 0.25)
    rx, ry = {"normal": (0.24, 0.32), "dilated": (0.36, 0.46)}[chamber]
    rho, phi = np.sqrt(x ** 2 + (y + 1.02) ** 2), np.arctan2(x, y + 1.02)  # (H, W) polar about the probe
    fan = _soft(rho * (half - np.abs(phi)), S) * _soft(1.9 - rho, S) * _soft(rho - 0.1, S)
    # each beat squeezes the chamber to 70% of its size; the myocardium's outer edge stays put so the
    # wall visibly thickens in systole. Exactly `beats` cycles per clip -> an FFT can count them.
    s = 1 - 0.3 * _cycle(t, beats, ph)                           # (F, 1, 1)
    wall = _ellipse(x, y, cx, cy, rx * 1.35, ry * 1.3, S)        # (H, W)
    blood = _ellipse(x, y, cx, cy, rx * s, ry * s, S)            # (F, H, W)
    # speckle: blotches plus grain that belongs to the tissue (static), and a little frame-to-frame flicker
    speckle = (1 + 0.25 * _noise(rng, S, 9)) * _u(rng, 0.75, 1.25, (S, S))   # (H, W)
    speckle = speckle * _u(rng, 0.93, 1.07, (F, S, S))             # (F, H, W)
    img = 0.5 * np.exp(-0.25 * rho) * speckle                    # tissue fades with depth
    img = _paint(img, wall, 0.62 * speckle)                      # brighter myocardium
    img = _paint(img, blood, 0.03)                               # echo-free blood pool
    img = (img * fan)[..., None] * _rgb(1.0, 1.0, 0.97)          # (F, H, W, 3) nearly neutral gray
    return img, dict(beats=beats, rate={1: "slow", 2: "normal", 3: "fast"}[beats], chamber=chamber)

def _rt_mri(rng, F, S, noise=1.0):
    t, y, x = _grid(F, S)
    speed, articulator = _pick(rng, ["slow", "fast"]), _pick(rng, ["tongue", "jaw"])
    m = _cycle(t, {"slow": 1.0, "fast": 3.0}[speed], rng.random())  # (F, 1, 1) articulation in [0, 1]
    jaw = 0.14 * m if articulator == "jaw" else 0.0 * m        # the jaw drops, taking the tongue along
    tongue = 0.13 * m if articulator == "tongue" else 0.0 * m  # the tongue rises towards the palate
    ox, oy = _u(rng, -0.06, 0.06, 2)                           # the head is never quite centred
    X, Y = x - ox, y - oy
    img = np.zeros((F, S, S), np.float32)
    # a midsagittal head facing left, soft ellipses painted back to front; MRI: fat bright, bone and air dark
    for cx, cy, rx, ry, v in [(0.15, -0.25, 0.78, 0.72, 0.75),   # scalp fat
                              (0.15, -0.25, 0.73, 0.67, 0.10),   # skull
                              (0.17, -0.27, 0.67, 0.6, 0.55),    # brain
                              (0.18, 0.9, 0.42, 0.6, 0.40),      # neck
                              (0.32, 0.22, 0.26, 0.2, 0.48),     # cerebellum and brainstem
                              (-0.38, 0.1, 0.4, 0.36, 0.42),     # face
                              (-0.74, -0.08, 0.15, 0.1, 0.45),   # nose
                              (-0.66, 0.22, 0.1, 0.07, 0.50)]:   # upper lip
        img = _paint(img, _ellipse(X, Y, cx, cy, rx, ry, S), v)
    img = _paint(img, _ellipse(X, Y, -0.36, 0.5 + jaw, 0.38, 0.2, S), 0.42)        # lower jaw + chin
    img = _paint(img, _ellipse(X, Y, -0.65, 0.35 + jaw, 0.09, 0.07, S), 0.50)      # lower lip
    img = _paint(img, _ellipse(X, Y, -0.3, 0.28 + jaw / 2, 0.34, 0.08 + jaw / 2, S), 0.02)  # oral airway
    img = _paint(img, _ellipse(X, Y, 0.06, 0.58, 0.07, 0.45, S), 0.02)             # pharynx
    img = _paint(img, _ellipse(X, Y, -0.2, 0.4 + jaw - tongue, 0.3, 0.17, S), 0.65)  # tongue
    spine = _ellipse(X, Y, 0.4, 0.8, 0.1, 0.45, S) * (0.65 + 0.35 * np.cos(22 * Y) ** 2)  # vertebrae
    img = _paint(img, spine, 0.22)
    img = img * (1 + 0.08 * _noise(rng, S, 12)) * rng.uniform(0.85, 1.1)  # soft-tissue texture, gain
    img = img + 0.03 * noise * np.abs(rng.standard_normal((F, S, S), dtype=np.float32))  # Rician-ish floor
    return np.repeat(img[..., None], 3, axis=-1), dict(speed=speed, articulator=articulator)  # (F, H, W, 3)

def _cell(rng, F, S, noise=1.0):
    t, y, x = _grid(F, S)
    density, stain = _pick(rng, ["few", "many"]), _pick(rng, ["phase-contrast", "fluorescent"])
    drift = _pick(rng, ["left", "right", "up", "down"])
    count = int(rng.integers(3, 6) if density == "few" else rng.integers(10, 15))
    # cells on a randomly rotated, shifted, jittered hexagonal lattice: unlike dart throwing it fits 14 cells
    # that never merge (countable). Sparse cells: a coarser lattice, bigger cells. The box leaves drift room.
    spacing, (r_lo, r_hi) = (0.55, (0.12, 0.14)) if density == "few" else (0.38, (0.085, 0.1))
    i, j = np.meshgrid(np.arange(-4, 5), np.arange(-4, 5))     # (9, 9) lattice indices
    sites = np.stack([i + 0.5 * j, j * np.sqrt(3) / 2], -1).reshape(-1, 2) * spacing  # (81, 2)
    a = rng.uniform(0, np.pi)
    turn = np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]])
    sites = sites @ turn + rng.uniform(-0.5, 0.5, 2) * spacing
    sites = sites[np.abs(sites).max(1) < 0.74]                  # (N, 2): N >= 6 (few) or >= 14 (many)
    count = min(count, len(sites))                              # never binds in practice; honest if it does
    pos = sites[rng.permutation(len(sites))[:count]] + _u(rng, -0.02, 0.02, (count, 2))  # (count, 2)
    radius, aspect = _u(rng, r_lo, r_hi, count), _u(rng, 1, 1.15, count)
    angle, wob = _u(rng, 0, np.pi, count), _u(rng, 0, 1, count)
    dx, dy = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}[drift]
    shift = 0.24 * (t - 0.5)                                    # (F, 1, 1) common drift of the whole field
    img, core = np.zeros((F, S, S), np.float32), np.zeros((F, S, S), np.float32)
    for (px, py), r, asp, th, w in zip(pos, radius, aspect, angle, wob):
        wobble = 0.012 * np.sin(2 * np.pi * (2 * t + w))        # each cell also jiggles on its own
        u, v = x - (px + dx * shift + wobble), y - (py + dy * shift + wobble)  # (F, H, W)
        d = np.sqrt(((u * np.cos(th) + v * np.sin(th)) / (r * asp)) ** 2
                    + ((v * np.cos(th) - u * np.sin(th)) / r) ** 2)   # (F, H, W) 1 on the cell's rim
        img = np.maximum(img, np.exp(-1.5 * d ** 2))              # soft body, for fluorescence
        core = np.maximum(core, _soft((1 - d) * r, S))           # hard body, for phase contrast
    if stain == "fluorescent":  # glowing green cells on black
        img = img[..., None] * _rgb(0.25, 0.95, 0.35) * rng.uniform(0.85, 1.1)  # (F, H, W, 3)
    else:  # phase contrast: a gray field, dark cells ringed by a bright halo
        halo = np.clip(img * 3 * (1 - core), 0, 1)             # (F, H, W) just outside each cell
        bg = 0.55 + 0.04 * _noise(rng, S, 4)                    # uneven illumination
        img = (bg - 0.3 * core + 0.3 * halo)[..., None] * _rgb(1.0, 1.0, 0.98)  # (F, H, W, 3)
    img = img + 0.015 * noise * rng.standard_normal((F, S, S, 1), dtype=np.float32)  # camera noise
    return img, dict(density=density, count=count, stain=stain, drift=drift)

def _ophthalmic(rng, F, S, noise=1.0):
    t, y, x = _grid(F, S)
    side, iris = _pick(rng, ["left", "right"]), _pick(rng, ["brown", "blue"])
    e0, sway = _u(rng, -0.08, 0.08, 2), 0.02 * np.sin(2 * np.pi * (t + rng.random()))  # (F, 1, 1)
    ex, ey = e0[0] + sway, e0[1] + 0.5 * sway                   # the eye sways a little under the microscope
    r_pupil, width = rng.uniform(0.24, 0.3), rng.uniform(0.07, 0.08)
    y0, y1 = rng.uniform(-0.5, 0.5), rng.uniform(-0.15, 0.15)  # where the shaft enters, where its tip ends
    r, th = np.sqrt((x - ex) ** 2 + (y - ey) ** 2), np.arctan2(y - ey, x - ex)  # (F, H, W) each
    # sclera: pinkish white with red vessels (contour lines of smooth noise) and a vignette
    vessels = np.exp(-(_noise(rng, S, 5) / 0.07) ** 2) * _soft(r - 0.66, S)  # (F, H, W)
    img = _rgb(0.93, 0.77, 0.73) * _u(rng, 0.95, 1.03, 3) * np.ones((F, S, S, 1), np.float32)  # (F, H, W, 3)
    img = _paint(img, 0.45 * vessels[..., None], _rgb(0.8, 0.25, 0.22))  # (F, H, W, 3)
    # iris: brown or blue, with radial striations and a dark limbal ring at its edge
    col = _rgb(*{"brown": (0.45, 0.27, 0.12), "blue": (0.32, 0.47, 0.68)}[iris]) * rng.uniform(0.9, 1.1)
    stria = (0.85 + 0.15 * np.cos(28 * th)) * (1 - 0.5 * _soft(r - 0.52, S))  # (F, H, W)
    img = _paint(img, _soft(0.6 - r, S)[..., None], col * stria[..., None])  # (F, H, W, 3)
    # pupil: the orange-red fundus reflex of the microscope light, brightest in the middle
    reflex = _rgb(0.92, 0.38, 0.1) + _rgb(0.08, 0.3, 0.2) * np.exp(-(r / 0.15) ** 2)[..., None]  # (F,H,W,3)
    img = _paint(img, _soft(r_pupil - r, S)[..., None], reflex)   # (F, H, W, 3)
    # the instrument: a metal shaft from outside the frame whose tip glides in towards the pupil
    sgn = -1 if side == "left" else 1
    ease = t * t * (3 - 2 * t)                                   # (F, 1, 1) smooth start and stop
    x0, tip_x = 1.4 * sgn, sgn * (0.6 - 0.5 * ease)              # from beyond the edge to near the centre
    dist = _segment(x, y, x0, y0, tip_x, y1)                     # (F, H, W)
    shadow = _segment(x, y, x0 + 0.05, y0 + 0.06, tip_x + 0.05, y1 + 0.06)
    img = img * (1 - 0.4 * _soft(width - shadow, S))[..., None]  # (F, H, W, 3) the shaft's shadow
    shine = 0.42 + 0.4 * np.clip(1 - (dist / width) ** 2, 0, 1)  # (F, H, W) a lit cylinder: bright axis
    img = _paint(img, _soft(width - dist, S)[..., None], shine[..., None] * _rgb(1.0, 1.01, 1.04))
    img = img * (1 - 0.25 * (x ** 2 + y ** 2) / 2)[..., None]  # (F, H, W, 3) microscope vignette
    return img, dict(side=side, iris=iris)

RENDERERS = dict(zip(MODALITIES, [_endoscopy, _ultrasound, _rt_mri, _cell, _ophthalmic]))

def render_synthetic(modality, seed, num_frames=17, size=32, sensor_noise=True):
    """One synthetic clip -> (frames uint8 (F, H, W, 3), caption str, attrs dict). Deterministic in seed.
    sensor_noise=False: the same clip without the noise redrawn every frame (the benchmark keeps it)."""
    if modality not in RENDERERS:
        raise ValueError(f"unknown modality {modality!r}; choose one of {MODALITIES}")
    # the modality goes into the seed (streams differ); the caption has its own stream (the same at any size)
    k = MODALITIES.index(modality)
    video, attrs = RENDERERS[modality](np.random.default_rng([seed, k]), num_frames, size,
                                        noise=float(sensor_noise))  # (F, H, W, 3)
    caption = _caption(np.random.default_rng([seed, k, 1]), CAPTIONS[modality], attrs)
    frames = (np.clip(video, 0, 1) * 255 + 0.5).astype(np.uint8)    # (F, H, W, 3)
    return frames, caption, {"modality": modality, **attrs}

# ----------------------------------------------------------------------------------------------
# Generic textures for the VAE stage (train.py --vae_texture), in torch: mix_textures replaces clips of a
# batch on the device with torch's global RNG, which train.py reseeds every step (so a resume is exact).

def texture_video(batch, num_frames, size, generator=None):
    """Drifting 1/f^beta noise textures with random colours and contrast, in [-1, 1]: (B, F, 3, H, W); size:
    H or (H, W). Natural images have power ~ 1/f^2, unlike the renderers' flat shapes (a VAE trained on those
    alone learns their look). A random-phase field of amplitude 1/f^beta, moved by a phase ramp (an exact
    sub-pixel shift of v*t pixels), is the cheapest generic texture."""
    g, B = generator, batch
    H, W = (size, size) if isinstance(size, int) else size
    fy, fx = torch.fft.fftfreq(H).view(H, 1), torch.fft.fftfreq(W).view(1, W)  # cycles per pixel
    radius = (fy ** 2 + fx ** 2).sqrt().clamp_min(1.0 / max(H, W))  # (H, W); DC gets the lowest frequency's
    beta = 1.0 + 1.5 * torch.rand(B, 1, 1, 1, 1, generator=g)  # (B, 1, 1, 1, 1): rough (1) to smooth (2.5)
    phase = 2 * torch.pi * torch.rand(B, 1, 3, H, W, generator=g)  # (B, 1, 3, H, W): three independent fields
    v = (torch.rand(B, 2, 1, 1, 1, 1, generator=g) - 0.5) * 4  # (B, 2, 1, 1, 1, 1): drift, <= 2 px per frame
    t = torch.arange(num_frames).view(1, -1, 1, 1, 1)  # (1, F, 1, 1, 1)
    ramp = torch.exp(-2j * torch.pi * (fy * v[:, 0] + fx * v[:, 1]) * t)  # (B, F, 1, H, W)
    field = torch.fft.ifft2(radius ** -beta * torch.exp(1j * phase) * ramp).real  # (B, F, 3, H, W)
    field = field / field.std(dim=(1, 3, 4), keepdim=True)  # unit std per clip and field
    mix = torch.rand(B, 1, 3, 3, 1, 1, generator=g)  # (B, 1, 3 out, 3 in, 1, 1): random colour mixing
    gray = torch.rand(B, 1, 1, 1, 1, 1, generator=g) < 0.4  # 40% grey clips (ultrasound, MRI, microscopy)
    mix = torch.where(gray, torch.tensor([1.0, 0.0, 0.0]).view(1, 1, 1, 3, 1, 1), mix)  # grey: field 0 only
    rgb = (mix * field.unsqueeze(2)).sum(3) / mix.sum(3)  # (B, F, 3, H, W)
    mean = torch.rand(B, 1, 3, 1, 1, generator=g) * 1.2 - 0.6  # (B, 1, 3, 1, 1)
    mean = torch.where(gray[..., 0], mean[:, :, :1], mean)  # (B, 1, 3, 1, 1)
    contrast = 0.1 + 0.4 * torch.rand(B, 1, 1, 1, 1, generator=g)
    return (mean + contrast * rgb).clamp(-1, 1)  # (B, F, 3, H, W)

def mix_textures(video, frac, generator=None):
    """Replace each clip of a (B, F, 3, H, W) batch by a texture_video clip with probability frac."""
    pick = torch.rand(video.shape[0], generator=generator) < frac  # (B,)
    if not pick.any():
        return video
    video = video.clone()
    new = texture_video(int(pick.sum()), video.shape[1], tuple(video.shape[3:]), generator)  # (n, F, 3, H, W)
    video[pick.to(video.device)] = new.to(video)
    return video  # (B, F, 3, H, W)

# ----------------------------------------------------------------------------------------------
# Held-out captions: the same attributes as CAPTIONS, in words the model never saw in training

HELDOUT = {
    "endoscopy": {"noun": ["video from a colonoscope", "camera view inside the large intestine"],
                  "speed": {"slow": ["the camera creeping forward", "a gentle push into the colon"],
                            "fast": ["the camera racing forward", "a quick push into the colon"]},
                  "polyp": {True: ["a small growth on the mucosa", "a raised lesion on the bowel wall"],
                            False: ["a clean bowel wall", "mucosa with no growths"]}},
    "ultrasound": {"noun": ["echo scan of the heart", "heart ultrasound clip"],
                   "rate": {"slow": ["a single heartbeat", "bradycardia with one beat"],
                            "normal": ["two heartbeats", "a regular rhythm of two beats"],
                            "fast": ["three heartbeats", "tachycardia with three beats"]},
                   "chamber": {"normal": ["a ventricle of normal size", "an unremarkable ventricle"],
                               "dilated": ["a ventricle that is dilated",
                                           "cardiomegaly with a big ventricle"]}},
    "rt-mri": {"noun": ["MRI movie of a speaking subject", "vocal tract MRI sequence"],
               "speed": {"slow": ["unhurried speech", "leisurely articulation"],
                         "fast": ["hurried speech", "speedy articulation"]},
               "articulator": {"tongue": ["tongue movements", "the tongue going up and down"],
                               "jaw": ["the mandible moving", "jaw movements"]}},
    "cell": {"noun": ["microscope time-lapse of a cell culture", "video microscopy of cultured cells"],
             "density": {"few": ["{count} cells only", "a sparse culture"],
                         "many": ["a crowded culture of {count} cells", "a confluent field"]},
             "stain": {"phase-contrast": ["unstained cells under phase optics", "grey cells with halos"],
                       "fluorescent": ["fluorescently labelled cells", "cells glowing green"]},
             "drift": {d: [f"cells moving {d}", f"the culture sliding {d}"]
                       for d in ("left", "right", "up", "down")}},
    "ophthalmic-surgery": {"noun": ["cataract operation video", "microscope video of an eye operation"],
                           "side": {s: [f"a surgical tool from the {s}", f"an instrument inserted on the {s}"]
                                    for s in ("left", "right")},
                           "iris": {"brown": ["a brown-eyed patient", "a dark iris"],
                                    "blue": ["a blue-eyed patient", "a pale blue iris"]}},
}

def heldout_caption(modality, attrs, rng):
    """A caption of a clip's attributes in held-out words, in one fixed order and template."""
    return _caption(rng, HELDOUT[modality], attrs, shuffle=False, templates=("{} with {}.",))

def train_caption(modality, attrs, rng):
    """A caption of a clip's attributes in training words, as render_synthetic writes them."""
    return _caption(rng, CAPTIONS[modality], attrs)

# ----------------------------------------------------------------------------------------------
# Pixel analysers: one deterministic measurement per attribute of the benchmark (thresholds chosen on
# rendered clips; their accuracy on held-out rendered clips is reported before they judge generated ones)

def dominant_cycles(f):
    """Cycles per clip of the strongest motion: the top principal component of the frames over time."""
    v = f.reshape(len(f), -1).astype(np.float64)  # (F, S*S*3)
    v = v - v.mean(0)
    u = np.linalg.eigh(v @ v.T)[1][:, -1]  # (F,) top eigenvector of the (F, F) Gram matrix
    return int(np.argmax(np.abs(np.fft.rfft(u))[1:]) + 1)

def count_blobs(mask):
    """4-connected components of a boolean (S, S) mask, by propagating the max label (no scipy needed)."""
    lab = np.where(mask, np.arange(1, mask.size + 1).reshape(mask.shape), 0)
    while True:
        p = np.pad(lab, 1)
        up, down, left, right = p[:-2, 1:-1], p[2:, 1:-1], p[1:-1, :-2], p[1:-1, 2:]
        new = np.where(mask, np.maximum.reduce([lab, up, down, left, right]), 0)
        if (new == lab).all():
            return len(np.unique(lab)) - 1
        lab = new

def endo_motion(f):
    _, y, x = _grid(1, f.shape[1])
    return np.abs(np.diff(f.astype(np.float32), axis=0)).mean(-1)[:, x ** 2 + y ** 2 < 0.8].mean()

def endo_polyp_pixels(f):
    r, g = f[..., 0].astype(np.float32), f[..., 1].astype(np.float32)
    return ((g > 0.7 * r) & (r > 100)).sum(axis=(1, 2)).min()  # pale pixels present in every frame

def us_dark_fraction(f):
    _, y, x = _grid(1, f.shape[1])
    return (f.mean(-1)[:, (np.abs(x) < 0.55) & (y > -0.45) & (y < 0.85)] < 25).mean()

def mri_jaw_motion(f):
    _, y, x = _grid(1, f.shape[1])
    return f.mean(-1).astype(np.float32).std(0)[(x < -0.2) & (y > 0.62) & (y < 0.95)].mean()

def cell_mask(f):
    g = f.astype(np.float32)
    fluo = bool(np.median(g) < 60)  # a black background
    return fluo, (g[..., 1] > 128) if fluo else (g.mean(-1) < 95)  # (F, S, S)

def cell_drift(f):
    _, m = cell_mask(f)
    _, y, x = _grid(1, f.shape[1])
    w = m.sum((1, 2)) + 1e-6  # (F,)
    cy, cx = (m * y).sum((1, 2)) / w, (m * x).sum((1, 2)) / w  # (F,) centroids of the cells
    dx, dy = cx[-1] - cx[0], cy[-1] - cy[0]
    return ("right" if dx > 0 else "left") if abs(dx) > abs(dy) else ("down" if dy > 0 else "up")

def eye_side(f):
    g = f.astype(np.float32)
    metal = (g.max(-1) - g.min(-1) < 16) & (g.mean(-1) > 90) & (g.mean(-1) < 215)  # (F, S, S) neutral grey
    return "left" if metal[:, :, : f.shape[2] // 2].sum() > metal[:, :, f.shape[2] // 2:].sum() else "right"

def eye_iris(f):
    _, y, x = _grid(1, f.shape[1])
    r = np.sqrt(x ** 2 + y ** 2)
    g = f.astype(np.float32)[:, (r > 0.36) & (r < 0.52)]  # (F, N, 3) the iris ring
    return "blue" if (g[..., 2] - g[..., 0]).mean() > 0 else "brown"

ANALYSERS = {  # modality -> attribute -> frames -> value, in the vocabulary of render_synthetic's attrs
    "endoscopy": {"speed": lambda f: "fast" if endo_motion(f) > 16 else "slow",
                  "polyp": lambda f: bool(endo_polyp_pixels(f) > 5)},
    "ultrasound": {"rate": lambda f: {1: "slow", 2: "normal", 3: "fast"}.get(dominant_cycles(f), "other"),
                   "chamber": lambda f: "dilated" if us_dark_fraction(f) > 0.2 else "normal"},
    "rt-mri": {"speed": lambda f: {1: "slow", 3: "fast"}.get(dominant_cycles(f), "other"),
               "articulator": lambda f: "jaw" if mri_jaw_motion(f) > 8 else "tongue"},
    "cell": {"stain": lambda f: "fluorescent" if cell_mask(f)[0] else "phase-contrast",
             "density": lambda f: "few" if count_blobs(cell_mask(f)[1][0]) <= 5 else "many",
             "drift": cell_drift},
    "ophthalmic-surgery": {"side": eye_side, "iris": eye_iris},
}
ATTR_VALUES = {m: {k: list(v) for k, v in CAPTIONS[m].items() if k != "noun"} for m in MODALITIES}
