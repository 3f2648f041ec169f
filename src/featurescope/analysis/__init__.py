"""Feature analysis: statistics, top and quantile contexts, logit effects, neighbours, map, labels, explanations.

`analyze(AnalyzeConfig(sae=..., out="features.db"))` writes the feature database that
`featurescope.featuredb.core.FeatureStore` reads; `search_text` finds the features that fire on a text;
`explain_db` adds scored LLM explanations to an existing database.
"""

from featurescope.analysis.explain import Explainer, LocalChat, OpenAIChat, explain_feature
from featurescope.analysis.explain_all import ExplainConfig, ExplainResult, explain_db
from featurescope.analysis.labels import Detection, detection_score
from featurescope.analysis.pipeline import AnalyzeConfig, AnalyzeResult, analyze
from featurescope.analysis.search import FeatureHit, TextSearch, search_text

__all__ = [
    "AnalyzeConfig", "AnalyzeResult", "Detection", "ExplainConfig", "ExplainResult", "Explainer", "FeatureHit",
    "LocalChat", "OpenAIChat", "TextSearch", "analyze", "detection_score", "explain_db", "explain_feature",
    "search_text",
]
