"""The fast part of the hostile-input suite under pytest: a representative subset (every class,
every group) against a real broker, worker and API. The full corpus: ``python -m
tests.integration.hostile``.
"""

from __future__ import annotations

import pytest

from tests.integration.hostile import corpus
from tests.integration.hostile.runner import Options, run_suite

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]


def test_corpus_is_deterministic_and_large() -> None:
    a, b = corpus.build(), corpus.build()
    assert [c.id for c in a] == [c.id for c in b]
    assert len(a) >= 300
    counts = corpus.counts(a)
    assert all(counts[k] > 0 for k in corpus.CLASSES), counts
    fast = corpus.select(a, fast=True)
    assert {c.klass for c in fast} == set(corpus.CLASSES)
    assert {(c.klass, c.group) for c in a if c.klass != "events"} <= {
        (c.klass, c.group) for c in fast}


def test_no_message_can_stop_the_pipeline(kafka_bootstrap: str,
                                          tmp_path_factory: pytest.TempPathFactory) -> None:
    cases = corpus.select(corpus.build(), fast=True)
    report = run_suite(cases, bootstrap=kafka_bootstrap,
                       base=tmp_path_factory.mktemp("hostile"),
                       opts=Options(seq_budget_s=15.0, idle_s=15.0), log=lambda _m: None)
    if not report.ok:
        pytest.fail("\n" + report.text(), pytrace=False)
