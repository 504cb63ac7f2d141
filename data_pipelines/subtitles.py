"""TVR's word-level subtitles: the subtitle jsonl and the token-feature h5 aligned into
:class:`~data_pipelines.records.SubtitleWords` (clip <-> sentence <-> word), every
misalignment counted.

Files (jayleicn/TVRetrieval):

* ``data/tvqa_preprocessed_subtitles.jsonl``: one line per video ``{"vid_name": str, "sub":
  [{"text": str, "start": s, "end": s}, ...]}``, sentences in ``.srt`` order
  (``utils/text_feature/preprocess_subtitles.py``).
* the token features, ``tvr_sub_pretrained_w_sub_query.h5`` (the name in
  ``extract_single_sentence_embeddings.sh``): ``f[vid_name]`` ``float32 [N, 768]``, RoBERTa
  features of the video's sentences' tokens, concatenated in order, special tokens removed;
  ``f[vid_name + "-lengths"]`` ``int16 [n]``, the tokens of each sentence,
  ``len(tokenizer.tokenize(text))`` (``lm_finetuning_on_single_sentences.py``:
  ``chunk_single_sub``, ``assemble_chunked_sub_embeddings``).

Alignment rule, per video (the sentences of the jsonl, the rows of the h5):

1. Token counts: sentence ``i`` has ``c_i = lengths[i]``, the extractor's own tokenisation.
   A file without ``-lengths`` entries needs ``token_counter`` (e.g. RoBERTa's
   ``lambda t: len(tokenizer.tokenize(t))``) and uses ``c_i = token_counter(text_i)``; with
   neither it is a :class:`DataError`.  With both, each sentence whose ``lengths[i]`` differs
   from ``token_counter(text_i)`` is counted (``lengths`` kept).
2. Rows: sentence ``i`` takes rows ``[c_0 + .. + c_{i-1}, c_0 + .. + c_i)``.  The official
   chunker can leave a video's last sentences out of the h5 (TVRetrieval logs 158 videos with
   1-4 sentences fewer): sentences past ``len(lengths)`` keep their times and get no word.
   Lengths past the jsonl's sentences, and rows past ``sum(c)``, are *tokens without a
   sentence*: dropped.  When ``sum(c) > N`` the sentences whose rows run past ``N`` are cut
   short.  Each case is counted.
3. Times (``video2dur_idx`` durations): ``start``/``end`` must be finite numbers with ``end >=
   start`` (else :class:`DataError` naming file, line, sentence and field); ``start < 0`` is
   clamped to 0, ``end > duration`` to the duration; a sentence starting at or after the
   video's end is dropped with its tokens.  Each counted.
4. No subtitle: a video absent from the jsonl or with ``"sub": []`` gets an empty word list
   (counted; its h5 rows, if any, are tokens without a sentence).  A video with sentences but
   no h5 entry keeps its sentences without words (counted); when no video with sentences has
   an entry the h5 is the file of another dataset: :class:`DataError`.

Counts go to a :class:`SubtitleReport` (``summary()`` dict, one log line), never dropped
silently.  Bad input -- malformed JSON, a missing field, a repeated ``vid_name``, non-2-D or
non-finite features, negative lengths, features of differing widths -- is a
:class:`DataError` naming the file, the line or key, and the field.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np

from data_pipelines.annotations import EMPTY_FILE, TRUNCATED, DataError, ends_inside
from data_pipelines.records import SubtitleWords

logger = logging.getLogger(__name__)

Sentence = tuple[float, float, str]  # (start s, end s, text)

NO_SUBTITLE = "videos without subtitles (empty word list)"
NO_TOKEN_FEATURES = "sentences of videos absent from the token file (kept without words)"
SENTENCE_WITHOUT_TOKENS = "sentences past the token lengths (kept without words)"
TOKENS_WITHOUT_SENTENCE = "tokens without a sentence (dropped)"
MISSING_ROWS = "token rows missing from the feature array (sentences cut short)"
COUNT_DIFFERS = "sentences whose token length differs from the text's tokenisation"
START_CLAMPED = "sentences starting before 0 s (start clamped to 0)"
END_CLAMPED = "sentences ending after the video (end clamped to the duration)"
AFTER_VIDEO = "sentences starting at or after the video's end (dropped)"
AFTER_VIDEO_TOKENS = "tokens of sentences after the video's end (dropped)"


class SubtitleReport:
    """What the alignment kept and every fallback: ``{reason: count}`` with the videos."""

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        self.videos: dict[str, list[str]] = collections.defaultdict(list)
        self.kept = {"videos": 0, "sentences": 0, "words": 0}

    def add(self, reason: str, video_id: str, count: int = 1) -> None:
        if count:
            self.counts[reason] += int(count)
            self.videos[reason].append(video_id)

    def keep(self, words: SubtitleWords) -> None:
        self.kept["videos"] += 1
        self.kept["sentences"] += words.num_sentences
        self.kept["words"] += words.num_words

    def summary(self) -> dict[str, object]:
        """``{"videos", "sentences", "words": kept, "fallbacks": {reason: {"count",
        "videos", "examples"}}}``."""
        return {
            **self.kept,
            "fallbacks": {
                reason: {
                    "count": n,
                    "videos": len(set(self.videos[reason])),
                    "examples": sorted(set(self.videos[reason]))[:3],
                }
                for reason, n in sorted(self.counts.items())
            },
        }

    def log(self, name: str) -> None:
        """One line: kept numbers, then every fallback's count (a warning if any)."""
        parts = [
            f"{n} {reason} ({len(set(self.videos[reason]))} videos)"
            for reason, n in sorted(self.counts.items())
        ]
        line = (
            f"subtitles {name}: kept {self.kept['videos']} videos, {self.kept['sentences']} "
            f"sentences, {self.kept['words']} words; " + ("; ".join(parts) or "no fallback")
        )
        (logger.warning if parts else logger.info)(line)


# --------------------------------------------------------------------------- files
def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def read_subtitle_jsonl(path: str | os.PathLike) -> dict[str, tuple[int, list[Sentence]]]:
    """``{vid_name: (line number, [(start, end, text), ...])}`` of the subtitle jsonl."""
    source = str(path)
    if not Path(path).is_file():
        raise DataError(source, None, None, "no such subtitle file")
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    if not any(line.strip() for line in lines):
        raise DataError(source, None, None, EMPTY_FILE)
    out: dict[str, tuple[int, list[Sentence]]] = {}
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"line {lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            cut = lineno == len(lines) and not line.endswith("\n") and ends_inside(line, err)
            problem = f"{TRUNCATED}: {err.msg}" if cut else f"malformed JSON: {err.msg}"
            raise DataError(source, where, None, problem) from err
        if not isinstance(obj, dict):
            raise DataError(source, where, None, f"expected an object, got {type(obj).__name__}")
        for name in ("vid_name", "sub"):
            if name not in obj:
                raise DataError(source, where, name, "missing")
        vid, subs = obj["vid_name"], obj["sub"]
        if not isinstance(vid, str) or not vid:
            raise DataError(source, where, "vid_name", f"expected a non-empty string: {vid!r}")
        if vid in out:
            raise DataError(source, where, "vid_name", f"{vid!r} repeats line {out[vid][0]}")
        if not isinstance(subs, list):
            raise DataError(source, where, "sub", f"expected a list, got {type(subs).__name__}")
        where = f"line {lineno} (video {vid!r})"
        sentences = []
        for i, sub in enumerate(subs):
            if not isinstance(sub, dict):
                raise DataError(source, where, f"sub[{i}]", "expected an object")
            for name in ("start", "end", "text"):
                if name not in sub:
                    raise DataError(source, where, f"sub[{i}].{name}", "missing")
            start, end, text = sub["start"], sub["end"], sub["text"]
            for name, value in (("start", start), ("end", end)):
                if not _number(value) or not math.isfinite(value):
                    raise DataError(source, where, f"sub[{i}].{name}", f"not a number: {value!r}")
            if end < start:
                raise DataError(source, where, f"sub[{i}].end", f"end {end} < start {start}")
            if not isinstance(text, str):
                raise DataError(source, where, f"sub[{i}].text", f"expected a string: {text!r}")
            sentences.append((float(start), float(end), text))
        out[vid] = (lineno, sentences)
    return out


class TokenFeatureFile:
    """The token-feature h5: ``get(vid) -> (features [N, D] | None, lengths [n] | None)``."""

    def __init__(self, path: str | os.PathLike):
        import h5py

        self.path = str(path)
        if not os.path.isfile(self.path):
            raise DataError(self.path, None, None, "no such token feature file")
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as err:
            raise DataError(self.path, None, None, f"not a readable HDF5 file: {err}") from err
        self.dim: int | None = None

    def keys(self) -> set[str]:
        return {k for k in self._file.keys() if not k.endswith("-lengths")}

    def shape(self, vid: str) -> tuple[int, ...]:
        return tuple(self._file[vid].shape)

    def get(self, vid: str) -> tuple[np.ndarray | None, np.ndarray | None]:
        if vid not in self._file:
            return None, None
        where = f"key {vid!r}"
        feats = np.asarray(self._file[vid][()])
        if feats.ndim != 2 or not np.issubdtype(feats.dtype, np.floating):
            problem = f"expected float [N, D], got {feats.dtype} {feats.shape}"
            raise DataError(self.path, where, "features", problem)
        if self.dim is not None and feats.shape[1] != self.dim:
            problem = f"width {feats.shape[1]}, other videos {self.dim}"
            raise DataError(self.path, where, "features", problem)
        self.dim = feats.shape[1]
        bad = ~np.isfinite(feats)
        if bad.any():
            row = int(np.argwhere(bad)[0][0])
            raise DataError(self.path, where, "features", f"non-finite values, first in row {row}")
        lengths = None
        if vid + "-lengths" in self._file:
            lengths = np.asarray(self._file[vid + "-lengths"][()])
            integer = lengths.ndim == 1 and np.issubdtype(lengths.dtype, np.integer)
            if not integer or (lengths < 0).any():
                problem = f"expected int [n] >= 0, got {lengths.dtype} {lengths.tolist()[:8]}"
                raise DataError(self.path, f"key {vid + '-lengths'!r}", "lengths", problem)
        return feats.astype(np.float32), lengths

    def close(self) -> None:
        self._file.close()


# --------------------------------------------------------------------------- alignment
def align_video(
    vid: str,
    sentences: list[Sentence],
    features: np.ndarray | None,
    lengths: np.ndarray | None,
    duration_s: float,
    report: SubtitleReport,
    *,
    dim: int,
    token_counter: Callable[[str], int] | None = None,
    source: str = "",
) -> SubtitleWords:
    """One video's :class:`SubtitleWords` by the module's rule; fallbacks go to ``report``."""
    rows = 0 if features is None else len(features)
    if not sentences:
        report.add(NO_SUBTITLE, vid)
        report.add(TOKENS_WITHOUT_SENTENCE, vid, rows)
        report.keep(empty := SubtitleWords.empty(vid, dim))
        return empty
    if features is None:
        report.add(NO_TOKEN_FEATURES, vid, len(sentences))
        counts = np.zeros(len(sentences), np.int64)
        features = np.zeros((0, dim), np.float32)
    else:
        counted = None
        if token_counter is not None:
            counted = np.asarray([token_counter(text) for _, _, text in sentences], np.int64)
        if lengths is None:
            if counted is None:
                problem = "missing, and no token_counter to count the tokens of the text"
                raise DataError(source, f"key {vid + '-lengths'!r}", "lengths", problem)
            lengths = counted
        elif counted is not None:
            n = min(len(lengths), len(counted))
            report.add(COUNT_DIFFERS, vid, int((lengths[:n] != counted[:n]).sum()))
        lengths = np.asarray(lengths, np.int64)
        report.add(SENTENCE_WITHOUT_TOKENS, vid, max(0, len(sentences) - len(lengths)))
        counts = np.zeros(len(sentences), np.int64)
        counts[: len(lengths)] = lengths[: len(sentences)]
        report.add(MISSING_ROWS, vid, max(0, int(counts.sum()) - rows))
        report.add(TOKENS_WITHOUT_SENTENCE, vid, max(0, rows - int(counts.sum())))
    ends = np.minimum(np.cumsum(counts), rows)
    starts = np.concatenate([[0], ends[:-1]])
    times, texts, pieces, ids = [], [], [], []
    for i, (start, end, text) in enumerate(sentences):
        if start >= duration_s:
            report.add(AFTER_VIDEO, vid)
            report.add(AFTER_VIDEO_TOKENS, vid, int(ends[i] - starts[i]))
            continue
        if start < 0:
            report.add(START_CLAMPED, vid)
            start, end = 0.0, max(end, 0.0)
        if end > duration_s:
            report.add(END_CLAMPED, vid)
            end = duration_s
        pieces.append(features[starts[i] : ends[i]])
        ids += [len(times)] * int(ends[i] - starts[i])
        times.append((start, end))
        texts.append(text)
    words = SubtitleWords(
        video_id=vid,
        sentence_times=np.asarray(times, np.float64).reshape(-1, 2),
        sentence_text=tuple(texts),
        word_features=np.concatenate(pieces) if pieces else np.zeros((0, dim), np.float32),
        word_sentence=np.asarray(ids, np.int32),
    )
    report.keep(words)
    return words


class SubtitleWordSource:
    """The subtitle jsonl and the token h5 of one split, opened once: :meth:`words` aligns
    one video at a time (``vmr-jax data build`` streams videos), counting into ``report``.

    ``videos``: the videos that will be asked for; when some have sentences and none of them
    has a token entry, the h5 is the file of another dataset (:class:`DataError`).
    """

    def __init__(
        self,
        jsonl_path: str | os.PathLike,
        h5_path: str | os.PathLike,
        videos: Iterable[str],
        report: SubtitleReport,
        *,
        token_counter: Callable[[str], int] | None = None,
    ):
        self.report, self.token_counter = report, token_counter
        self.subs = read_subtitle_jsonl(jsonl_path)
        self.tokens = TokenFeatureFile(h5_path)
        try:
            spoken = [v for v in videos if self.subs.get(v, (0, []))[1]]
            keys = self.tokens.keys()
            if spoken and not keys & set(spoken):
                problem = (
                    f"shares no key with the videos that have subtitles (e.g. file "
                    f"{sorted(keys)[:3]}, videos {spoken[:3]}): the token file of another "
                    "dataset?"
                )
                raise DataError(self.tokens.path, None, None, problem)
            self.dim = _first_width(self.tokens, keys)
        except DataError:
            self.tokens.close()
            raise

    def words(self, vid: str, duration_s: float) -> SubtitleWords:
        features, lengths = self.tokens.get(vid)
        return align_video(
            vid,
            self.subs.get(vid, (0, []))[1],
            features,
            lengths,
            float(duration_s),
            self.report,
            dim=self.dim,
            token_counter=self.token_counter,
            source=self.tokens.path,
        )

    def close(self) -> None:
        self.tokens.close()


def load_subtitle_words(
    jsonl_path: str | os.PathLike,
    h5_path: str | os.PathLike,
    durations: Mapping[str, float],
    report: SubtitleReport,
    *,
    token_counter: Callable[[str], int] | None = None,
    name: str = "",
) -> dict[str, SubtitleWords]:
    """``{video_id: SubtitleWords}`` of every video of ``durations`` (``{vid: seconds}``),
    aligned by the module's rule; ``report`` counts every fallback and is logged once."""
    source = SubtitleWordSource(jsonl_path, h5_path, durations, report, token_counter=token_counter)
    try:
        out = {vid: source.words(vid, durations[vid]) for vid in durations}
    finally:
        source.close()
    report.log(name or str(jsonl_path))
    return out


def _first_width(tokens: TokenFeatureFile, keys: Iterable[str]) -> int:
    """The feature width of the file (its first video's, read from the shape alone)."""
    for key in sorted(keys):
        shape = tokens.shape(key)
        if len(shape) == 2:
            tokens.dim = int(shape[1])  # every video is checked against it
            return tokens.dim
        tokens.get(key)  # raises, naming the key
    raise DataError(tokens.path, None, None, "the file has no token features")
