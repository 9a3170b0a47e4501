"""Build a submission from detection caches and/or submission files, without TensorFlow.

    python -m oid.combine --cache OUTPUT.cache --data_dir DATA --output submission.csv.gz
    python -m oid.combine --cache run_a.cache --cache run_b.cache --weight levelX=2 ...
    python -m oid.combine --submission a.csv.gz --submission b.csv.gz --fusion wbf ...

Every source is a stream of ImageDetections (one an image); per image:

    each source: its detections scoring >= its threshold, its best --max_detections
    -> sources of one group fused: one source as is; several by weighted boxes fusion,
       concatenation or per-class NMS (--fusion). A cache's group is its level (several
       models of a level are an ensemble); every submission file is in one group "csv".
    -> the groups concatenated, in order (levels ascending, then the submission files)
    -> [--strip_parents: detections of classes with Subcategory children dropped]
    -> [--expand: each box copied to every Subcategory ancestor, identical boxes of one
       class collapsed to the best score]
    -> detections scoring >= --score_threshold, highest first, the best --top_k (0: all)

predict.py combines its models' detections with this same code (`Combination`), so that
`python -m oid.combine --cache` on predict.py's cache writes the bytes predict.py wrote.
Boxes are (ymin, xmin, ymax, xmax), normalized, as everywhere in oid/.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import re
import sys
import time
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from oid import errors, fileio
from oid.classes import ClassTable, load_classes
from oid.detection_cache import ModelCache, model_caches
from oid.errors import InputFileError, UsageError
from oid.hierarchy import Hierarchy, load_hierarchy
from oid.layout import DataLayout
from oid.submission import (
    ImageDetections,
    Relatives,
    SubmissionWriter,
    expand_to_ancestors,
    join_by_image_id,
    keep_top_k,
    merge_levels,
    read_submission_rows,
    weighted_boxes_fusion,
)

logger = logging.getLogger(__name__)

FUSIONS = ("wbf", "concat", "nms")
# predict.py's default --score_threshold (model.config.PostprocessConfig, which oid/ cannot
# import): the offline command's default, so that it rebuilds predict.py's output as is.
DEFAULT_SCORE_THRESHOLD = 0.05
CSV_GROUP = "csv"


@dataclasses.dataclass(frozen=True)
class SourceSpec:
    """One source of detections and what is done to it before the merge.

    Attributes:
      name: for messages (a model's run directory, a cache folder, a submission file).
      group: sources of one group are fused; the groups are concatenated.
      weight: its weight in the fusion of its group (> 0).
      score_threshold: its detections scoring below are dropped first (0: none).
      max_detections: its best detections kept per image (0: all).
    """

    name: str
    group: str
    weight: float = 1.0
    score_threshold: float = 0.0
    max_detections: int = 0


@dataclasses.dataclass(frozen=True)
class CombineConfig:
    """How the groups' detections become a submission row.

    Attributes:
      fusion: several sources of one group: "wbf" (weighted boxes fusion), "concat"
        (all boxes, scores x weight / the group's largest weight) or "nms" (the same,
        then per-class NMS at nms_iou).
      wbf_iou: weighted boxes fusion joins boxes of one class above this IoU.
      nms_iou: per-class NMS suppresses boxes of one class above this IoU.
      expand: copy each box to every Subcategory ancestor of its class.
      strip_parents: drop detections of classes with Subcategory children first.
      top_k: detections kept per image after everything (0: all).
      score_threshold: detections scoring below are dropped at the end.
    """

    fusion: str = "wbf"
    wbf_iou: float = 0.55
    nms_iou: float = 0.5
    expand: bool = True
    strip_parents: bool = False
    top_k: int = 0
    score_threshold: float = DEFAULT_SCORE_THRESHOLD

    def __post_init__(self):
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {', '.join(FUSIONS)}, got {self.fusion!r}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0: no cap), got {self.top_k}")


class Combination:
    """One image's detections from every source -> its submission row.

    Args:
      sources: the sources, in the order of the slots passed to __call__.
      config: the CombineConfig.
      hierarchy: needed for config.expand and config.strip_parents.
      group_order: the groups' order in the merge (default: as they first appear in
        `sources`).
    """

    def __init__(self, sources: Sequence[SourceSpec], config: CombineConfig,
                 hierarchy: Hierarchy | None, group_order: Sequence[str] | None = None):
        if not sources:
            raise ValueError("no sources to combine")
        if (config.expand or config.strip_parents) and hierarchy is None:
            raise ValueError("expanding to ancestors and stripping parents need the hierarchy")
        for s in sources:
            if not (np.isfinite(s.weight) and s.weight > 0):
                raise ValueError(f"{s.name}: the weight must be positive, got {s.weight}")
        self.sources = tuple(sources)
        self.config = config
        self.groups: dict[str, list[int]] = {}
        for group in group_order or ():
            self.groups[group] = []
        for k, s in enumerate(sources):
            self.groups.setdefault(s.group, []).append(k)
        self.groups = {g: members for g, members in self.groups.items() if members}
        self.ancestors = Relatives.of(hierarchy) if config.expand else None
        self.parents = frozenset(m for m in hierarchy.classes if not hierarchy.is_leaf(m)) \
            if config.strip_parents else frozenset()

    def source_detections(self, k: int, dets: ImageDetections) -> ImageDetections:
        """Source k's detections after its threshold and cap (as they are without either)."""
        s = self.sources[k]
        if s.score_threshold <= 0 and not s.max_detections:
            return dets
        return keep_top_k(dets, s.max_detections or len(dets), s.score_threshold)

    def fuse(self, image_id: str, members: Sequence[int],
             dets: Sequence[ImageDetections]) -> ImageDetections:
        """The detections of one group: its sources' `dets` (one each) fused."""
        if len(dets) == 1:
            return dets[0]
        weights = np.array([self.sources[k].weight for k in members])
        if self.config.fusion == "wbf":
            return weighted_boxes_fusion(dets, weights, iou_threshold=self.config.wbf_iou)
        scale = weights / weights.max()
        scaled = [d if w == 1 else ImageDetections(image_id, d.boxes, d.scores * np.float32(w),
                                                   d.mids)
                  for d, w in zip(dets, scale.tolist(), strict=True)]
        merged = merge_levels(scaled)
        if self.config.fusion == "nms":
            merged = nms_per_class(merged, self.config.nms_iou)
        return merged

    def __call__(self, image_id: str,
                 per_source: Sequence[ImageDetections | None]) -> ImageDetections:
        """The row of `image_id`; per_source[k] is source k's detections (None: it has no
        row for the image, as if it had no detections)."""
        groups = []
        for members in self.groups.values():
            present = [(k, self.source_detections(k, per_source[k])) for k in members
                       if per_source[k] is not None]
            if present:
                groups.append(self.fuse(image_id, [k for k, _ in present],
                                        [d for _, d in present]))
        if not groups:
            return ImageDetections.empty(image_id)
        dets = merge_levels(groups)
        if self.parents and len(dets):
            dets = dets.take(~np.isin(dets.mids, list(self.parents)))
        if self.ancestors is not None:
            dets = expand_to_ancestors(dets, self.ancestors)
        return keep_top_k(dets, self.config.top_k or len(dets), self.config.score_threshold)


def nms_per_class(dets: ImageDetections, iou_threshold: float) -> ImageDetections:
    """Greedy non-maximum suppression within each class of one image, in numpy.

    Per class, in descending score (equal scores in input order), a box is kept unless its
    IoU with a box already kept is above `iou_threshold`. Returns the kept rows, highest
    score first (equal scores in input order).
    """
    n = len(dets)
    if n < 2:
        return dets
    order = np.lexsort((np.arange(n), -dets.scores))
    _, cls = np.unique(dets.mids[order].astype(str), return_inverse=True)
    boxes = dets.boxes[order].astype(np.float64)
    area = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0,
                                                                   None)
    keep = np.zeros(n, bool)
    for c in np.unique(cls):
        rows = np.flatnonzero(cls == c)  # in score order
        b = boxes[rows]
        low = np.maximum(b[:, None, :2], b[None, :, :2])
        high = np.minimum(b[:, None, 2:], b[None, :, 2:])
        inter = np.prod(np.clip(high - low, 0, None), axis=-1)
        union = area[rows][:, None] + area[rows][None, :] - inter
        iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        suppressed = np.zeros(len(rows), bool)
        for i in range(len(rows)):
            if suppressed[i]:
                continue
            keep[rows[i]] = True
            suppressed |= iou[i] > iou_threshold
    return dets.take(order[keep])


# -- sources on disk -----------------------------------------------------------------------


def cache_stream(cache: ModelCache, counts: dict | None = None) -> Iterator[ImageDetections]:
    """Every image of a model's cache, chunk by chunk in index order (one chunk in memory).
    `counts` (if given) gets "images" and "unreadable" added up."""
    for _, chunk in cache.iter_chunks():
        if counts is not None:
            counts["images"] = counts.get("images", 0) + len(chunk.images)
            counts["unreadable"] = counts.get("unreadable", 0) + len(chunk.unreadable)
        yield from chunk.images


def checked_stream(stream: Iterable[ImageDetections], path: str,
                   classes: ClassTable) -> Iterator[ImageDetections]:
    """`stream`, refusing a MID that is not in `classes` (InputFileError naming `path`)."""
    known = set(classes.mids)
    for dets in stream:
        unknown = set(dets.mids.tolist()) - known
        if unknown:
            raise InputFileError(path, None, f"ImageId {dets.image_id!r} has the LabelName "
                                             f"{sorted(unknown)[0]!r}, which is not in the class "
                                             "list; pass the class list it was made with")
        yield dets


def combine_streams(streams: Sequence[Iterable[ImageDetections]], combination: Combination,
                    output: str, image_ids: Iterable[str] | None = None,
                    log_every_seconds: float = 10.0) -> tuple:
    """Joins the streams by ImageId, combines each image and writes the submission.
    Returns the SubmissionWriter's stats."""
    start = last = time.monotonic()
    with SubmissionWriter(output, image_ids=image_ids) as writer:
        for done, (image_id, slots) in enumerate(join_by_image_id(streams), 1):
            writer.write(combination(image_id, slots))
            now = time.monotonic()
            if now - last >= log_every_seconds:
                last = now
                logger.info("combine: %s images, %.0f images/s", f"{done:,}",
                            done / (now - start))
    return writer.stats


# -- the command ---------------------------------------------------------------------------

_SELECTOR = re.compile(r"(.+)=([^=]+)")


def _pairs(flag: str, values: Sequence[str], kind) -> list[tuple[str, object, str]]:
    """(selector, value, the flag's text) of each SOURCE=VALUE."""
    out = []
    for value in values:
        match = _SELECTOR.fullmatch(value)
        try:
            if not match:
                raise ValueError
            out.append((match[1], kind(match[2]), value))
        except ValueError:
            raise UsageError(flag, value, "expected SOURCE=VALUE, SOURCE being levelN, a "
                                          "model's cache folder or run directory, or a "
                                          "submission file; e.g. level1=2") from None
    return out


def _matches(selector: str, cache: ModelCache | None, path: str) -> bool:
    """Whether SOURCE=... names this source: `path` is the --submission file, or the --cache
    folder the model was found in."""
    if cache is None:
        return selector in (path, CSV_GROUP)
    return selector.rstrip("/") in (f"level{cache.level}", cache.name, cache.path.rstrip("/"),
                                    path.rstrip("/"), str(cache.meta.get("run_dir")))


def build_sources(args) -> tuple[list[SourceSpec], list[tuple[ModelCache | None, str]]]:
    """(the sources, and for each its cache or None for a submission file, and the --cache
    or --submission path it came from): caches' models by level (those of --levels), then
    the submission files."""
    models: list[tuple[ModelCache, str]] = []
    for path in args.cache:
        models += [(m, path) for m in model_caches(path)]
    if args.levels:
        wanted = {int(v) for v in args.levels.split(",")}
        models = [(m, p) for m, p in models if m.level in wanted]
        if not models and not args.submission:
            raise UsageError("--levels", args.levels, "no model of the caches is of these "
                                                      "levels; see the caches' levelN folders")
    # Levels ascending; an ensemble's models by folder name (levelN-KEY), as predict.py
    # fuses them, so that both write the same bytes.
    models.sort(key=lambda mp: (mp[0].level if mp[0].level is not None else 1 << 30,
                                mp[0].name))
    found = models + [(None, p) for p in args.submission]
    if not found:
        raise ValueError("nothing to combine; pass --cache and/or --submission")
    weights = _pairs("--weight", args.weight, float)
    thresholds = _pairs("--source_threshold", args.source_threshold, float)
    for flag, pairs in (("--weight", weights), ("--source_threshold", thresholds)):
        for selector, _, text in pairs:
            if not any(_matches(selector, c, p) for c, p in found):
                raise UsageError(flag, text, "matches no source; use levelN, a "
                                                              "model's cache folder or run "
                                                              "directory, or a --submission")
    sources = []
    for cache, path in found:
        # The last flag that names a source wins.
        weight = next((v for s, v, _ in reversed(weights) if _matches(s, cache, path)), 1.0)
        threshold = next((v for s, v, _ in reversed(thresholds) if _matches(s, cache, path)),
                         0.0)
        name = cache.meta.get("run_dir") or cache.path if cache else path
        group = f"level{cache.level}" if cache else CSV_GROUP
        sources.append(SourceSpec(str(name), group, weight, threshold, args.max_detections))
    return sources, found


def _parser() -> argparse.ArgumentParser:
    parser = errors.ArgumentParser(
        prog="python -m oid.combine",
        description="Build a Kaggle submission from predict.py's detection caches and/or "
                    "submission files, without TensorFlow: choose levels or runs, weight and "
                    "threshold each source, fuse, copy boxes to ancestors, cap. Bad input "
                    "stops with one 'error: ...' line and exit status 2.")
    parser.add_argument("--cache", action="append", default=[],
                        help="predict.py's cache folder (every model in it) or one model's "
                             "folder in it (levelN-KEY); repeat for several runs")
    parser.add_argument("--submission", action="append", default=[],
                        help="a submission CSV (.gz: gzipped) to fuse in; repeat for several")
    parser.add_argument("--levels", default=None,
                        help="comma-separated levels: use only these levels' models of --cache")
    parser.add_argument("--weight", action="append", default=[],
                        help="SOURCE=W: the weight of a source in its group's fusion (default "
                             "1); SOURCE is levelN, a --cache path (all its models), a model's "
                             "cache folder or run directory, or a --submission path; repeat")
    parser.add_argument("--source_threshold", action="append", default=[],
                        help="SOURCE=T: drop a source's detections scoring below T before the "
                             "fusion; repeat")
    parser.add_argument("--max_detections", type=int, default=0,
                        help="each source's best detections kept per image, before the merge "
                             "(0: all)")
    parser.add_argument("--fusion", choices=FUSIONS, default="wbf",
                        help="several sources of one group (an ensemble): weighted boxes "
                             "fusion, concatenation, or concatenation then per-class NMS")
    parser.add_argument("--wbf_iou", type=float, default=0.55,
                        help="weighted boxes fusion joins boxes of one class above this IoU")
    parser.add_argument("--nms_iou", type=float, default=0.5,
                        help="--fusion nms suppresses boxes of one class above this IoU")
    parser.add_argument("--expand", action=argparse.BooleanOptionalAction, default=True,
                        help="copy each box to every Subcategory ancestor of its class")
    parser.add_argument("--strip_parents", action="store_true",
                        help="drop detections of classes that have Subcategory children "
                             "(before --expand, which then copies the leaves' boxes up)")
    parser.add_argument("--top_k", type=int, default=0,
                        help="detections kept per image at the end (0: all above "
                             "--score_threshold)")
    parser.add_argument("--score_threshold", type=float, default=None,
                        help="detections scoring below are dropped at the end (default: the "
                             "--score_threshold predict.py wrote the caches with, else "
                             f"{DEFAULT_SCORE_THRESHOLD})")
    parser.add_argument("--data_dir", default=None,
                        help="DATA_DIR whose label/ holds the class list and hierarchy")
    parser.add_argument("--classes", default=None,
                        help="class list CSV (MID,DisplayName); default from --data_dir. Every "
                             "source's MIDs are checked against it")
    parser.add_argument("--hierarchy", default=None,
                        help="hierarchy JSON; default from --data_dir")
    parser.add_argument("--output", required=True, help="the submission CSV (.gz: gzipped)")
    parser.add_argument("--log_every_seconds", type=float, default=10.0,
                        help="progress log interval")
    return parser


def _check_args(args) -> None:
    for flag, value, low, high in (("--wbf_iou", args.wbf_iou, 0, 1),
                                   ("--nms_iou", args.nms_iou, 0, 1),
                                   ("--score_threshold", args.score_threshold, 0, 1)):
        if value is not None and not low <= value <= high:
            raise UsageError(flag, value, f"must be in [{low}, {high}]")
    for flag, value in (("--top_k", args.top_k), ("--max_detections", args.max_detections)):
        if value < 0:
            raise UsageError(flag, value, "must be >= 0 (0: no cap)")
    if args.levels and not re.fullmatch(r"\d+(,\d+)*", args.levels):
        raise UsageError("--levels", args.levels, "expected comma-separated level numbers, "
                                                  "e.g. 1,2")
    if args.data_dir:
        layout = DataLayout(args.data_dir)
        args.classes = args.classes or layout.classes
        args.hierarchy = args.hierarchy or layout.hierarchy
    if (args.expand or args.strip_parents) and not args.hierarchy:
        raise ValueError("--hierarchy is needed to copy boxes to ancestors and to strip "
                         "parents; pass --data_dir or --hierarchy (or --no-expand)")
    for flag in ("--classes", "--hierarchy"):
        path = getattr(args, flag[2:])
        if path:
            fileio.check_input_file(flag, path)
    fileio.check_output_file("--output", args.output,
                             {f"--submission {p}": p for p in args.submission})


def main(argv: Sequence[str] | None = None) -> int:
    """The command; returns its exit status (0, or 2 for a refused start or bad input)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args = _parser().parse_args(argv)
    try:
        _check_args(args)
        for path in args.submission:
            fileio.check_input_file("--submission", path)
        classes = load_classes(args.classes) if args.classes else None
        hierarchy = load_hierarchy(args.hierarchy) \
            if (args.expand or args.strip_parents) else None
        sources, found = build_sources(args)
        threshold = args.score_threshold
        if threshold is None:  # predict.py's, so that its submission is rebuilt as it was
            written = [c.meta.get("settings", {}).get("score_threshold") for c, _ in found
                       if c is not None]
            threshold = max((t for t in written if t is not None),
                            default=DEFAULT_SCORE_THRESHOLD)
        config = CombineConfig(args.fusion, args.wbf_iou, args.nms_iou, args.expand,
                               args.strip_parents, args.top_k, threshold)
        combination = Combination(sources, config, hierarchy)
        counts: dict = {}
        streams = []
        for cache, path in found:
            if cache is not None:
                if classes is not None:
                    unknown = [m for m in cache.meta.get("mids", []) if m not in classes]
                    if unknown:
                        raise InputFileError(fileio.join(cache.path, "cache.json"), None,
                                             f"the model predicts {unknown[0]}, which is not "
                                             f"in {args.classes}; pass its class list")
                stream = cache_stream(cache, counts)
            else:
                stream = read_submission_rows(path)
                if classes is not None:
                    stream = checked_stream(stream, path, classes)
            streams.append(stream)
            spec = sources[len(streams) - 1]
            logger.info("source %s: %s (group %s, weight %g)",
                        cache.path if cache is not None else path, spec.name, spec.group,
                        spec.weight)
        stats = combine_streams(streams, combination, args.output,
                                log_every_seconds=args.log_every_seconds)
    except (UsageError, InputFileError, ValueError) as e:
        return errors.report(e)
    except OSError as e:
        return errors.report(f"{e.filename or 'an input file'}: cannot be read "
                             f"({e.strerror or e}); check the file and run again")
    logger.info("wrote %s: %d rows (%d with detections), %d detections%s", args.output,
                stats.rows, stats.images_with_detections, stats.detections,
                f"; {counts['unreadable']} unreadable images" if counts.get("unreadable")
                else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
