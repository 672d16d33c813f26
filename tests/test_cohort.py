"""Cohort CSV validation: every bad row reported at once, with its line number."""

from __future__ import annotations

import numpy as np
import pytest

from napari_hila.errors import CohortError
from napari_hila.survival.cohort_csv import feature_file_for, read_cohort


def _write(tmp_path, text, name="cohort.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_good_cohort_with_patients_having_several_slides(tmp_path):
    path = _write(
        tmp_path,
        "patient_id,slide_id,time,event,fold\n"
        "P1,S1,10.5,1,0\nP1,S2,10.5,1,0\nP2,S3,3,0,1\n\nP3,S4,7,1,1\n",
    )
    cohort = read_cohort(path)
    assert cohort.patient_ids == ["P1", "P2", "P3"]
    np.testing.assert_allclose(cohort.patient_times, [10.5, 3, 7])
    np.testing.assert_array_equal(cohort.patient_events, [1, 0, 1])
    assert cohort.patient_folds == [0, 1, 1]
    assert [(r.patient_id, r.slide_id) for r in cohort.rows[:2]] == [("P1", "S1"), ("P1", "S2")]
    assert [r.line for r in cohort.rows] == [2, 3, 4, 6]


def test_every_bad_row_reported_with_line_number(tmp_path):
    (tmp_path / "feats").mkdir()
    for sid in ("S1", "S2", "S3", "S4", "S5", "S6", "S7"):
        (tmp_path / "feats" / f"{sid}.h5").write_bytes(b"")
    path = _write(
        tmp_path,
        "patient_id,slide_id,time,event\n"
        "P1,S1,10,1\n"  # line 2 ok
        "P2,S2,nan,1\n"  # line 3 NaN time
        "P3,S3,-4,0\n"  # line 4 negative time
        "P4,S4,5,2\n"  # line 5 bad event
        "P5,S1,5,1\n"  # line 6 duplicate slide
        "P6,S99,5,1\n"  # line 7 no features
        "P1,S5,11,1\n"  # line 8 inconsistent patient outcome
        "P7,S6,abc,1\n",  # line 9 not a number
    )
    with pytest.raises(CohortError) as info:
        read_cohort(path, features_dir=tmp_path / "feats")
    msg = str(info.value)
    assert str(path) in msg and "7 bad row(s)" in msg
    for line, words in [
        (3, "time 'nan'"),
        (4, "negative"),
        (5, "event '2'"),
        (6, "already listed on line 2"),
        (7, "no feature file"),
        (8, "on line 2"),
        (9, "not a number"),
    ]:
        assert f"line {line}: " in msg and words in msg, (line, words)
    assert "line 2:" not in msg


def test_missing_columns_named(tmp_path):
    path = _write(tmp_path, "patient,slide_id,time\nP1,S1,3\n")
    with pytest.raises(CohortError, match="missing column\\(s\\) patient_id, event"):
        read_cohort(path)


def test_missing_file_and_empty(tmp_path):
    with pytest.raises(CohortError, match="not found"):
        read_cohort(tmp_path / "nope.csv")
    with pytest.raises(CohortError, match="empty"):
        read_cohort(_write(tmp_path, ""))
    with pytest.raises(CohortError, match="no data rows"):
        read_cohort(_write(tmp_path, "patient_id,slide_id,time,event\n", "h.csv"))


def test_feature_file_names(tmp_path):
    (tmp_path / "TCGA-1.h5").write_bytes(b"")
    assert feature_file_for(tmp_path, "TCGA-1.svs") == tmp_path / "TCGA-1.h5"
    assert feature_file_for(tmp_path, "TCGA-1") == tmp_path / "TCGA-1.h5"
    assert feature_file_for(tmp_path, "x.h5") == tmp_path / "x.h5"


def test_finds_the_files_napari_hila_extract_writes(tmp_path):
    (tmp_path / "TCGA-01-0123456789ab-hila-descriptor.h5").write_bytes(b"")
    (tmp_path / "TCGA-01-B-aaaaaaaaaaaa-hila-descriptor.h5").write_bytes(b"")  # another slide
    found = feature_file_for(tmp_path, "TCGA-01.svs")
    assert found.name == "TCGA-01-0123456789ab-hila-descriptor.h5"
    assert feature_file_for(tmp_path, "TCGA-01-B").name.startswith("TCGA-01-B-")
    (tmp_path / "TCGA-01-0123456789ab-uni-1a2b3c4d.h5").write_bytes(b"")
    with pytest.raises(CohortError, match="2 feature files"):
        feature_file_for(tmp_path, "TCGA-01")
    csv = _write(tmp_path, "patient_id,slide_id,time,event\nP1,TCGA-01,3,1\nP2,TCGA-01-B,4,0\n")
    with pytest.raises(CohortError, match="line 2: slide 'TCGA-01' has 2 feature files") as info:
        read_cohort(csv, features_dir=tmp_path)
    assert "line 3" not in str(info.value)


def test_a_long_list_of_bad_rows_is_cut_with_the_count_left(tmp_path):
    """60 rows with a negative time: the first 50 are listed, then how many more."""
    rows = "".join(f"P{i},S{i},-1,1\n" for i in range(60))
    path = _write(tmp_path, "patient_id,slide_id,time,event\n" + rows)
    with pytest.raises(CohortError) as err:
        read_cohort(path)
    message = str(err.value)
    assert message.startswith(f"{path}: 60 bad row(s); fix them and run again:")
    assert "line 51: time -1 is negative" in message and "line 52:" not in message
    assert message.endswith("... and 10 more")
