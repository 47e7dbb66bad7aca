"""The public names stay where users import them from, whatever the modules behind them.

``fastzsl.batch`` and ``fastzsl.neighbors`` were single modules and are packages now: every
public name either offered is listed here, and each must import from the same place.
"""
import importlib

import pytest

import fastzsl

PUBLIC = {
    "fastzsl": [
        "BackendUnavailableError", "CoatesNgFeatures", "ExactIndex", "FaissIndex",
        "GaussianNovelty", "KNNTransformer", "LoOP", "LoOPFit", "SemanticMapper",
        "SoftmaxClassifier", "ZeroShotClassifier", "available_backends", "class_vectors",
        "fit_file", "gaussian_loglik", "knn", "load", "load_glove_50d", "loop_fit",
        "loop_score", "read_scores", "score_file",
    ],
    "fastzsl.batch": [
        "MANIFEST", "LOCK", "FORMAT", "FORMAT_VERSION", "OUTPUT_FORMATS", "INPUT_SUFFIXES",
        "DEFAULT_CHUNK_BYTES", "BatchError", "Shard", "Chunk", "open_input", "plan_chunks",
        "read_rows", "novelty_threshold", "output_columns", "score_rows", "JobSpec",
        "output_lock", "score_file", "worker_model_loads", "read_scores",
    ],
    "fastzsl.neighbors": [
        "logger", "METHODS", "Metric", "METRICS", "check_metric", "EXACT_METHODS",
        "KDTREE_MAX_DIM", "KDTREE_MIN_N", "resolve_method", "ExactIndex", "KDTreeSearch",
        "TREE_EXTRA", "TREE_SLACK", "TREE_TINY", "FaissIndex", "SEARCH_CHUNK", "TREE_CHUNK",
        "make_index", "estimator_index", "knn",
    ],
}


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_every_public_name_still_imports(module):
    found = importlib.import_module(module)
    missing = [name for name in PUBLIC[module] if not hasattr(found, name)]
    assert not missing, f"{module} no longer offers {missing}"


def test_the_facade_and_the_packages_offer_the_same_objects():
    """A name the package facade offers is the very object its module defines."""
    from fastzsl import batch, neighbors
    assert fastzsl.score_file is batch.score_file and fastzsl.read_scores is batch.read_scores
    assert fastzsl.knn is neighbors.knn and fastzsl.ExactIndex is neighbors.ExactIndex
    assert fastzsl.FaissIndex is neighbors.FaissIndex
    assert set(PUBLIC["fastzsl"]) <= set(fastzsl.__all__)
