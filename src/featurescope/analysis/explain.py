"""LLM explanations of features, scored by detection on held-out windows.

An explainer is any OpenAI-compatible chat endpoint (`OpenAIChat`: llama.cpp's server, Ollama, vLLM, ...)
or a local `LanguageModel` (`LocalChat`, e.g. the embedded default). For each feature it reads the top
contexts (firing tokens marked `<<like this>>`) and the top output tokens and writes a short explanation;
then, given only that explanation, it predicts which of a shuffled set of held-out windows fire —
quantile samples from contexts it did not see, and windows where the feature never fires. The score is
the balanced accuracy of those predictions (`labels.detection_score`, the same code as for LLM-free labels).
"""

from __future__ import annotations

import json
import random
import re
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any, NamedTuple, cast

import torch

from featurescope.analysis.labels import MIN_NEGATIVES, MIN_POSITIVES, detection_score, label_score, show_token
from featurescope.errors import FeaturescopeError
from featurescope.featuredb.records import Example, Feature
from featurescope.models import LanguageModel

MARK_FRACTION = 0.25
"""Tokens at or above this fraction of an example's peak activation are marked in the explainer's prompt."""
SYSTEM = ("You explain features of a language model found by a sparse autoencoder. A feature activates on "
          "some tokens of a text; say concisely what it detects.")


class Explanation(NamedTuple):
    """An LLM label: the explanation, its detection score (balanced accuracy; None if unscorable), details."""

    text: str
    score: float | None
    details: dict[str, Any]
    score_lower: float | None = None
    """The score's lower 95% bound (`labels.score_lower`)."""


# -- chat backends -------------------------------------------------------------------------------
class Explainer:
    """A chat model that explains features and predicts detection; subclasses implement `chat`."""

    name = "explainer"

    def chat(self, messages: list[dict[str, str]], max_tokens: int) -> str:
        raise NotImplementedError

    def explain(self, prompt: str) -> str:
        """A one-phrase explanation from the explanation prompt."""
        reply = self.chat([{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}], 64)
        return parse_explanation(reply)

    def detect(self, explanation: str, texts: Sequence[str]) -> list[float] | None:
        """For each text, the predicted chance (0..1) that the feature fires on it; None if unparsable."""
        reply = self.chat([{"role": "system", "content": SYSTEM},
                           {"role": "user", "content": detection_prompt(explanation, texts)}], 16 + 4 * len(texts))
        return parse_detection(reply, len(texts))


class OpenAIChat(Explainer):
    """An OpenAI-compatible `/chat/completions` endpoint (URL such as http://localhost:8080/v1) and model name."""

    def __init__(self, url: str, model: str, api_key: str | None = None, timeout: float = 120.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise FeaturescopeError(f"explainer URL must start with http:// or https:// (got {url!r})")
        if not model:
            raise FeaturescopeError("an OpenAI-compatible explainer needs a model name (`explainer_model`)",
                                    settings=("explainer_model",))
        self.url = url.rstrip("/")
        if not self.url.endswith("/chat/completions"):
            self.url += "/chat/completions"
        self.model, self.api_key, self.timeout = model, api_key, timeout
        self.name = f"{self.model} @ {url}"

    def chat(self, messages: list[dict[str, str]], max_tokens: int) -> str:
        body = json.dumps({"model": self.model, "messages": messages, "temperature": 0,
                           "max_tokens": max_tokens}).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                data = json.loads(response.read().decode("utf-8"))
        except urllib.error.HTTPError as e:
            detail = e.read().decode("utf-8", "replace")[:200]
            raise FeaturescopeError(f"explainer {self.url} answered HTTP {e.code}: {detail}") from None
        except (urllib.error.URLError, TimeoutError, OSError) as e:
            raise FeaturescopeError(f"cannot reach the explainer at {self.url}: {e}") from None
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise FeaturescopeError(f"explainer {self.url} did not answer with JSON") from None
        try:
            return str(data["choices"][0]["message"]["content"] or "")
        except (KeyError, IndexError, TypeError):
            raise FeaturescopeError(f"explainer {self.url}: unexpected reply {str(data)[:200]}") from None


class LocalChat(Explainer):
    """A local causal LM (plain completion, greedy); detection compares the logits of " yes" and " no"."""

    def __init__(self, model: LanguageModel, max_new_tokens: int = 32) -> None:
        self.model, self.max_new_tokens = model, max_new_tokens
        self.name = f"local:{model.name}"

    def _ids(self, prompt: str) -> torch.Tensor:
        ids = self.model.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        head = [self.model.bos_id] if self.model.bos_id is not None else []
        return torch.tensor([head + ids], device=self.model.device)

    @torch.inference_mode()
    def chat(self, messages: list[dict[str, str]], max_tokens: int) -> str:
        prompt = "\n\n".join(m["content"] for m in messages) + "\n\nAnswer:"
        ids = self._ids(prompt)
        out = self.model.hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                     max_new_tokens=min(max_tokens, self.max_new_tokens),
                                     pad_token_id=self.model.tokenizer.pad_token_id)
        return cast(str, self.model.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))

    @torch.inference_mode()
    def detect(self, explanation: str, texts: Sequence[str]) -> list[float] | None:
        tok = self.model.tokenizer
        yes, no = (tok(w, add_special_tokens=False)["input_ids"][0] for w in (" yes", " no"))
        scores = []
        for text in texts:
            prompt = (f"A feature of a language model detects: {explanation}\nText: {text}\n"
                      "Does the feature activate on this text? Answer yes or no.\nAnswer:")
            logits = self.model.logits(self._ids(prompt))[0, -1].float()
            scores.append(float(torch.softmax(logits[[yes, no]], 0)[0]))
        return scores


# -- prompts ---------------------------------------------------------------------------------------
def _clean(text: str) -> str:
    return " ".join(text.split())


def marked_text(example: Example, fraction: float = MARK_FRACTION) -> str:
    """The example's text with tokens at or above `fraction` of its peak wrapped in << >>."""
    peak = max(example.acts, default=0.0)
    parts = []
    for tok, act in zip(example.tokens, example.acts, strict=True):
        parts.append(f"<<{tok}>>" if peak > 0 and act >= fraction * peak else tok)
    return _clean("".join(parts))


def explanation_prompt(feature: Feature, n: int = 10) -> str:
    """The prompt asking for an explanation of `feature` from its top `n` contexts and output tokens."""
    lines = ["Text excerpts where the feature activates (activating tokens marked <<like this>>, highest "
             "activation in brackets):", ""]
    for i, ex in enumerate(feature.top[:n]):
        lines.append(f"{i + 1}. {marked_text(ex)} [{ex.value:.3g}]")
    outputs = [show_token(e.text) for e in feature.positive_logits[:5]]
    if outputs:
        lines += ["", "Tokens it makes more likely next: " + ", ".join(f'"{t}"' for t in outputs)]
    lines += ["", "In one short phrase (at most 12 words), what does the feature detect? Reply with the phrase only."]
    return "\n".join(lines)


def detection_prompt(explanation: str, texts: Sequence[str]) -> str:
    """The prompt asking which of `texts` the explained feature fires on."""
    lines = [f'A feature of a language model is explained as: "{explanation}"',
             "For each numbered text, decide whether the feature activates on any of its tokens.", ""]
    lines += [f"{i + 1}. {_clean(t)}" for i, t in enumerate(texts)]
    lines += ["", f"Reply with a JSON list of {len(texts)} numbers, 1 if the feature activates in that text and 0 "
              "if not, e.g. [0, 1, 0]. Nothing else."]
    return "\n".join(lines)


def parse_explanation(reply: str) -> str:
    """The first non-empty line of `reply`, without quotes or an `Explanation:` prefix (at most 200 chars)."""
    for line in reply.strip().splitlines():
        line = re.sub(r"^(explanation|answer)\s*:\s*", "", line.strip(), flags=re.IGNORECASE).strip(" \"'`*")
        if line:
            return line[:200]
    return ""


def parse_detection(reply: str, n: int) -> list[float] | None:
    """The JSON list of `n` numbers in `reply`, clipped to [0, 1]; None if there is none."""
    for match in re.finditer(r"\[[^\[\]]*\]", reply):
        try:
            values = json.loads(match.group(0))
        except json.JSONDecodeError:
            continue
        if isinstance(values, list) and len(values) == n and all(
                isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            return [min(max(float(v), 0.0), 1.0) for v in values]
    return None


# -- one feature -----------------------------------------------------------------------------------
def scoring_set(feature: Feature, n: int, seed: int) -> tuple[list[Example], list[bool]]:
    """Held-out windows, shuffled: up to `n` quantile samples from contexts outside the top contexts (spread over
    the intervals, highest first) and up to `n` windows where the feature never fires."""
    seen = {e.context for e in feature.top}
    by_interval: dict[int, list[Example]] = {}
    for e in feature.quantiles:
        if e.context not in seen:
            by_interval.setdefault(e.interval, []).append(e)
    positives: list[Example] = []
    queues = [by_interval[k] for k in sorted(by_interval, reverse=True)]
    while len(positives) < n and any(queues):
        for q in queues:
            if q and len(positives) < n:
                positives.append(q.pop(0))
    negatives = feature.negatives[:n]
    pairs = [(e, True) for e in positives] + [(e, False) for e in negatives]
    random.Random(seed * 1_000_003 + feature.id).shuffle(pairs)
    return [e for e, _ in pairs], [t for _, t in pairs]


def explain_feature(explainer: Explainer, feature: Feature, *, examples: int = 10, score_examples: int = 10,
                    seed: int = 0) -> Explanation:
    """Explain `feature` from its top contexts and score the explanation by detection."""
    text = explainer.explain(explanation_prompt(feature, examples))
    windows, truth = scoring_set(feature, score_examples, seed)
    details: dict[str, Any] = {"explainer": explainer.name, "windows": len(windows)}
    if not text:
        return Explanation("", None, {**details, "error": "empty explanation"})
    if not windows:
        return Explanation(text, None, {**details, "error": "no held-out windows"})
    scores = explainer.detect(text, ["".join(e.tokens) for e in windows])
    if scores is None:
        return Explanation(text, None, {**details, "error": "unparsable detection reply"})
    det = detection_score(scores, truth)
    details["predictions"] = scores
    details["truth"] = truth
    if det is None:
        return Explanation(text, None, {**details, "error": "held-out windows lack positives or negatives"})
    score, lower = label_score(det)
    if score is None:
        return Explanation(text, None, {**details, "detection": det._asdict(), "unscored": f"fewer than "
                                        f"{MIN_POSITIVES} held-out positives or {MIN_NEGATIVES} negatives"})
    return Explanation(text, score, {**details, "detection": det._asdict(), "score_lower": lower}, lower)
