"""`weights`' warnings never say 100% of the records were skipped or cut while some were not:
2,048 of 2,050 skipped read "(100%)" with 2 records written."""

from alpaca_plw.data.notes import count_notes


def test_a_share_short_of_all_is_not_rounded_to_100_percent():
    notes = count_notes({"counts": {"source": 2050, "written": 2, "skipped": 2048,
                                    "truncated": 2049}})
    assert "2,048 of 2,050 records (>99%) were skipped" in notes[0]
    assert "2,049 of 2,050 records (>99%) were cut" in notes[1]
    every = count_notes({"counts": {"source": 4, "written": 0, "skipped": 4, "truncated": 0}})
    assert "(100%)" in every[0]
