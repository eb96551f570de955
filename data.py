"""
Everything that turns pixels into training clips (Bora arXiv:2407.08944; Open-Sora v1.0 for the CSV format):
- reading videos: mp4/avi/webm/... through ffmpeg (imageio-ffmpeg), gif, .npy/.npz arrays, frame folders;
  sample_clip decodes only the frames a clip spans (ffmpeg seeks, arrays are memory-mapped);
- frame sampling: Bora App. A's motion threshold K (the interval grows from 1 until the clip's mean
  inter-frame difference exceeds K), a fixed interval, padding or skipping of short clips;
- Bora's short-side resize + center crop (App. A), and a left-right flip for modalities without laterality;
- CSV corpora (headered path,text,modality[,num_frames,fps] or Bora's headerless path,text), a CSV builder
  for a folder tree, and Bora's modality balancing (Sec. 4.2): equalising weights, or a cap to the smallest;
- the stage-1 "This is a {modality} video." captions (Bora Sec. 4.2); to_tensor and to_uint8;
- what every script shares: --key=value options and their --help, atomic checkpoint files, the device.
The synthetic benchmark lives in synthetic.py, re-exported here (data.render_synthetic, data.MODALITIES).
    python data.py --out_dir=out/data_preview    # writes PNG strips of each modality, prints ms/clip
    python data.py --make_csv videos/            # videos/{endoscopy,ultrasound,...}/*.mp4 -> videos.csv
"""
import ast
import contextlib
import csv
import difflib
import inspect
import io
import os
import re
import sys
import tempfile
import textwrap
import time
import tokenize
import warnings
import zipfile
from dataclasses import fields

import imageio.v2 as imageio
import imageio.v3 as iio
import imageio_ffmpeg
import numpy as np
import torch
from PIL import Image

from synthetic import CAPTIONS, MODALITIES, MODALITY_NAMES, render_synthetic  # noqa: F401

def align_caption(modality):
    # Bora Sec. 4.2, modal alignment: every caption becomes "This is a {modal} video." ("an" before a vowel)
    name = MODALITY_NAMES.get(modality, modality)
    return f"This is {'an' if name[:1].lower() in 'aeiou' else 'a'} {name} video."

# ----------------------------------------------------------------------------------------------
# real videos. A 10-minute 720p surgery video is 16 GB of RGB frames: read_video loads a whole file (fine for
# short clips and tests); sample_clip decodes only a clip's span and keeps it resized: constant memory.

FFMPEG_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
VIDEO_EXTS = FFMPEG_EXTS + (".gif", ".npy", ".npz")

def _fail(path, e):
    """Any reading error -> a one-line ValueError naming the file (ffmpeg's own reason, not its banner)."""
    if isinstance(e, ValueError) and str(e).startswith("cannot read video"):
        return e
    lines = [s.strip() for s in str(e).splitlines() if s.strip() and not s.startswith("===")]
    reason = (lines[-1] if "=== stderr ===" in str(e) else lines[0]) if lines else type(e).__name__
    return ValueError(f"cannot read video {path}: {reason}")

def _to_uint8_rgb(a, path):
    """Stored frames -> uint8 (T, H, W, 3): bools and floats in [0, 1] times 255, floats in [0, 255] as is,
    integers past 255 over their bit depth (12-bit as uint16: / 4095). Refuses NaN, inf, < 0, floats > 255."""
    a = np.asarray(a)
    if a.dtype != np.uint8 and a.size:
        lo, hi = (float(a.min()), float(a.max())) if a.dtype.kind in "biuf" else (np.nan, np.nan)
        if not np.isfinite(hi - lo):
            raise ValueError(f"cannot read video {path}: NaN or infinite values; store finite pixels")
        top = (1 if hi <= 1 else 255) if a.dtype.kind in "bf" else max(255, 2 ** int(hi).bit_length() - 1)
        if lo < 0 or hi > top:
            raise ValueError(f"cannot read video {path}: {a.dtype} values from {lo:g} to {hi:g}; store "
                             f"pixels as integers >= 0 or floats in [0, 1] or [0, 255]")
        a = (a.astype(np.float32) * np.float32(255 / top) + 0.5).astype(np.uint8)
    if a.ndim == 3 or (a.ndim == 4 and a.shape[-1] == 1):
        a = np.repeat(a.reshape(a.shape[:3] + (1,)), 3, axis=-1)  # grayscale (T, H, W[, 1]) -> (T, H, W, 3)
    if a.ndim != 4 or a.shape[-1] not in (3, 4):
        raise ValueError(f"cannot read video {path}: expected (T,H,W) or (T,H,W,3) frames (channels last), "
                         f"got {a.shape}")
    if a.shape[0] == 0:
        raise ValueError(f"cannot read video {path}: zero frames")
    return np.ascontiguousarray(a[..., :3])                     # drop alpha: (T, H, W, 3)

def _frame_names(folder):
    return sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTS))

def _npz_member(path):
    """An .npz's frames (its only array, or the one named frames, images or video), unread: (member file at
    the data, to read forward, shape, dtype). The member keeps the archive open until it is closed itself."""
    with zipfile.ZipFile(path) as zf:
        names = [n[:-4] for n in zf.namelist() if n.endswith(".npy")]
        key = [k for k in ("frames", "images", "video") if k in names] or names
        if len(key) != 1:
            raise ValueError(f"npz holds the arrays {names}: store the frames alone or as 'frames'"
                             if names else "empty npz archive")
        f = zf.open(key[0] + ".npy")
    fmt = np.lib.format
    header = fmt.read_array_header_1_0 if fmt.read_magic(f) == (1, 0) else fmt.read_array_header_2_0
    shape, fortran, dtype = header(f)
    if fortran or dtype.hasobject or len(shape) < 3:
        f.close()
        raise ValueError(f"npz array {key[0]!r} is not a C-order (T, H, W[, C]) array")
    return f, shape, dtype

def read_video(path):
    """mp4/avi/gif/webm (imageio + ffmpeg), .npy/.npz arrays or a frame folder -> uint8 (T, H, W, 3), all."""
    path = str(path)
    try:
        if not os.path.exists(path):
            raise FileNotFoundError("file not found")
        if os.path.isdir(path) or path.lower().endswith((".npy", ".npz")):  # a frame folder, in name order
            frames = list(_stored_frames(path))
            a = np.stack(frames) if frames else np.zeros((0, 1, 1))  # (T, H, W[, C]) as stored
        else:  # all frames: (T, H, W, 3); gifs in RGB, whatever their frames' modes (palette, RGBA)
            a = iio.imread(path, index=None, **({"mode": "RGB"} if path.lower().endswith(".gif") else {}))
            if a.ndim == 2 or (a.ndim == 3 and a.shape[-1] in (3, 4)):
                a = a[None]                                     # an image is a 1-frame video: (1, H, W[, C])
    except Exception as e:  # missing, corrupt, truncated: one line naming the file, not an ffmpeg traceback
        raise _fail(path, e) from e
    return _to_uint8_rgb(a, path)

def _stored_frames(path, start=0):
    """Frames start, start+1, ... of a frame folder, .npy (memory-mapped) or .npz (from the member's offset)
    as stored (any dtype), read one at a time. A folder's frames must share a size and type."""
    if os.path.isdir(path):
        first = None
        for n in _frame_names(path)[start:]:
            f = iio.imread(os.path.join(path, n))
            first = first or (f.shape, f.dtype)
            if (f.shape, f.dtype) != first:
                raise ValueError(f"frame {n} is {f.shape} {f.dtype}, the frames before it {first[0]} "
                                 f"{first[1]}: give frames of one size and type")
            yield f
    elif path.lower().endswith(".npy"):
        a = np.load(path, mmap_mode="r", allow_pickle=False)   # (T, H, W[, C]) on disk, paged in as read
        yield from (a[t] for t in range(start, len(a)))
    else:
        f, shape, dtype = _npz_member(path)
        size = int(np.prod(shape[1:])) * dtype.itemsize        # bytes per frame
        with f:
            f.seek(f.tell() + start * size)
            for _ in range(start, shape[0]):
                yield np.frombuffer(f.read(size), dtype).reshape(shape[1:])  # (H, W[, C])

def iter_frames(path, start=0, fps=0.0):
    """Yield uint8 (H, W, 3) frames start, start+1, ..., decoding no further than the caller reads (closing
    stops ffmpeg; errors are not wrapped); ffmpeg seeks if fps is known; gifs, non-uint8 arrays load whole."""
    path = str(path)
    if not os.path.exists(path):
        raise FileNotFoundError("file not found")
    if os.path.isdir(path) or path.lower().endswith((".npy", ".npz")):
        for f in _stored_frames(path, start):
            if f.dtype != np.uint8:  # scaled by the whole file's range (only ever the first frame)
                yield from read_video(path)[start:]
                return
            yield _to_uint8_rgb(f[None], path)[0]              # (H, W, 3)
    elif path.lower().endswith(FFMPEG_EXTS):
        # -ss half a frame early: rounding never lands on the next frame (ffmpeg's exact seek drops the rest)
        seek = ["-ss", f"{(start - 0.5) / fps:.6f}"] if start > 0 and fps > 0 else []
        with contextlib.closing(imageio_ffmpeg.read_frames(path, input_params=seek)) as gen:
            w, h = next(gen)["size"]
            for k, buf in enumerate(gen):
                if seek or k >= start:                         # without fps we cannot seek: decode and drop
                    yield np.frombuffer(buf, np.uint8).reshape(h, w, 3)  # (H, W, 3) rgb24
    else:
        yield from read_video(path)[start:]

def video_info(path):
    """(number of frames, fps) from metadata only: a container header, an array header, a folder listing; fps
    is 0.0 where unknown. ffmpeg's duration x fps can be a frame off; sample_clip fixes too high a count."""
    path = str(path)
    try:
        if not os.path.exists(path):
            raise FileNotFoundError("file not found")
        fps = 0.0
        if os.path.isdir(path):
            n = len(_frame_names(path))
        elif path.lower().endswith(".npy"):
            n = len(np.load(path, mmap_mode="r", allow_pickle=False))
        elif path.lower().endswith(".npz"):
            f, shape, _ = _npz_member(path)
            f.close()
            n = shape[0]
        elif path.lower().endswith(FFMPEG_EXTS):
            with contextlib.closing(imageio_ffmpeg.read_frames(path)) as gen:
                meta = next(gen)                               # ffmpeg's header: size, fps, duration
            fps, seconds = float(meta.get("fps") or 0), float(meta.get("duration") or 0)
            known = fps > 0 and seconds > 0
            n = round(fps * seconds) if known else imageio_ffmpeg.count_frames_and_secs(path)[0]
        else:
            n = len(read_video(path))
        if n < 1:
            raise ValueError("zero frames")
    except Exception as e:
        raise _fail(path, e) from e
    return int(n), fps

def resize_center_crop(frames, size):
    """uint8 (T, H, W, 3) -> (T, size, size, 3): short side to `size`, then a center crop (Bora App. A)."""
    T, H, W, _ = frames.shape
    s = min(H, W)
    top, left = (H - s) // 2, (W - s) // 2
    # cropping the central square, then resizing it, equals resizing then cropping but touches only the pixels
    # we keep. PIL's bilinear filter widens when it shrinks: big downscales average, not alias.
    crop = frames[:, top:top + s, left:left + s]               # (T, s, s, 3)
    if s == size:
        return np.ascontiguousarray(crop)
    return np.stack([np.asarray(Image.fromarray(f).resize((size, size), Image.BILINEAR)) for f in crop])

def frame_indices(total, num_frames, interval, rng=None):
    """num_frames indices spaced by `interval` from a random start (centered if rng is None)."""
    if total < 1:
        raise ValueError("cannot sample frames from a video with zero frames")
    span = (num_frames - 1) * interval + 1
    if total < span:  # too short for this interval: spread evenly over the clip, repeating frames if needed
        return np.linspace(0, total - 1, num_frames).round().astype(np.int64)
    start = int(rng.integers(0, total - span + 1)) if rng is not None else (total - span) // 2
    return start + interval * np.arange(num_frames)

def clip_motion(frames):
    """Mean absolute difference of consecutive frames of a uint8 clip (0-255), Bora App. A's motion measure;
    at the training resolution, so that K does not depend on the source."""
    return float(np.abs(np.diff(frames.astype(np.int16), axis=0)).mean()) if len(frames) > 1 else 0.0

class _Window:
    """Frames start, start+1, ... of one video, decoded forward on demand, resized to `size`; keeps those in
    `keep` (all if None): in memory, one decoded frame plus the kept frames at training size."""
    def __init__(self, path, start, size, fps, keep):
        self.frames, self.pos, self.size = iter_frames(path, start, fps), start, size
        self.keep, self.kept = keep, {}

    def __call__(self, i):
        while self.pos <= i:
            f = next(self.frames, None)
            if f is None:
                raise _EndOfVideo(f"the stream ended at frame {self.pos}, before frame {i}")
            if self.keep is None or self.pos in self.keep:
                self.kept[self.pos] = resize_center_crop(f[None], self.size)[0]  # (size, size, 3)
            self.pos += 1
        return self.kept[i]

    def close(self):
        self.frames.close()

class _EndOfVideo(ValueError):
    pass

def _choose(open_window, total, F, rng, interval, motion_threshold, max_interval):
    """The frames of one clip -> (uint8 (F, size, size, 3), indices, interval). open_window(start, keep) gives
    a function i -> frame i at training size for i >= start."""
    if motion_threshold > 0 and F > 1 and total >= F:
        # Bora App. A: the interval grows from 1 until the clip's mean inter-frame difference exceeds K. The
        # start leaves room for max_interval (if the video allows); a clip never exceeding K gets the widest.
        start = int(rng.integers(0, max(0, total - ((F - 1) * max_interval + 1)) + 1))
        widest = max(1, min(max_interval, (total - 1 - start) // (F - 1)))
        get = open_window(start, None)
        for k in range(1, widest + 1):
            idx = start + k * np.arange(F)
            clip = np.stack([get(i) for i in idx])             # (F, size, size, 3)
            if clip_motion(clip) > motion_threshold:
                break
    else:  # a fixed interval; linspace over clips too short for it; repeated frames below num_frames
        idx, k = frame_indices(total, F, interval, rng), interval
        get = open_window(int(idx[0]), set(idx.tolist()))
        clip = np.stack([get(i) for i in idx])                 # (F, size, size, 3)
    getattr(get, "close", lambda: None)()
    return clip, idx, k

def sample_clip(path, num_frames, size, rng, interval=1, motion_threshold=0.0, max_interval=8, total=None,
                fps=0.0):
    """One training clip from a video file -> (uint8 (F, size, size, 3), dict(indices, interval, total, fps,
    short)), decoding only the clip's span. total/fps: count and rate if known (a CSV's), else metadata's; a
    given count is rechecked if it says the file is short or it ends early. Errors: one-line ValueError."""
    path, rng = str(path), rng if rng is not None else np.random.default_rng(0)
    args = (num_frames, rng, interval, motion_threshold, max_interval)
    ffmpeg = path.lower().endswith(FFMPEG_EXTS)
    try:
        if not total or total < num_frames or (ffmpeg and not fps):  # ffmpeg seeks by time: needs fps
            total, fps = video_info(path)
        state = rng.bit_generator.state
        try:
            clip, idx, k = _choose(lambda start, keep: _Window(path, start, size, fps, keep), total, *args)
        except _EndOfVideo:  # fewer frames than said (a CSV's count, a truncated file, a rounded duration):
            # count them (ffmpeg: by decoding, in constant memory) and draw again, the same way
            total = imageio_ffmpeg.count_frames_and_secs(path)[0] if ffmpeg else video_info(path)[0]
            rng.bit_generator.state = state
            clip, idx, k = _choose(lambda start, keep: _Window(path, start, size, fps, keep), total, *args)
    except Exception as e:
        raise _fail(path, e) from e
    return clip, dict(indices=idx, interval=k, total=total, fps=fps, short=total < num_frames)

def save_video(path, frames, fps=8):
    """uint8 (F, H, W, 3) -> .mp4 (H.264), .gif, or .png (all frames side by side). Returns path."""
    path, frames = str(path), np.asarray(frames, dtype=np.uint8)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    if path.endswith(".mp4"):
        # yuv420p needs even sides; pad by repeating the edge instead of letting imageio rescale to 16s
        F, H, W, _ = frames.shape
        frames = np.pad(frames, ((0, 0), (0, H % 2), (0, W % 2), (0, 0)), mode="edge")  # (F, H', W', 3)
        imageio.mimwrite(path, list(frames), fps=fps, codec="libx264", quality=9, macro_block_size=1,
                         pixelformat="yuv420p")
    elif path.endswith(".gif"):
        iio.imwrite(path, frames, duration=1000 / fps, loop=0)
    elif path.endswith(".png"):
        strip = frames.transpose(1, 0, 2, 3).reshape(frames.shape[1], -1, 3)  # (H, F*W, 3)
        Image.fromarray(strip).save(path)
    else:
        raise ValueError(f"cannot save video {path}: use a .mp4, .gif or .png file name")
    return path

# ----------------------------------------------------------------------------------------------
# corpora: CSV files, modality names, balancing

# folder, dataset and CSV names (Colonoscopic/, RT_MRI/, ...) -> modality; keys lower case, '-' for ' ', '_'
MODALITY_ALIASES = {alias: m for m, aliases in {
    "endoscopy": "endoscopy endoscopic endo colonoscopy colonoscopic kvasir kvasir-capsule capsule-endoscopy "
                 "laparoscopy laparoscopic cholect45 cholectriplet cholec80 gastroscopy",
    "ultrasound": "ultrasound us ultrasonography sonography echo echocardiography echonet echonet-dynamic "
                  "chaosheng",
    "rt-mri": "rt-mri rtmri real-time-mri mri 2drt speech-mri",
    "cell": "cell cells microscopy cell-microscopy ctmc ctmcv1 cmtc visem tryp trypanosome sperm",
    "ophthalmic-surgery": "ophthalmic-surgery ophthalmic ophthalmology eye-surgery cataract cataracts "
                          "cataract-1k cataract-101 ophora"}.items() for alias in aliases.split()}

# modalities never flipped left-right, and why (hflip refuses them)
LATERAL = {"ultrasound": "echo views have a fixed left-right convention",
           "rt-mri": "midsagittal slices face one way",
           "ophthalmic-surgery": "the eye and the instrument's side are anatomy, and captions state them"}
_SIDE = re.compile(r"\b(left|right)\b", re.IGNORECASE)        # a caption that names a side is never flipped
CSV_FIX = "give a CSV with the header path,text,modality[,num_frames,fps] or headerless path,text rows"

def canonical_modality(name):
    """'Colonoscopic', 'EchoNet_Dynamic', 'RT_MRI' -> 'endoscopy', 'ultrasound', 'rt-mri'; None if unknown."""
    return MODALITY_ALIASES.get(re.sub(r"[\s_]+", "-", str(name).strip().lower()))

def _modality_from_path(path):
    folders = reversed(os.path.dirname(os.path.normpath(path)).split(os.sep))  # parent folder first
    return next((canonical_modality(f) for f in folders if canonical_modality(f)), "unknown")

def _number(x, kind, where):
    try:
        return kind(float(x)) if str(x).strip() else None
    except ValueError:
        raise ValueError(f"{where}: {x!r} is not a number; leave the cell empty or fix it") from None

def read_csv(csv_path):
    """A video list -> rows dict(path (absolute), text, modality, num_frames, fps (None if not given)).
    Headered: path,text and optional modality,num_frames,fps, any order. Headerless (Bora, Open-Sora v1.0):
    path,text[,num_frames], the modality from the path's nearest known folder name, else 'unknown'. Paths:
    relative to the CSV or absolute. Empty captions: the template."""
    if not os.path.isfile(csv_path):
        raise ValueError(f"cannot read CSV {csv_path}: file not found; {CSV_FIX}")
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        table = [r for r in csv.reader(f) if any(c.strip() for c in r)]
    root = os.path.dirname(os.path.abspath(csv_path))
    head = [c.strip().lower() for c in table[0]] if table else []
    if "path" in head and "text" in head:
        names = ("path", "text", "modality", "num_frames", "fps")
        col, body = {c: head.index(c) for c in names if c in head}, table[1:]
    elif head and (head[0].lower().endswith(VIDEO_EXTS) or os.path.isdir(os.path.join(root, table[0][0]))):
        col, body = dict(path=0, text=1, num_frames=2), table  # headerless; column 3: Open-Sora's num_frames
    else:
        missing = sorted({"path", "text", "modality"} - set(head))
        what = f"missing column(s) {missing} in the header" if table else "no rows"
        raise ValueError(f"cannot read CSV {csv_path}: {what}; {CSV_FIX}")
    rows = []
    for n, r in enumerate(body, start=2 if body is not table else 1):
        cell = {c: (r[k].strip() if k < len(r) else "") for c, k in col.items()}
        m = cell.get("modality", "")
        m = (canonical_modality(m) or m) if m else _modality_from_path(cell["path"])
        where = f"cannot read CSV {csv_path}, line {n}"
        rows.append(dict(path=os.path.join(root, cell["path"]), text=cell["text"] or align_caption(m),
                         modality=m, num_frames=_number(cell.get("num_frames", ""), int, where),
                         fps=_number(cell.get("fps", ""), float, where)))
    if not rows:
        raise ValueError(f"cannot read CSV {csv_path}: no rows; {CSV_FIX}")
    return rows

def modality_weights(modalities):
    """Per-clip sampling weights 1 / (M * count of its modality): M modalities, 1/M each (Bora Sec. 4.2)."""
    _, inverse, counts = np.unique(np.asarray(modalities), return_inverse=True, return_counts=True)
    return 1.0 / (len(counts) * counts[inverse])

def epoch_order(n, seed, epoch, modalities=None, balance="none"):
    """The clip indices of one epoch, the same on every rank for (seed, epoch): ranks take disjoint slices and
    a resumed run skips to its step. balance (Bora Sec. 4.2): none, a permutation of all n clips; weight, n
    draws with replacement by modality_weights (Bora's "more frames from each video of a rare modality": each
    time another window); cap, each modality cut to the smallest one's count, a fresh subset each epoch."""
    if balance == "none" or modalities is None:
        return torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
    rng = np.random.default_rng([seed, epoch])
    if balance == "weight":
        return rng.choice(n, size=n, p=modality_weights(modalities)).tolist()
    if balance == "cap":
        groups = [np.flatnonzero(np.asarray(modalities) == m) for m in sorted(set(modalities))]
        cap = min(len(g) for g in groups)
        return rng.permutation(np.concatenate([rng.permutation(g)[:cap] for g in groups])).tolist()
    raise ValueError(f"balance={balance!r}: use none, weight or cap")

def parse_hflip(spec):
    """'endoscopy,cell' -> the set of modalities flipped left-right at random; refuses those in LATERAL."""
    names = {canonical_modality(s) or s.strip() for s in spec.split(",") if s.strip()}
    lateral = sorted(names & set(LATERAL))
    if lateral:
        raise ValueError(f"hflip={spec}: {lateral[0]} must not be flipped ({LATERAL[lateral[0]]}); flip only "
                         f"modalities without laterality, e.g. endoscopy,cell")
    return names

# ----------------------------------------------------------------------------------------------
# datasets: both return dict(video=(F, 3, H, W) float in [-1, 1], text=str, modality=str)

def to_tensor(frames):
    """uint8 (F, H, W, 3) -> float (F, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 127.5 - 1  # (F,3,H,W)

def to_uint8(video):
    """The inverse: float (B, F, 3, H, W) in [-1, 1] -> uint8 numpy (B, F, H, W, 3)."""
    v = ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)  # (B, F, 3, H, W)
    return v.permute(0, 1, 3, 4, 2).cpu().numpy()  # (B, F, H, W, 3)

class SyntheticVideoDataset(torch.utils.data.Dataset):
    # clip i is rendered on the fly, cycling through the modalities: Bora's balancing (Sec. 4.2) for free.
    def __init__(self, num_clips, num_frames=17, size=32, seed_offset=0, align=False):
        self.num_clips, self.num_frames, self.size = num_clips, num_frames, size
        self.seed_offset, self.align = seed_offset, align

    def __len__(self):
        return self.num_clips

    def __getitem__(self, key):
        i = key[0] if isinstance(key, tuple) else key           # (index, epoch, position) from train.batches
        modality = MODALITIES[i % len(MODALITIES)]
        frames, caption, _ = render_synthetic(modality, self.seed_offset + i, self.num_frames, self.size)
        text = align_caption(modality) if self.align else caption
        return dict(video=to_tensor(frames), text=text, modality=modality, key=key)

class VideoCSVDataset(torch.utils.data.Dataset):
    """Clips of the videos a CSV lists (read_csv). An item also names, one per line, the unreadable files it
    passed over (`skipped`) and the files shorter than num_frames it met (`short`: padded, or passed over if
    short_clips=skip), for train.batches to count. ds[i] draws clip i with seed (seed, i), ds[(i, epoch,
    position)] with (seed, i, epoch, position), whatever the worker, a resume or the files that failed."""
    def __init__(self, csv_path, num_frames=17, size=32, frame_interval=1, align=False, seed=0,
                 motion_threshold=0.0, max_interval=8, short_clips="pad", hflip=""):
        if short_clips not in ("pad", "skip"):
            raise ValueError(f"short_clips={short_clips!r}: use pad (repeat frames) or skip")
        rows = read_csv(csv_path)
        if short_clips == "skip":  # drop the clips the CSV already says are too short (as Open-Sora does)
            keep = [r for r in rows if r["num_frames"] is None or r["num_frames"] >= num_frames]
            if len(keep) < len(rows):
                warnings.warn(f"{csv_path}: left out {len(rows) - len(keep)} video(s) shorter than "
                              f"{num_frames} frames")
            if not keep:
                raise ValueError(f"cannot read CSV {csv_path}: every video is shorter than {num_frames} "
                                 f"frames; lower --num_frames or use --short_clips=pad")
            rows = keep
        self.rows, self.modalities = rows, [r["modality"] for r in rows]
        self.groups = {m: [i for i, x in enumerate(self.modalities) if x == m] for m in set(self.modalities)}
        self.rank_in_group = {i: k for g in self.groups.values() for k, i in enumerate(g)}  # place in group
        self.csv_path, self.num_frames, self.size, self.align = csv_path, num_frames, size, align
        self.seed, self.frame_interval, self.motion_threshold = seed, frame_interval, motion_threshold
        self.max_interval, self.short_clips, self.hflip = max_interval, short_clips, parse_hflip(hflip)
        self.bad, self.meta = set(), {}  # files skipped, (frames, fps) of files read; per process: per worker

    def __len__(self):
        return len(self.rows)

    def _turns(self, i):  # row i, then the rest of its modality, then everyone else
        g, k, n = self.groups[self.modalities[i]], self.rank_in_group[i], len(self.rows)
        yield from (g[(k + s) % len(g)] for s in range(len(g)))
        yield from ((i + s) % n for s in range(1, n) if self.modalities[(i + s) % n] != self.modalities[i])

    def __getitem__(self, key):
        i, *salt = key if isinstance(key, tuple) else (key,)
        skipped, short = [], []
        for j in self._turns(i):
            row = self.rows[j]
            if row["path"] in self.bad:
                continue
            rng = np.random.default_rng([self.seed, i, *salt])  # the same draw, whichever files failed before
            try:
                total, fps = self.meta.get(row["path"], (row["num_frames"], row["fps"] or 0.0))  # or CSV's
                clip, info = sample_clip(row["path"], self.num_frames, self.size, rng, self.frame_interval,
                                         self.motion_threshold, self.max_interval, total, fps)  # (F, S, S, 3)
            except ValueError as e:
                self.bad.add(row["path"])                      # remembered, so this process never retries it
                skipped.append(row["path"])
                warnings.warn(f"{e}; skipping it")
                continue
            self.meta[row["path"]] = (info["total"], info["fps"])  # the file's own count
            short += [row["path"]] if info["short"] else []
            if info["short"] and self.short_clips == "skip":
                self.bad.add(row["path"])
                warnings.warn(f"{row['path']} has {info['total']} frames, fewer than num_frames="
                              f"{self.num_frames}; skipping it")
                continue
            text = align_caption(row["modality"]) if self.align else row["text"]
            if row["modality"] in self.hflip and rng.random() < 0.5 and not _SIDE.search(text):
                clip = clip[:, :, ::-1]                        # (F, H, W, 3) mirrored left-right
            return dict(video=to_tensor(clip), text=text, modality=row["modality"], key=key,
                        skipped="\n".join(skipped), short="\n".join(short))
        raise ValueError(f"no video in {self.csv_path} is readable ({len(self.bad)} failed): check the paths")

# ----------------------------------------------------------------------------------------------
# python data.py --make_csv DIR: a CSV from a folder tree

def _videos_under(folder):
    """Video files and frame folders (>= 2 images and nothing else) under folder, in name order."""
    for name in (n for n in sorted(os.listdir(folder)) if not n.startswith(".")):
        p = os.path.join(folder, name)
        if os.path.isdir(p):
            frames_only = len(_frame_names(p)) >= 2 and not any(
                os.path.isdir(os.path.join(p, n)) or n.lower().endswith(VIDEO_EXTS) for n in os.listdir(p))
            yield from [p] if frames_only else _videos_under(p)
        elif name.lower().endswith(VIDEO_EXTS):
            yield p

def _folder_captions(folder):
    """{file name: caption} from folder/captions.csv (header path,text or file,caption; or two columns)."""
    path = os.path.join(folder, "captions.csv")
    if not os.path.isfile(path):
        return {}
    with open(path, newline="", encoding="utf-8-sig") as f:
        table = [r for r in csv.reader(f) if len(r) >= 2]
    head = [c.strip().lower() for c in table[0]] if table else []
    a = next((head.index(c) for c in ("path", "file", "video", "name") if c in head), None)
    b = next((head.index(c) for c in ("text", "caption") if c in head), None)
    a, b, table = (a, b, table[1:]) if a is not None and b is not None else (0, 1, table)
    return {os.path.basename(os.path.normpath(r[a].strip())): r[b].strip() for r in table if r[b].strip()}

def make_csv(root, out=""):
    """Write out (default root/videos.csv): path,text,modality,num_frames,fps of every video under root. A
    top-level folder names the modality (aliases mapped, e.g. Colonoscopic -> endoscopy; others lower-cased);
    root's own files: 'unknown'. Caption: a sidecar video.txt, else its row in its folder's captions.csv, else
    the template. Files whose first frame does not decode are left out, one line each. Returns (out, rows)."""
    root = os.path.abspath(root)
    if not os.path.isdir(root):
        raise SystemExit(f"--make_csv {root}: not a folder; give the folder with one sub-folder per modality")
    out = os.path.abspath(out or os.path.join(root, "videos.csv"))
    rows, templated, captions = [], 0, {}
    for p in _videos_under(root):
        parts = os.path.relpath(p, root).split(os.sep)
        top = parts[0] if len(parts) > 1 else "unknown"
        m = canonical_modality(top) or re.sub(r"\s+", "-", top.strip().lower())
        side = (p if os.path.isdir(p) else os.path.splitext(p)[0]) + ".txt"
        if os.path.dirname(p) not in captions:
            captions[os.path.dirname(p)] = _folder_captions(os.path.dirname(p))
        text = " ".join(open(side, encoding="utf-8").read().split()) if os.path.isfile(side) else ""
        text = text or captions[os.path.dirname(p)].get(os.path.basename(p), "")
        try:
            n, fps = video_info(p)
            next(iter_frames(p, 0, fps))  # decodes (StopIteration: no frame does)
        except Exception as e:  # noqa: BLE001  any reading error, as read_video
            print(f"{_fail(p, e)}; leaving it out")
            continue
        templated += not text
        rel = os.path.relpath(p, os.path.dirname(out))
        rows.append([rel, text or align_caption(m), m, n, f"{fps:g}" if fps else ""])
    if not rows:
        raise SystemExit(f"--make_csv {root}: no readable videos ({', '.join(VIDEO_EXTS)} or frame folders)")
    with open(out, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["path", "text", "modality", "num_frames", "fps"]] + rows)
    counts = {m: sum(r[2] == m for r in rows) for m in sorted({r[2] for r in rows})}
    print(f"wrote {out}: {len(rows)} videos {counts}; {templated} without a caption got the template")
    return out, rows

# ----------------------------------------------------------------------------------------------
# what every script shares: --key=value options and --help, checkpoint files, the device

def typed_value(cls, key, text):
    """The command-line string `text` as the type of dataclass cls's field `key` (literal_eval, then a type
    check; an int is taken for a float, true/false/1/0 in any case for a bool). Unknown keys and wrong types
    are one-line errors."""
    names = [f.name for f in fields(cls)]
    if key not in names:
        guess = closest_name(key, names)
        raise SystemExit(f"unknown option --{key} (did you mean --{guess}?)" if guess else
                         f"unknown option --{key}; valid options: {', '.join(names)}")
    default = getattr(cls, key)
    if isinstance(default, str):
        return text
    if isinstance(default, bool) and text.lower() in ("true", "false", "1", "0"):
        return text.lower() in ("true", "1")  # --resume=true reads like --resume=True
    want = "true or false" if isinstance(default, bool) else f"a {type(default).__name__}"
    try:
        val = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise SystemExit(f"--{key}={text}: expected {want}")
    if isinstance(default, float) and isinstance(val, int) and not isinstance(val, bool):
        val = float(val)
    if type(val) is not type(default):
        raise SystemExit(f"--{key}={val!r}: expected {want}")
    return val

def parse_args(cls, argv, presets=None):
    """nanoGPT-style --key=value overrides of a dataclass config; presets {name: {field: value}}: the `preset`
    field names one, which fills the fields not given. -h or --help prints config_help."""
    if "-h" in argv or "--help" in argv:
        print(config_help(cls, presets))
        raise SystemExit(0)
    given = {}
    for arg in argv:
        if not arg.startswith("--") or "=" not in arg:
            raise SystemExit(f"bad argument {arg!r}: options are --key=value, e.g. --stage=align; "
                             f"--help lists them")
        key, text = arg[2:].split("=", 1)
        given[key] = typed_value(cls, key, text)
    if presets is not None:
        name = given.get("preset", getattr(cls, "preset", None))
        if name not in presets:
            raise SystemExit(f"unknown preset {name!r}: choose one of {', '.join(presets)}")
        given = {**presets[name], **given}
    return cls(**given)

def check_options(cfg, rules):
    """Stop before any work at the first option of cfg outside its rule, with one line naming it and what it
    takes. rules: {option: the tuple of words it takes, or (low, high) bounds of a number, high maybe inf}."""
    for key, rule in rules.items():
        v, (lo, hi) = getattr(cfg, key), rule[:2]
        if isinstance(lo, str) and v not in rule:
            raise SystemExit(f"--{key}={v}: use {', '.join(rule[:-1])} or {rule[-1]}")
        if not isinstance(lo, str) and not lo <= v <= hi:
            raise SystemExit(f"--{key}={v}: use a value " + (f">= {lo}" if hi == float("inf") else
                                                              f"in [{lo}, {hi}]"))

def writable_dir(path, option):
    """Make folder `path` and write in it now (not at the first checkpoint); one line naming option if not."""
    try:
        os.makedirs(path or ".", exist_ok=True)
        tempfile.TemporaryFile(dir=path or ".").close()
    except OSError as e:
        raise SystemExit(f"{option}: cannot write in {path} ({e.strerror}); give a writable folder") from None
    return path

def closest_name(key, names):
    """The valid name a mistyped option most likely meant, or None: a close spelling (difflib), else a name
    the key starts with (--lr_rate -> lr), else a looser spelling."""
    words = key.split("_")
    prefixes = ["_".join(words[:i]) for i in range(len(words) - 1, 0, -1)]
    guesses = (difflib.get_close_matches(key, names, 1, cutoff=0.8) + [p for p in prefixes if p in names]
               + difflib.get_close_matches(key, names, 1))
    return guesses[0] if guesses else None

def config_help(cls, presets=None):
    """The --help text of a dataclass config, from its source (so it cannot drift): the script's docstring,
    each field as --name=default, type, its comments, under the class's own `# group` lines; the presets."""
    src = textwrap.dedent(inspect.getsource(cls))
    body = ast.parse(src).body[0].body
    indent, field_rows = body[0].col_offset, {n.lineno for n in body if isinstance(n, ast.AnnAssign)}
    items = sorted([(n.lineno, n.col_offset, n.target.id) for n in body if isinstance(n, ast.AnnAssign)] +
                   [(*t.start, t.string) for t in tokenize.generate_tokens(io.StringIO(src).readline)
                    if t.type == tokenize.COMMENT])  # (row, column, field name or comment), in source order
    shown = lambda v: (v or "''") if isinstance(v, str) else repr(v)  # noqa: E731  a value as typed
    width = min(36, max(len(f"--{f.name}={shown(f.default)}") for f in fields(cls)))
    lines = [(sys.modules[cls.__module__].__doc__ or "").strip(), "",
             f"options (--key=value; the fields of {cls.__name__}):"]
    for row, col, text in items:
        if not text.startswith("#"):  # a field
            default = getattr(cls, text)
            lines.append(f"  {f'--{text}={shown(default)}':<{width}}  {type(default).__name__:<5}")
        elif row in field_rows:  # the comment beside a field
            lines[-1] += " " + text[1:].strip()
        elif col > indent:  # a comment line under it, indented like the one beside it
            lines.append(" " * (width + 10) + text[1:].strip())
        else:  # a group heading, as written in the class
            lines.append("  " + text)
    if presets:
        lines.append("\npresets (--preset=NAME sets these, except what the command line sets):")
        for name, values in presets.items():
            lines.append(textwrap.fill(" ".join(f"{k}={v}" for k, v in values.items()), 110,
                                       initial_indent=f"  {name:<7}", subsequent_indent=" " * 9))
    return "\n".join(line.rstrip() for line in lines)

def save_checkpoint(obj, path):
    """Write to a temp file in the same folder, then rename: a crash mid-write never corrupts `path`, and a
    failed write (a full disk, a read-only folder) is one line that deletes the temp file and keeps `path`."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        torch.save(obj, tmp)
        os.replace(tmp, path)  # atomic on POSIX and Windows
    except (OSError, RuntimeError) as e:  # torch reports a failed write as a RuntimeError
        if os.path.exists(tmp):
            os.remove(tmp)
        why = (str(e).splitlines() or [type(e).__name__])[0]
        raise SystemExit(f"cannot write checkpoint {path} ({why}): free disk space or choose a writable "
                         f"folder; the file there before is kept") from None

def load_checkpoint(path, hint="python train.py"):
    """A checkpoint dict, loaded on the CPU with weights_only=True; a missing or bad file is one line."""
    if not os.path.isfile(path):
        raise SystemExit(f"no checkpoint at {path}: make it with `{hint}` or pass the right path")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise SystemExit(f"cannot read checkpoint {path} ({type(e).__name__}): the file is corrupt or "
                         f"not a medvid checkpoint")

def pick_device(name="auto"):
    """'auto' -> cuda if a GPU is visible, else cpu; cpu, cuda or cuda:N as given if that device exists."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not re.fullmatch(r"cpu|cuda(:\d+)?", name):
        raise SystemExit(f"--device={name}: use auto, cpu, cuda or cuda:N")
    if name != "cpu" and int(name[5:] or 0) >= torch.cuda.device_count():
        raise SystemExit(f"--device={name}: {torch.cuda.device_count()} CUDA GPU(s) here; use cpu or auto")
    return name

if __name__ == "__main__":
    args, argv = {}, sys.argv[1:]
    while argv:
        key, _, val = argv.pop(0).partition("=")
        if key == "--make_csv" and not val and argv:
            val = argv.pop(0)                                  # `--make_csv DIR` as well as `--make_csv=DIR`
        if key not in ("--out_dir", "--make_csv", "--out") or not val:
            raise SystemExit(f"unknown argument {key}: use --out_dir=DIR (synthetic previews) or "
                             f"--make_csv DIR [--out=FILE]")
        args[key] = val
    if "--make_csv" in args:
        make_csv(args["--make_csv"], args.get("--out", ""))
        sys.exit()
    out_dir = args.get("--out_dir", "out/data_preview")
    rows32, rows64 = [], []
    for m in MODALITIES:
        frames, caption, attrs = render_synthetic(m, seed=0, size=64)
        print(f"{save_video(os.path.join(out_dir, m + '.png'), frames)}: {caption}  {attrs}")
        rows64.append(frames)
        rows32.append(render_synthetic(m, seed=0, size=32)[0].repeat(2, 1).repeat(2, 2))  # (F, 64, 64, 3)
    for name, rows in [("synthetic_preview.png", rows64), ("synthetic_preview_32.png", rows32)]:
        print(save_video(os.path.join(out_dir, name), np.concatenate(rows, axis=1)))  # (F, 5*64, 64, 3)
    times = []
    for k in range(50):
        t0 = time.perf_counter()
        render_synthetic(MODALITIES[k % len(MODALITIES)], seed=k, num_frames=17, size=32)
        times.append(time.perf_counter() - t0)
    print(f"render_synthetic: {1000 * np.median(times):.2f} ms/clip (median of 50, 32 px, 17 frames)")
