"""``bench.profile_pipeline.summarize`` reads py-spy's collapsed stacks: shares per task and
inclusive samples per function of this project and the libraries it calls."""

from __future__ import annotations

import pytest

from bench.profile_pipeline import summarize

pytestmark = pytest.mark.pure

RAW = """\
main (celery/bin/celery.py:10);_run (tasks/base.py:280);update_note (tasks/note_update.py:40);execute (sqlalchemy/engine/base.py:1) 6
main (celery/bin/celery.py:10);_run (tasks/base.py:280);_ledger (tasks/base.py:110);wait (psycopg/connection.py:9) 3
main (celery/bin/celery.py:10);_run (tasks/base.py:280);embed (tasks/embed.py:12);embed (inference/embedding.py:50) 1
not a stack line
"""


def test_summary_splits_samples_by_task_and_counts_each_function_once_per_stack():
    busy, per_task, inclusive = summarize(RAW, top=50)
    assert busy == 10
    assert per_task == {"tasks/note_update.py:update_note": 6,
                        "(worker loop, broker, ack)": 3, "tasks/embed.py:embed": 1}
    got = dict(inclusive)
    assert got["main @ celery"] == 10 and got["_run @ tasks/base.py"] == 10
    assert got["_ledger @ tasks/base.py"] == 3 and got["wait @ psycopg"] == 3
    assert got["execute @ sqlalchemy"] == 6
    assert got["embed @ inference/embedding.py"] == 1
