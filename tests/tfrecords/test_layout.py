from tfrecords.layout import BoxCounts, RecordsLayout

STATS = {"splits": {
    "train": {"images": 7, "boxes": 18, "max_boxes": 5,
              "boxes_per_image": {"1": 3, "3": 2, "4": 1, "5": 1},
              "most_boxes": [[5, "e"], [4, "d"], [3, "b"], [3, "c"], [1, "a"]]},
    "val": {"images": 1, "boxes": 0, "max_boxes": 0, "boxes_per_image": {"0": 1},
            "most_boxes": [[0, "z"]]}}}


def test_box_counts_from_stats():
    counts = BoxCounts.from_stats(STATS)
    assert counts.max_boxes == 5
    assert counts.images_with == {1: 3, 3: 2, 4: 1, 5: 1}
    assert counts.most[:2] == ((5, "e"), (4, "d"))
    assert BoxCounts.from_stats(STATS, "val").max_boxes == 0


def test_box_counts_past_a_cap():
    counts = BoxCounts.from_stats(STATS)
    # Cap 3: the 4-box image loses 1, the 5-box image 2.
    assert counts.past(3) == (2, 3)
    assert counts.named_past(3) == [(5, "e"), (4, "d")]
    # Cap 2: the two 3-box images lose 1 each, the 4-box one 2, the 5-box one 3.
    assert counts.past(2) == (4, 1 + 1 + 2 + 3)
    assert counts.past(5) == (0, 0) and counts.named_past(5) == []


def test_box_counts_of_records_that_do_not_count_them():
    # stats.json of records made before it counted boxes per image; a split that is absent.
    assert BoxCounts.from_stats({"splits": {"train": {"images": 3, "boxes": 4}}}) is None
    assert BoxCounts.from_stats({"splits": {}}) is None
    assert BoxCounts.from_stats({}) is None


def test_records_layout_paths():
    level = RecordsLayout("gs://b/records/").level(2)
    assert level.stats == "gs://b/records/level2/stats.json"
    assert level.shards("train") == "gs://b/records/level2/train-*.tfrecord"
