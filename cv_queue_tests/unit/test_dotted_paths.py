"""A dotted path someone typed into a setting keeps working after its module moved: the old path loads the same
object, with a DeprecationWarning naming the new path (cv_queue/dotted_paths.py); a current path loads silently."""

import importlib
import importlib.util
import warnings

import pytest

from cv_queue import dotted_paths
from cv_queue.defs.notify import load_notifier, log_notifier
from cv_queue.errors import ErrorCategory
from cv_queue.evaluation.handler import HandlerLoadError, load_handler
from cv_queue.evaluation.scorer import KeywordScorer
from cv_queue.kafka.client.failures import TopicStateError
from cv_queue.kafka.fleet.join import LayoutMismatchError
from cv_queue.kafka.worker.classify import ErrorClassifier, import_exception
from cv_queue.kafka.worker.partition_worker import PartitionWorker


@pytest.fixture
def old_scorer_path(monkeypatch: pytest.MonkeyPatch) -> str:
    """An old module path of the handlers' and notifiers' modules, as a future move would leave one."""
    monkeypatch.setitem(dotted_paths.MOVED_MODULES, "cv_queue.evaluation.old_place",
                        ("cv_queue.evaluation.scorer", "cv_queue.defs.notify"))
    return "cv_queue.evaluation.old_place"


def test_a_current_path_loads_without_a_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert dotted_paths.import_attribute("cv_queue.kafka.worker.classify", "ErrorClassifier") is ErrorClassifier
        assert isinstance(load_handler("cv_queue.evaluation.scorer:KeywordScorer"), KeywordScorer)


def test_a_moved_flat_kafka_module_still_resolves_with_a_deprecation_warning() -> None:
    with pytest.warns(DeprecationWarning, match=r"cv_queue\.kafka\.classify:ErrorClassifier moved to "
                                                r"cv_queue\.kafka\.worker\.classify:ErrorClassifier"):
        assert dotted_paths.import_attribute("cv_queue.kafka.classify", "ErrorClassifier") is ErrorClassifier


def test_a_name_of_a_module_that_became_a_package_resolves_through_the_table() -> None:
    """cv_queue.kafka.worker is a package now: its old names are found in the modules they moved to."""
    with pytest.warns(DeprecationWarning, match="cv_queue.kafka.worker.partition_worker:PartitionWorker"):
        assert dotted_paths.import_attribute("cv_queue.kafka.worker", "PartitionWorker") is PartitionWorker
    with pytest.warns(DeprecationWarning, match="cv_queue.kafka.fleet.join:LayoutMismatchError"):
        assert dotted_paths.import_attribute("cv_queue.kafka.startup", "LayoutMismatchError") is LayoutMismatchError


def test_the_retry_rules_take_an_old_exception_path() -> None:
    """CVQ_RETRY__RULES names exception classes by dotted path (module.Class or module:Class)."""
    with pytest.warns(DeprecationWarning, match="cv_queue.kafka.client.failures:TopicStateError"):
        assert import_exception("cv_queue.kafka.failures.TopicStateError") is TopicStateError
    with pytest.warns(DeprecationWarning):
        classifier = ErrorClassifier({"cv_queue.kafka.failures:TopicStateError": ErrorCategory.PERMANENT})
    assert classifier.classify(TopicStateError("gone")) == ErrorCategory.PERMANENT


def test_a_handler_path_of_a_moved_module_loads_the_handler(old_scorer_path: str) -> None:
    with pytest.warns(DeprecationWarning, match="moved to cv_queue.evaluation.scorer:KeywordScorer"):
        handler = load_handler(f"{old_scorer_path}:KeywordScorer")
    assert isinstance(handler, KeywordScorer)


def test_a_notifier_path_of_a_moved_module_loads_the_notifier(old_scorer_path: str) -> None:
    with pytest.warns(DeprecationWarning, match="moved to cv_queue.defs.notify:log_notifier"):
        assert load_notifier(f"{old_scorer_path}:log_notifier") is log_notifier


def test_a_wrong_name_fails_as_before_even_on_a_moved_path(old_scorer_path: str) -> None:
    with pytest.raises(HandlerLoadError, match="has no attribute 'Nothing'"):
        load_handler(f"{old_scorer_path}:Nothing")
    with pytest.raises(HandlerLoadError, match="cannot import handler module"):
        load_handler("cv_queue.no_such_module:Handler")
    with pytest.raises(ValueError, match="is not an exception class"):
        import_exception("cv_queue.kafka.failures.NoSuchError")
    with pytest.raises(AttributeError, match=r"'cv_queue.kafka.classify' \(moved to cv_queue.kafka.worker.classify\)"):
        dotted_paths.import_attribute("cv_queue.kafka.classify", "Nothing")
    with pytest.raises(ModuleNotFoundError):
        dotted_paths.import_attribute("cv_queue.kafka.no_such_module", "X")


@pytest.mark.parametrize("old", sorted(dotted_paths.MOVED_MODULES))
def test_every_entry_of_the_table_leads_somewhere_that_imports(old: str) -> None:
    """An old path either no longer exists as a module or is a package now; every new path imports."""
    spec = importlib.util.find_spec(old)
    assert spec is None or spec.submodule_search_locations is not None or old == "cv_queue.defs.notify"
    for new in dotted_paths.MOVED_MODULES[old]:
        importlib.import_module(new)
