"""benchmarks/report.py's notes (docs/performance-notes.md) stay attached to
the targets they explain (pure logic: reads files, runs no benchmark)."""

import re
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import bench_targets  # noqa: E402
import report  # noqa: E402


def test_every_note_explains_a_target_that_exists():
    notes = report.load_notes()
    assert notes, "docs/performance-notes.md has no notes"
    for pattern in notes:
        regex = re.escape(pattern).replace(r"\*", r"\d+")
        assert any(re.fullmatch(regex, tid) for tid in bench_targets.TARGETS), \
            f"docs/performance-notes.md explains {pattern!r}, which is no target of benchmarks/bench_targets.py"


def test_a_target_without_a_note_says_a_miss_is_new():
    notes = report.load_notes()
    assert report.explanation("ioctl_create", notes).startswith("Not extra work in the compiled layer")
    assert report.explanation("quota_simple:snapshot:500", notes) == notes["quota_simple:snapshot:*"]
    assert report.explanation("template_flat", notes) == report.NO_NOTE
