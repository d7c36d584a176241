"""Open vocabulary on points: multi-view fusion of 2D teacher features, text queries, 2D-3D ensemble evaluation.

* :mod:`.fusion` — per-point mean (over cameras, occlusion-tested) of teacher mask / pixel features;
* :mod:`.query` — :func:`~.query.score_points`, text-embedding providers, class-model fallback, one-scan queries;
* :mod:`.ensemble` — OpenScene-style fusion / distill / ensemble evaluation of a feature (TMP) model.
"""

from .query import (EmbeddingTable, QueryResult, TextEmbeddingProvider, TextQuery, prepare_query, query_points,
                    score_points)

__all__ = ["EmbeddingTable", "QueryResult", "TextEmbeddingProvider", "TextQuery", "prepare_query", "query_points",
           "score_points"]
