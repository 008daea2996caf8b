"""Modalities of images whose meta.csv does not give one, classified once per file.

:func:`classify_samples` fills ``Sample.modality`` (``utils.datasplits.Sample``) with
``utils.modality.classify_modality`` of the raw image; results are memoised per (path, size, mtime)
in this process and, given a cache folder, in ``cache_dir/modalities.json`` for later runs.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from tqdm import tqdm

from utils import io as uio
from utils.modality import classify_modality

LOGGER = logging.getLogger(__name__)

MODALITY_CACHE_FILE = "modalities.json"
# Fewer images than this are classified without a progress bar.
PROGRESS_MIN_IMAGES = 32

_MODALITY_MEMO: dict[str, str] = {}


def classify_raw(raw: np.ndarray) -> str:
    """Modality of a raw image (a seam for tests)."""
    return classify_modality(raw)


def classify_samples(samples: list, cache_dir=None) -> None:
    """Fill ``sample.modality`` where None with ``classify_modality`` of the raw image, in place.

    Results are memoised per (path, size, mtime) in this process and, when ``cache_dir`` is
    given, in ``cache_dir/modalities.json``. Unreadable images are warned about and stay None.
    """
    todo = [s for s in samples if s.modality is None]
    if not todo:
        return
    store = Path(cache_dir) / MODALITY_CACHE_FILE if cache_dir is not None else None
    if store is not None and store.is_file():
        try:
            _MODALITY_MEMO.update(json.loads(store.read_text()))
        except (OSError, ValueError):
            LOGGER.warning("%s: unreadable modality cache, recomputing", store)
    bad, new = [], False
    for s in tqdm(todo, desc="Classifying modalities", disable=len(todo) < PROGRESS_MIN_IMAGES):
        key = uio.file_key(s.image)
        if key not in _MODALITY_MEMO:
            try:
                _MODALITY_MEMO[key], new = classify_raw(uio.read_image(s.image)), True
            except uio.InputError as exc:
                bad.append(str(exc))
                continue
        s.modality = _MODALITY_MEMO[key]
    uio.warn_names(LOGGER, "images whose modality could not be computed", bad)
    if store is not None and new:
        with uio.atomic_write(store) as tmp:
            tmp.write_text(json.dumps(_MODALITY_MEMO))
