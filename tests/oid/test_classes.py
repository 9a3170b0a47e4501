import pytest

from oid.classes import ClassTable, load_classes, parse_classes
from oid.errors import InputFileError


def test_real_500_class_table(openimages_dir):
    table = load_classes(openimages_dir / "challenge-2018-class-descriptions-500.csv")
    assert len(table) == 500
    assert table.mids[0] == "/m/061hd_" and table.names[0] == "Infant bed"
    # Display names are not unique in the 2018 table; MIDs are the key.
    assert table.name("/m/076lb9") == table.name("/m/0cvnqh") == "Bench"
    assert table.index("/m/06m11") == 1


def test_real_boxable_table(openimages_dir):
    table = load_classes(openimages_dir / "class-descriptions-boxable.csv")
    assert len(table) == 601
    assert len(set(table.names)) == 601


def test_quoted_name_with_comma():
    table = parse_classes('/m/01,"Ball, football"\n/m/02,Cat\n')
    assert table.names == ("Ball, football", "Cat")


def test_v6_header_is_skipped():
    table = parse_classes("LabelName,DisplayName\n/m/01,Cat\n")
    assert table.mids == ("/m/01",)


def test_duplicate_mid_names_both_lines():
    with pytest.raises(InputFileError, match=r"classes.csv:3: MID /m/01 is listed twice "
                                             r"\(first on line 1\)"):
        parse_classes("/m/01,Cat\n/m/02,Dog\n/m/01,Kitten\n", "classes.csv")


def test_wrong_field_count():
    with pytest.raises(InputFileError, match=r"c.csv:2: expected 2 fields"):
        parse_classes("/m/01,Cat\n/m/02,Dog,extra\n", "c.csv")


def test_not_a_mid():
    with pytest.raises(InputFileError, match=r"c.csv:1: 'cat' is not a MID"):
        parse_classes("cat,Cat\n", "c.csv")


def test_empty_table():
    with pytest.raises(InputFileError, match="empty"):
        parse_classes("\n", "c.csv")


def test_unknown_mid_lookup():
    table = ClassTable(("/m/01",), ("Cat",))
    with pytest.raises(KeyError, match="unknown class MID '/m/99'"):
        table.index("/m/99")


def test_subset_keeps_order_and_round_trips():
    table = parse_classes("/m/01,Cat\n/m/02,Dog\n/m/03,Bird\n")
    sub = table.subset(["/m/03", "/m/01"])
    assert sub.mids == ("/m/03", "/m/01") and sub.names == ("Bird", "Cat")
    assert parse_classes(sub.to_csv()) == sub
