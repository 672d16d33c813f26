"""Slide -> tissue -> patch and region grids -> tiles -> encoder -> one HDF5 file.

:func:`extract_slide` is what prediction, the viewer and ``napari-hila
extract`` call. It is cached (a second call on the same slide and settings
returns at once), resumable (patch features are checkpointed every few
batches), cancellable between batches, and safe when two processes start on
the same slide (the second waits for the first, then reuses its file).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

from napari_hila.encoders.preprocess import PREPROCESS_VERSION
from napari_hila.errors import Cancelled, FeatureFileError, HilaError, SlideError
from napari_hila.features.cache import (
    PartialFeatures,
    adopt_cached,
    cache_path,
    cached_copies,
    settings_key,
    slide_lock,
)
from napari_hila.features.pooling import mean_per_region
from napari_hila.features.store import SlideFeatures, load_features, save_features
from napari_hila.features.tile_reader import (
    DEFAULT_PREFETCH,
    DEFAULT_READ_THREADS,
    iter_tile_batches,
)
from napari_hila.slides.grids import PATCH_PX, REGION_PX, TARGET_MPP

Progress = Callable[[str, float], None]
DEFAULT_ENCODER = "hila-descriptor"
REGION_MODES = ("view", "mean")
CHECKPOINT_EVERY = 8  # batches between writes of the partial file


@functools.lru_cache(maxsize=4)
def _vision_encoder(name: str, weights: str | None, device: str, precision: str | None):
    from napari_hila.encoders import get_vision_encoder
    from napari_hila.encoders.vit import resolve_precision

    encoder = get_vision_encoder(name, weights=weights, device=device)
    if hasattr(encoder, "dtype"):  # a network: the dtype its matrix products run in
        encoder.dtype = resolve_precision(precision, encoder.device)
    return encoder


def vision_encoder(
    name: str,
    weights: str | os.PathLike | None = None,
    device: str = "auto",
    precision: str | None = None,
):
    """A loaded vision encoder, reused across slides within a process (keyed by its weights).

    ``precision`` (float32, bfloat16, float16; default ``$NAPARI_HILA_PRECISION`` or
    auto: mixed precision on a GPU, float32 on the CPU) is what a network runs in.
    """
    from napari_hila.encoders.registry import resolve_weights

    weights = resolve_weights(name, weights)  # the encoders config's entry, read now
    return _vision_encoder(
        name, str(weights) if weights else None, str(device), requested_precision(precision)
    )


def check_encoders_load(
    encoder: str,
    weights: str | os.PathLike | None = None,
    region_encoder: str | None = None,
    region_weights: str | os.PathLike | None = None,
    device: str = "auto",
    region_mode: str = "view",
    precision: str | None = None,
) -> None:
    """Load the encoders an extraction of many slides will use, once, before any slide.

    Weights that do not load (another model's, pickled, a tokenizer-less pair) then
    fail with one message instead of once per slide; the loaded encoders stay in
    this process's cache for the extraction itself.
    """
    vision_encoder(encoder, weights, device, precision)
    if region_mode == "view" and region_encoder not in (None, encoder):
        vision_encoder(region_encoder, region_weights or weights, device, precision)


def requested_precision(precision: str | None = None) -> str | None:
    """The precision a user asked for (argument, then ``$NAPARI_HILA_PRECISION``); None: auto."""
    from napari_hila.encoders.vit import PRECISION_ENV, resolve_precision

    choice = (precision or os.environ.get(PRECISION_ENV) or "auto").lower()
    if choice == "auto":
        return None
    resolve_precision(choice, torch.device("cpu"))  # an unknown name fails here, before any slide
    return choice


def ran_in(encoder) -> dict[str, str]:
    """What a feature file records of how ``encoder`` ran: dtype, device, preprocessing."""
    dtype = getattr(encoder, "dtype", None)
    preprocessing = getattr(encoder, "preprocessing", None)
    return {
        "dtype": str(dtype).removeprefix("torch.") if dtype is not None else "float32",
        "device": str(getattr(encoder, "device", None) or "cpu"),
        "preprocessing": json.dumps(preprocessing.to_dict()) if preprocessing else "",
    }


def _weights_version(encoder: str, weights, device: str, wanted: str | None) -> str:
    """The version (weights digest) the features must have: ``wanted``, or that of the weights.

    A missing weights file fails here, before any slide is opened; with neither weights nor
    ``wanted`` the encoder's own loader says what to pass.
    """
    from napari_hila.encoders import EncoderError, encoder_version
    from napari_hila.encoders.registry import resolve_weights

    found = encoder_version(encoder, weights)
    if wanted and found and found != wanted:
        raise EncoderError(
            f"{resolve_weights(encoder, weights)}: these {encoder} weights are {found}, but "
            f"features of weights {wanted} are wanted (the model was trained on those); give "
            "the weights the model was trained with"
        )
    version = wanted or found
    if version is None:
        vision_encoder(encoder, weights, device)  # raises: which weights to pass, and how
    return str(version)


THREADS_ENV = "NAPARI_HILA_THREADS"  # cores one extraction may use (a Dask worker's share)


def available_cores() -> int:
    """CPU cores this process may run on, or its share of them when ``NAPARI_HILA_THREADS``
    says so (local Dask workers get cores / workers)."""
    if hasattr(os, "sched_getaffinity"):
        available = max(1, len(os.sched_getaffinity(0)))
    else:
        available = os.cpu_count() or 1
    share = os.environ.get(THREADS_ENV, "").strip()
    if share.isdigit() and int(share) > 0:
        return min(available, int(share))
    return available


def encodes_in_reader_threads(encoder) -> bool:
    """Whether ``encoder`` runs inside the tile reader threads, one core each.

    Encoders that say so (``thread_parallel = True``: stateless, releasing the
    GIL, one core per caller, such as the weight-free descriptor) encode each batch in
    the thread that decoded it, so all cores alternate between decoding and
    encoding. Networks keep one encoder thread with intra-op parallelism (and
    one copy of their activations).
    """
    device = getattr(encoder, "device", None)
    on_cpu = device is None or torch.device(device).type == "cpu"
    return on_cpu and bool(getattr(encoder, "thread_parallel", False))


def read_threads_for(encoder) -> int:
    """Tile reader threads to run beside (or, see above, with) ``encoder``.

    An encoder that runs in the reader threads gets one per core. Another CPU
    encoder shares the cores with the readers (on 2 cores: one reader, one
    encoder thread); a third busy thread on 2 cores only adds switching and
    cache misses. An accelerator leaves every core to the readers.
    """
    if encodes_in_reader_threads(encoder):
        return available_cores()
    device = getattr(encoder, "device", None)
    if device is not None and torch.device(device).type != "cpu":
        return max(DEFAULT_READ_THREADS, available_cores())
    return max(1, available_cores() // 2)


def encoded_batches(
    slide,
    coords: np.ndarray,
    size: int,
    out_px: int,
    encoder,
    batch_size: int = 64,
    *,
    start: int = 0,
    prefetch: int = DEFAULT_PREFETCH,
    stop: threading.Event | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(first_index, features)`` of the tiles at ``coords``, in order.

    The one place tiles meet an encoder: patches, regions and coarser
    magnifications all come through here, with the thread layout above.
    """
    in_readers = encodes_in_reader_threads(encoder)
    batches = iter_tile_batches(
        slide,
        coords,
        size,
        out_px,
        batch_size,
        start=start,
        threads=read_threads_for(encoder),
        prefetch=prefetch,
        stop=stop,
        transform=encoder.encode if in_readers else None,
    )
    try:
        with cpu_threads_for_encoder(read_threads_for(encoder)):
            for first, batch in batches:
                yield first, batch if in_readers else encoder.encode(batch)
    finally:
        batches.close()


@contextlib.contextmanager
def cpu_threads_for_encoder(read_threads: int = DEFAULT_READ_THREADS) -> Iterator[None]:
    """Leave CPU cores to the tile readers while the encoder runs on the CPU.

    Decoding JPEG tiles and running the encoder compete for the same cores; on a
    small machine torch's default (all cores) makes both wait on each other.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, min(previous, available_cores() - read_threads)))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _check_writable(folder: Path) -> None:
    """Fail before any work when the output folder cannot be written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # per thread too: two extractions in one process must not delete each other's probe
        probe = folder / f".write-test-{os.getpid()}-{threading.get_ident()}"
        probe.touch()
        probe.unlink()
    except OSError as err:
        raise FeatureFileError(
            f"{folder}: cannot write feature files here ({err.strerror or err}); "
            "choose another folder (--out, or NAPARI_HILA_CACHE, the cache root, for the viewer)"
        ) from err


def _report(progress: Progress | None, stage: str, fraction: float) -> None:
    if progress is not None:
        progress(stage, float(min(max(fraction, 0.0), 1.0)))


def _check_cancel(cancel: threading.Event | None, what: str) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled(what)


def _cache_is_valid(path: Path, expected: dict) -> bool:
    """True when ``path`` holds features made with exactly ``expected`` attributes."""
    if not path.is_file():
        return False
    try:
        with h5py.File(path, "r") as h5:
            attrs = {k: h5.attrs.get(k) for k in expected}
            complete = "features" in h5 and "region_features" in h5
    except OSError:
        return False

    def equal(found, wanted) -> bool:
        if found is None:
            return False
        if isinstance(wanted, float):
            return bool(np.isclose(float(found), wanted))
        return str(found.decode() if isinstance(found, bytes) else found) == str(wanted)

    return complete and all(equal(attrs[k], v) for k, v in expected.items())


def encode_patches(
    slide,
    grids,
    encoder,
    target: Path,
    key: str,
    batch_size: int,
    progress: Progress | None,
    cancel: threading.Event | None,
) -> np.ndarray:
    """Features of every grid patch, resuming from and checkpointing to the partial file."""
    coords = grids.patch_coords
    total = len(coords)
    partial = PartialFeatures(target, coords, int(encoder.output_dim), key)
    try:
        done = partial.done
        _report(progress, "tiles", done / max(total, 1))
        batches = encoded_batches(
            slide,
            coords,
            grids.patch_size,
            grids.patch_px,
            encoder,
            batch_size,
            start=done,
            stop=cancel,
        )
        since = 0
        for start, batch_features in batches:
            if cancel is not None and cancel.is_set():
                batches.close()
                partial.checkpoint(done)
                raise Cancelled(
                    f"{slide.path}: extraction cancelled after {done} of {total} patches; "
                    "run it again to resume"
                )
            partial.write(start, batch_features)
            done = start + len(batch_features)
            since += 1
            if since >= CHECKPOINT_EVERY:
                partial.checkpoint(done)
                since = 0
            _report(progress, "tiles", done / max(total, 1))
        partial.checkpoint(done)
        if done < total:  # the reader stopped early: only a cancel does that
            raise Cancelled(
                f"{slide.path}: extraction cancelled after {done} of {total} patches; "
                "run it again to resume"
            )
        features = partial.read_done()
    finally:
        partial.close()
    return features


def encode_regions(
    slide,
    grids,
    encoder,
    batch_size: int,
    progress: Progress | None,
    cancel: threading.Event | None,
) -> np.ndarray:
    """Each region seen whole at low magnification, resized to the encoder's input."""
    out_px = int(getattr(encoder, "input_size", None) or grids.patch_px)
    parts = []
    total = max(grids.num_regions, 1)
    for start, batch_features in encoded_batches(
        slide,
        grids.region_coords,
        grids.region_size,
        out_px,
        encoder,
        batch_size=min(batch_size, 8),
        prefetch=2,
        stop=cancel,
    ):
        _check_cancel(cancel, f"{slide.path}: extraction cancelled while encoding regions")
        parts.append(batch_features)
        _report(progress, "features", (start + len(batch_features)) / total)
    if not parts:
        return np.zeros((0, int(encoder.output_dim)), np.float32)
    return np.concatenate(parts).astype(np.float32)


@dataclass(frozen=True)
class _Request:
    """One extraction's arguments, checked once: what keys the cache and how to encode."""

    slide_path: Path
    encoder: str
    region_encoder: str | None
    weights: str | os.PathLike | None
    region_weights: str | os.PathLike | None
    device: str
    precision: str | None  # asked for explicitly (networks only); None: auto
    region_mode: str
    patch_px: int
    region_px: int
    target_mpp: float
    scales: tuple[str, ...] | None  # extra magnifications, coarsest first
    settings: dict  # what names the cache file (features.cache.cache_path)
    version: str  # the patch encoder's weights digest (or its own version)
    networks: bool  # the patch encoder has weights

    @property
    def region_name(self) -> str:
        """The ``region_encoder`` a feature file records."""
        if self.region_mode != "view":
            return f"mean({self.encoder})"
        return self.settings["region_encoder"] or self.encoder

    def load_encoders(self):
        """(patch encoder, region encoder or None for "mean" regions), loaded once per process."""
        patch = vision_encoder(self.encoder, self.weights, self.device, self.precision)
        if self.region_mode != "view":
            return patch, None
        if not self.settings["region_encoder"]:
            return patch, patch
        region_weights = self.region_weights or self.weights
        return patch, vision_encoder(
            self.region_encoder, region_weights, self.device, self.precision
        )

    def expected_attrs(self, fingerprint: str, slide_mpp: float) -> dict:
        """The attributes a cached file must have to be reused for this request."""
        expected = {
            "encoder": self.encoder,
            "encoder_version": self.version,
            "region_encoder": self.region_name,
            "patch_px": self.patch_px,
            "region_px": self.region_px,
            "target_mpp": self.target_mpp,
            "slide_fingerprint": fingerprint,
            "mpp": float(slide_mpp),
        }
        if self.networks:  # files from before the owners' preprocessing (bilinear) are not reused
            expected["preprocess_version"] = PREPROCESS_VERSION
        if self.precision:
            expected["encoder_dtype"] = self.precision
        return expected


def _request(
    slide_path,
    *,
    encoder,
    region_encoder,
    weights,
    region_weights,
    device,
    patch_px,
    region_px,
    target_mpp,
    region_mode,
    magnifications,
    mpp,
    encoder_version,
    precision,
) -> _Request:
    """Check the arguments (before any slide is opened) and work out the cache settings."""
    from napari_hila.encoders.registry import get_encoder_spec
    from napari_hila.slides import check_mpp

    if region_mode not in REGION_MODES:
        raise ValueError(f"region_mode must be one of {REGION_MODES}, not {region_mode!r}")
    scales = None
    if magnifications:
        from napari_hila.features.multiscale import check_magnifications, parse_magnification

        scales = tuple(sorted(set(magnifications), key=parse_magnification))
        check_magnifications(scales, target_mpp)
    settings = {
        "patch_px": int(patch_px),
        "region_px": int(region_px),
        "target_mpp": float(target_mpp),
        "region_encoder": region_encoder if region_encoder not in (None, encoder) else None,
        "region_mode": region_mode,
        "magnifications": ",".join(scales) if scales else None,
        # a user's pixel size: None keeps the file's (or the assumed) one and its cache name
        "mpp": check_mpp(mpp, f"{slide_path}: mpp") if mpp is not None else None,
    }
    # the weights' digest keys the cache, so the encoder loads only on a miss
    version = _weights_version(encoder, weights, device, encoder_version)
    networks = get_encoder_spec(encoder).needs_weights
    settings["weights"] = version if networks else None
    precision = requested_precision(precision) if networks else None
    if precision:  # asked for: its own file; auto keeps the name (and reuses either dtype)
        settings["precision"] = precision
    if (
        region_mode == "view"
        and settings["region_encoder"]
        and get_encoder_spec(region_encoder).needs_weights
    ):
        settings["region_weights"] = _weights_version(
            region_encoder, region_weights or weights, device, None
        )
    return _Request(
        slide_path=Path(slide_path),
        encoder=encoder,
        region_encoder=region_encoder,
        weights=weights,
        region_weights=region_weights,
        device=device,
        precision=precision,
        region_mode=region_mode,
        patch_px=int(patch_px),
        region_px=int(region_px),
        target_mpp=float(target_mpp),
        scales=scales,
        settings=settings,
        version=version,
        networks=networks,
    )


def _cached_file(target: Path, fingerprint: str, expected: dict) -> Path | None:
    """A complete file for ``expected`` at ``target`` or under a renamed copy's stem.

    A complete file is only ever renamed into place, so it is read without a
    lock or a write probe (a read-only cache serves); a renamed copy's file is
    adopted under ``target``'s name.
    """
    for found in cached_copies(target, fingerprint):
        if _cache_is_valid(found, expected):
            return adopt_cached(found, target)
    return None


def _tissue_grids(slide, request: _Request, progress, cancel):
    """The slide's patch and region grids over its tissue; no tissue is one clear error."""
    from napari_hila.slides import detect_tissue, make_grids

    _report(progress, "tissue", 0.0)
    grids = make_grids(
        slide, detect_tissue(slide), request.patch_px, request.region_px, request.target_mpp
    )
    _report(progress, "tissue", 1.0)
    if grids.num_patches == 0:
        raise SlideError(
            f"{slide.path}: no tissue found (0 patches at {request.target_mpp} um/px); check that "
            "the slide is a stained tissue section, or lower --target-mpp for tiny samples"
        )
    _check_cancel(cancel, f"{slide.path}: extraction cancelled")
    return grids


def _encode_slide(
    slide, request: _Request, target: Path, expected: dict, batch_size, progress, cancel, started
) -> SlideFeatures:
    """Load the encoders, find the tissue, encode patches, regions and extra magnifications.

    ``started`` (``time.perf_counter()`` when the extraction began) times it in the file.
    """
    patch_enc, region_enc = request.load_encoders()
    grids = _tissue_grids(slide, request, progress, cancel)
    ran = ran_in(patch_enc)
    # a partial file of another dtype (a GPU run resumed on a CPU) is not resumed
    key = settings_key({**expected, **request.settings, "dtype": ran["dtype"]})
    features = encode_patches(slide, grids, patch_enc, target, key, batch_size, progress, cancel)
    if region_enc is None:
        region_features = mean_per_region(features, grids.patch_to_region, grids.num_regions)
    else:
        region_features = encode_regions(slide, grids, region_enc, batch_size, progress, cancel)
    feats = SlideFeatures(
        features=features,
        coords=grids.patch_coords,
        region_features=region_features,
        region_coords=grids.region_coords,
        patch_to_region=grids.patch_to_region,
        attrs=_file_attrs(
            expected, request, slide, grids, (patch_enc, region_enc), (features, region_features)
        ),
    )
    feats.attrs["extraction_seconds"] = round(time.perf_counter() - started, 3)
    feats.extras["patch_tissue"] = grids.patch_tissue
    if request.scales:
        from napari_hila.features.multiscale import add_magnifications

        add_magnifications(feats, slide, grids, patch_enc, request.scales, batch_size, cancel)
    return feats


def _file_attrs(expected, request: _Request, slide, grids, encoders, features) -> dict:
    """What a feature file records: the cache's attributes, how the encoders ran, the grid.

    ``encoders`` and ``features`` are (patch, region) pairs; the region encoder is
    None for regions averaged from their patches.
    """
    (patch_enc, region_enc), (patch_features, region_features) = encoders, features
    ran = ran_in(patch_enc)
    separate_region_encoder = region_enc is not None and region_enc is not patch_enc
    return {
        **expected,
        "region_encoder_version": str(getattr(region_enc, "version", patch_enc.version)),
        "region_mode": request.region_mode,
        "encoder_dtype": ran["dtype"],
        "encoder_device": ran["device"],
        "encoder_preprocessing": ran["preprocessing"],
        **(
            {"region_encoder_dtype": ran_in(region_enc)["dtype"]} if separate_region_encoder else {}
        ),
        "feature_dim": int(patch_features.shape[1]),
        "region_feature_dim": int(region_features.shape[1]),
        "patch_size": int(grids.patch_size),
        "region_size": int(grids.region_size),
        "mpp": float(grids.mpp),
        "mpp_is_assumed": bool(slide.mpp_is_assumed),
        "mpp_source": slide.mpp_source,
        "min_tissue": float(grids.min_tissue),
        "slide_path": str(request.slide_path.resolve()),
        "feature_names": json.dumps(list(getattr(patch_enc, "feature_names", ()))),
    }


def _save(target: Path, feats: SlideFeatures) -> None:
    """Write the feature file and drop the partial one; a failed write frees what it took."""
    try:
        save_features(target, feats)
    except HilaError:  # a full or read-only disk: free what this run took there
        PartialFeatures.discard(target)
        raise
    except OSError as err:
        PartialFeatures.discard(target)
        raise FeatureFileError(
            f"{target}: cannot write the feature file ({err}); free disk space or "
            "choose another output folder"
        ) from err
    PartialFeatures.discard(target)


def extract_slide(
    slide_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    encoder: str = DEFAULT_ENCODER,
    region_encoder: str | None = None,
    weights: str | os.PathLike | None = None,
    device: str = "auto",
    patch_px: int = PATCH_PX,
    region_px: int = REGION_PX,
    target_mpp: float = TARGET_MPP,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
    *,
    region_weights: str | os.PathLike | None = None,
    region_mode: str = "view",
    magnifications: tuple[str, ...] | None = None,
    batch_size: int = 64,
    mpp: float | None = None,
    encoder_version: str | None = None,
    precision: str | None = None,
) -> Path:
    """Extract (or find cached) features of one slide; returns the HDF5 path.

    ``progress(stage, fraction)`` reports stages "tissue", "tiles" (patches) and
    "features" (regions, saving); ``cancel`` is checked between batches and
    raises :class:`~napari_hila.errors.Cancelled`, keeping finished patches
    for the next run. ``region_mode`` "view" encodes each region whole at low
    magnification with ``region_encoder`` (default: the patch encoder); "mean"
    averages the region's patch features instead. ``mpp`` (um/px at level 0)
    overrides or supplies the slide's pixel size; it sizes the tiles, so it is
    part of the cache key (features made with an assumed mpp are not reused).
    The weights' digest is part of the key and of the file's name too, and the
    encoder is loaded only when no cached file fits; ``encoder_version`` (a model
    card's digest) finds cached features of those weights without any weights at hand.
    The file records the dtype, device and preprocessing the encoder ran with
    (``encoder_dtype``, ``encoder_device``, ``encoder_preprocessing``). ``precision``
    (or ``$NAPARI_HILA_PRECISION``) asked for explicitly is part of the key and the
    name; a file made under "auto" (mixed precision on a GPU, float32 on the CPU) is
    reused under auto whatever dtype it ran in (a GPU's bfloat16 file on a laptop), as
    the embeddings agree within the measured tolerance (tests/test_encoders_vl.py).
    """
    from napari_hila.slides import open_slide  # looked up when run: tests guard against reads

    request = _request(
        slide_path,
        encoder=encoder,
        region_encoder=region_encoder,
        weights=weights,
        region_weights=region_weights,
        device=device,
        patch_px=patch_px,
        region_px=region_px,
        target_mpp=target_mpp,
        region_mode=region_mode,
        magnifications=magnifications,
        mpp=mpp,
        encoder_version=encoder_version,
        precision=precision,
    )
    started = time.perf_counter()
    with open_slide(slide_path, mpp=request.settings["mpp"]) as slide:
        fingerprint = slide.fingerprint()
        stem = Path(slide_path).stem.removesuffix(".ome")
        target = cache_path(out_dir, stem, fingerprint, encoder, request.settings)
        expected = request.expected_attrs(fingerprint, slide.mpp)
        cached = _cached_file(target, fingerprint, expected)
        if cached is not None:
            _report(progress, "features", 1.0)
            return cached
        _check_writable(Path(out_dir))
        with slide_lock(target):
            if _cache_is_valid(target, expected):  # another process just finished it
                _report(progress, "features", 1.0)
                return target
            feats = _encode_slide(
                slide, request, target, expected, batch_size, progress, cancel, started
            )
            _check_cancel(cancel, f"{slide.path}: extraction cancelled before saving")
            _save(target, feats)
            _report(progress, "features", 1.0)
    return target


def load_or_extract(
    slide_path: str | os.PathLike, cache_dir: str | os.PathLike, **kwargs
) -> SlideFeatures:
    """Features of ``slide_path`` from the cache, extracting them first if needed.

    Takes the keyword arguments of :func:`extract_slide`.
    """
    path = extract_slide(slide_path, cache_dir, **kwargs)
    feats = load_features(path)
    feats.attrs["feature_file"] = str(path)
    return feats
