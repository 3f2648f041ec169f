"""The LanguageModel wrapper: read or replace a causal LM's residual stream after block L.

`featurescope.models.load_model` builds one by name; `featurescope.models.vision.VisionLanguageModel`
extends it for image-text-to-text models.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple, cast

import torch
from torch import Tensor, nn

from featurescope.errors import FeaturescopeError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

_BLOCK_PATHS = (
    "model.layers",  # Llama, Gemma, Gemma 3, Qwen, Mistral, Phi-3
    "model.language_model.layers",  # multimodal wrappers (Gemma 3, LLaVA-style) in transformers 5
    "model.text_model.layers",  # SmolVLM / Idefics3
    "language_model.model.layers",
    "transformer.h",  # GPT-2, GPT-J, Bloom
    "gpt_neox.layers",  # Pythia
    "model.decoder.layers",  # OPT
)
_NORM_PATHS = (
    "model.norm",
    "model.language_model.norm",
    "model.text_model.norm",
    "language_model.model.norm",
    "transformer.ln_f",
    "gpt_neox.final_layer_norm",
    "model.decoder.final_layer_norm",
)


def _get(obj: object, dotted: str) -> object | None:
    for part in dotted.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


class StopForward(Exception):
    """Raised by `Capture` to end a forward pass after the block of interest."""


class Capture:
    """Forward hook that records a block's output hidden states and, optionally, stops the forward pass."""

    def __init__(self, stop: bool) -> None:
        self.stop = stop
        self.output: Tensor | None = None

    def __call__(self, module: nn.Module, args: object, output: object) -> None:
        self.output = cast(Tensor, output[0] if isinstance(output, tuple) else output)
        if self.stop:
            raise StopForward


class _Keep(Capture):
    """`Capture` that keeps a copy of the output when the forward pass goes on (later blocks cannot change it)."""

    def __call__(self, module: nn.Module, args: object, output: object) -> None:
        out = cast(Tensor, output[0] if isinstance(output, tuple) else output)
        self.output = out if self.stop else out.clone()
        if self.stop:
            raise StopForward


class _CaptureInput:
    """Forward pre-hook that records a module's first input and ends the forward pass."""

    def __init__(self) -> None:
        self.input: Tensor | None = None

    def __call__(self, module: nn.Module, args: tuple[object, ...]) -> None:
        self.input = args[0]  # type: ignore[assignment]
        raise StopForward


class _Replace:
    """Forward hook that passes a block's output hidden states through `edit` and returns the result."""

    def __init__(self, edit: Callable[[Tensor], Tensor]) -> None:
        self.edit = edit

    def __call__(self, module: nn.Module, args: object, output: object) -> object:
        if isinstance(output, tuple):
            return (self.edit(output[0]), *output[1:])
        return self.edit(output)  # type: ignore[arg-type]


@dataclass
class ModelInfo:
    """What later stages record about the model an artefact came from."""

    name: str
    source: str
    family: str
    n_layers: int
    d_model: int
    vocab_size: int


class LanguageModel:
    """A causal LM with its tokenizer, and access to the residual stream after each block.

    Layers are 0-based block indices: `residual(ids, 9)` is the output of block 9 (SAELens'
    `blocks.9.hook_resid_post`).
    """

    def __init__(self, hf_model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, name: str, source: str) -> None:
        self.hf = hf_model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.source = source
        cfg = hf_model.config
        text_cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
        self.config = text_cfg
        self.blocks = self._find_blocks()
        self.n_layers = len(self.blocks)
        self.d_model = int(getattr(text_cfg, "hidden_size", 0) or getattr(text_cfg, "n_embd", 0))
        self.family = str(getattr(text_cfg, "model_type", type(hf_model).__name__))

    # -- structure ---------------------------------------------------------------------------
    def _find_blocks(self) -> nn.ModuleList:
        for path in _BLOCK_PATHS:
            blocks = _get(self.hf, path)
            if isinstance(blocks, nn.ModuleList) and len(blocks) > 0:
                return blocks
        n = getattr(self.config, "num_hidden_layers", None) or getattr(self.config, "n_layer", None)
        for module in self.hf.modules():
            if isinstance(module, nn.ModuleList) and n and len(module) == n:
                return module
        raise FeaturescopeError(f"cannot find the transformer blocks of {type(self.hf).__name__}")

    @property
    def final_norm(self) -> nn.Module | None:
        """The norm applied to the residual stream before the unembedding (None if not found)."""
        for path in _NORM_PATHS:
            module = _get(self.hf, path)
            if isinstance(module, nn.Module):
                return module
        return None

    @property
    def unembed(self) -> Tensor:
        """The unembedding matrix W_U as [vocab, d_model]."""
        head = self.hf.get_output_embeddings()
        if head is None:
            raise FeaturescopeError(f"{self.name} has no output embedding")
        return head.weight

    @property
    def device(self) -> torch.device:
        return next(self.hf.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.hf.parameters()).dtype

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(
            name=self.name, source=self.source, family=self.family, n_layers=self.n_layers,
            d_model=self.d_model, vocab_size=int(self.unembed.shape[0]),
        )

    @property
    def special_ids(self) -> set[int]:
        """Token ids of special tokens (BOS, EOS, padding, ...), whose activations are outliers."""
        ids = set(getattr(self.tokenizer, "all_special_ids", []) or [])
        for attr in ("bos_token_id", "eos_token_id", "pad_token_id"):
            value = getattr(self.tokenizer, attr, None)
            if isinstance(value, int):
                ids.add(value)
        return ids

    @property
    def bos_id(self) -> int | None:
        """The id put first in every context (BOS, else EOS for models without BOS)."""
        for attr in ("bos_token_id", "eos_token_id"):
            value = getattr(self.tokenizer, attr, None)
            if isinstance(value, int):
                return value
        return None

    def check_layer(self, layer: int) -> int:
        """Return `layer` if it is a valid block index, else raise a clear error."""
        if not isinstance(layer, int) or not 0 <= layer < self.n_layers:
            raise FeaturescopeError(f"layer {layer} is out of range: {self.name} has blocks 0..{self.n_layers - 1}")
        return layer

    # -- forward passes ------------------------------------------------------------------------
    def _inputs(self, input_ids: Tensor, attention_mask: Tensor | None) -> dict[str, Tensor]:
        inputs = {"input_ids": input_ids.to(self.device)}
        if attention_mask is not None:
            inputs["attention_mask"] = attention_mask.to(self.device)
        return inputs

    @torch.inference_mode()
    def residual(self, input_ids: Tensor, layer: int, attention_mask: Tensor | None = None) -> Tensor:
        """Residual stream after block `layer`, [batch, seq, d_model]; later blocks and the head never run."""
        return self.residual_of(self._inputs(input_ids, attention_mask), layer)

    @torch.inference_mode()
    def residual_of(self, inputs: dict[str, Tensor], layer: int) -> Tensor:
        """`residual` for ready model inputs (keyword arguments of the HF model's forward)."""
        self.check_layer(layer)
        capture = Capture(stop=True)
        self._forward_until(inputs, self.blocks[layer].register_forward_hook(capture))
        if capture.output is None:
            raise FeaturescopeError(f"block {layer} of {self.name} did not run")
        return capture.output

    @torch.inference_mode()
    def residuals(self, input_ids: Tensor, layers: Sequence[int], attention_mask: Tensor | None = None
                  ) -> dict[int, Tensor]:
        """Residual stream after each block of `layers` from one forward pass that stops after the deepest:
        {layer: [batch, seq, d_model]}, each equal to `residual(input_ids, layer)`."""
        return self.residuals_of(self._inputs(input_ids, attention_mask), layers)

    @torch.inference_mode()
    def residuals_of(self, inputs: dict[str, Tensor], layers: Sequence[int]) -> dict[int, Tensor]:
        """`residuals` for ready model inputs."""
        wanted = sorted({self.check_layer(layer) for layer in layers})
        if not wanted:
            return {}
        captures = {layer: _Keep(stop=layer == wanted[-1]) for layer in wanted}
        handles = [self.blocks[layer].register_forward_hook(c) for layer, c in captures.items()]
        try:
            self._forward_until(inputs, handles[-1])
        finally:
            for h in handles:
                h.remove()
        missing = [layer for layer, c in captures.items() if c.output is None]
        if missing:
            raise FeaturescopeError(f"block {missing[0]} of {self.name} did not run")
        return {layer: cast(Tensor, c.output) for layer, c in captures.items()}

    def _forward_until(self, inputs: dict[str, Tensor], handle: torch.utils.hooks.RemovableHandle) -> None:
        """Run the forward pass until the hook behind `handle` stops it (`StopForward`); remove the hook."""
        try:
            self.hf(**inputs, use_cache=False)
        except StopForward:
            pass
        finally:
            handle.remove()

    @torch.inference_mode()
    def logits(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Full forward pass: next-token logits [batch, seq, vocab]."""
        return self.hf(**self._inputs(input_ids, attention_mask), use_cache=False).logits

    @torch.inference_mode()
    def head_input(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """What the unembedding reads (the final-normed residual), [batch, seq, d_model]; the head never runs."""
        head = self.hf.get_output_embeddings()
        if head is None or self.logit_transform_unknown:
            raise FeaturescopeError(f"{self.name}: cannot split the unembedding from the forward pass")
        capture = _CaptureInput()
        self._forward_until(self._inputs(input_ids, attention_mask), head.register_forward_pre_hook(capture))
        if capture.input is None:
            raise FeaturescopeError(f"the unembedding of {self.name} did not run")
        return capture.input

    @property
    def logit_transform_unknown(self) -> bool:
        """True for configs that rescale logits in ways `next_token_nll`'s own head does not reproduce."""
        return any(getattr(self.config, k, None) not in (None, 1, 1.0) for k in ("logit_scale", "logits_scaling"))

    @property
    def head_split(self) -> bool:
        """True when `next_token_scores` applies the unembedding itself, in chunks (a linear head whose logits
        are not rescaled); else it reads whole logits."""
        return not self.logit_transform_unknown and isinstance(self.hf.get_output_embeddings(), nn.Linear)

    @torch.inference_mode()
    def head_state(self, input_ids: Tensor) -> Tensor:
        """What `next_token_scores` reads of one forward pass: the head input [batch, seq, d_model] when
        `head_split`, else the logits [batch, seq, vocab]."""
        return self.head_input(input_ids) if self.head_split else self.logits(input_ids)

    @torch.inference_mode()
    def next_token_nll(self, input_ids: Tensor, chunk: int = 128) -> Tensor:
        """−log p(token t+1 | tokens ≤ t) for every position but the last, [batch, seq − 1] float32."""
        return self.next_token_scores(input_ids, [self.head_state(input_ids)], chunk=chunk)[0].nll

    @torch.inference_mode()
    def next_token_scores(self, input_ids: Tensor, states: Sequence[Tensor], reference: int | None = None,
                          chunk: int = 128) -> list[TokenScores]:
        """Per forward pass over `input_ids` (`states`: their `head_state`s, e.g. with edits spliced in), the NLL
        of every next token and, when `reference` indexes one of them, KL(reference ‖ it) per position.

        The [positions × vocab] logits are made `chunk` positions at a time, in buffers kept on the model and
        reused (a fresh 100 MB+ tensor per chunk costs as much in page faults as the matmul): with a 262k-token
        vocabulary the whole batch's float32 logits and their log-softmax would be gigabytes. The reference's
        probabilities are made once per chunk and shared by every state.
        """
        if not self.head_split:
            return _full_scores(input_ids, states, reference)
        head = self.hf.get_output_embeddings()
        assert isinstance(head, nn.Linear)
        flat = [h[:, :-1].flatten(0, 1) for h in states]
        targets = input_ids[:, 1:].flatten().to(flat[0].device)
        raw, flt = self._logit_buffers(chunk, head.weight)
        cap = getattr(self.config, "final_logit_softcapping", None)
        nll = [torch.empty(len(targets), dtype=torch.float32, device=targets.device) for _ in states]
        kl = [torch.zeros_like(x) for x in nll] if reference is not None else None
        probs, scratch = self._reference_buffers(chunk, head.weight) if reference is not None else (None, None)
        order = sorted(range(len(states)), key=lambda k: k != reference)  # the reference first
        for s in range(0, len(targets), chunk):
            n = min(chunk, len(targets) - s)
            ref_term: Tensor | None = None
            for k in order:
                logits = flt[:n]
                torch.mm(flat[k][s : s + n], head.weight.T, out=raw[:n])
                logits.copy_(raw[:n])
                if head.bias is not None:
                    logits += head.bias
                if cap:
                    logits.div_(cap).tanh_().mul_(cap)
                target = logits.gather(-1, targets[s : s + n, None])[:, 0]
                top = logits.amax(-1, keepdim=True)
                if k == reference:
                    assert probs is not None and scratch is not None
                    p = probs[:n]
                    total = torch.sub(logits, top, out=p).exp_().sum(-1)
                    p.div_(total[:, None])
                    # Σ p log p, from logits less their max (the terms of a float32 sum stay small)
                    ref_term = _row_dot(p, logits.sub_(top), scratch) - total.log()
                    nll[k][s : s + n] = total.log_() + top[:, 0] - target
                    continue
                logits.sub_(top)
                cross = _row_dot(probs[:n], logits, scratch) if probs is not None and scratch is not None else None
                lse = logits.exp_().sum(-1).log_()
                nll[k][s : s + n] = lse + top[:, 0] - target
                if kl is not None and cross is not None and ref_term is not None:
                    kl[k][s : s + n] = (ref_term - cross + lse).clamp_min_(0)
        shape = (input_ids.shape[0], -1)
        return [TokenScores(nll[k].view(shape), None if kl is None else kl[k].view(shape)) for k in range(len(states))]

    def _logit_buffers(self, chunk: int, weight: Tensor) -> tuple[Tensor, Tensor]:
        """[chunk, vocab] buffers in the head's dtype and in float32, made once per (chunk, device, dtype)."""
        key = (chunk, weight.device, weight.dtype)
        if getattr(self, "_buffers_key", None) != key:
            self._buffers = (torch.empty(chunk, weight.shape[0], dtype=weight.dtype, device=weight.device),
                             torch.empty(chunk, weight.shape[0], dtype=torch.float32, device=weight.device))
            self._buffers_key = key
        return self._buffers

    def _reference_buffers(self, chunk: int, weight: Tensor) -> tuple[Tensor, Tensor]:
        """Two float32 [chunk, vocab] buffers (the reference's probabilities, products), made once per (chunk,
        device)."""
        key = (chunk, weight.device)
        if getattr(self, "_probs_key", None) != key:
            self._probs = tuple(torch.empty(chunk, weight.shape[0], dtype=torch.float32, device=weight.device)
                                for _ in range(2))
            self._probs_key = key
        return self._probs  # type: ignore[return-value]

    @contextmanager
    def splice(self, layer: int, edit: Callable[[Tensor], Tensor]) -> Iterator[None]:
        """Within the block, block `layer`'s output x is replaced by `edit(x)` in every forward pass.

        `edit` sees [batch, seq, d_model] — with a KV cache during generation, seq is 1 for each new token.
        """
        self.check_layer(layer)
        handle = self.blocks[layer].register_forward_hook(_Replace(edit))
        try:
            yield
        finally:
            handle.remove()

    @contextmanager
    def capture(self, layer: int) -> Iterator[Capture]:
        """Within the block, the returned object's `.output` holds block `layer`'s latest output."""
        self.check_layer(layer)
        cap = Capture(stop=False)
        handle = self.blocks[layer].register_forward_hook(cap)
        try:
            yield cap
        finally:
            handle.remove()


class TokenScores(NamedTuple):
    """Per predicted token of one forward pass, [batch, seq − 1] float32 each."""

    nll: Tensor
    """−log p(token t+1 | tokens ≤ t)."""
    kl: Tensor | None
    """KL(reference ‖ this) of the next-token distributions, in nats (0 for the reference itself; None without one)."""


def _row_dot(a: Tensor, b: Tensor, scratch: Tensor) -> Tensor:
    """Σ_v a[i, v]·b[i, v] for every row i, the products made in `scratch` and summed pairwise (a float32 dot
    product over a 262k-token vocabulary accumulates errors of 1e-2)."""
    out = scratch[: len(a)]
    return torch.mul(a, b, out=out).sum(-1)


def _full_scores(input_ids: Tensor, logits: Sequence[Tensor], reference: int | None) -> list[TokenScores]:
    """`LanguageModel.next_token_scores` from whole logits [batch, seq, vocab]."""
    targets = input_ids[:, 1:, None]
    ref = None if reference is None else torch.log_softmax(logits[reference][:, :-1].float(), dim=-1)
    out = []
    for k, state in enumerate(logits):
        logp = torch.log_softmax(state[:, :-1].float(), dim=-1)
        nll = -logp.gather(-1, targets.to(logp.device)).squeeze(-1)
        kl = None if ref is None else torch.zeros_like(nll) if k == reference else \
            (ref.exp() * (ref - logp)).sum(-1).clamp_min_(0)
        out.append(TokenScores(nll, kl))
    return out


def pad_right(rows: Sequence[Sequence[int]]) -> tuple[Tensor, Tensor]:
    """Token id rows as one right-padded batch: (ids [n, longest] padded with 0, attention mask of 1s and 0s).
    Under causal attention a row's own positions never see its padding, and their position ids stay 0, 1, …"""
    width = max((len(r) for r in rows), default=0)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for j, r in enumerate(rows):
        ids[j, :len(r)] = torch.tensor(list(r), dtype=torch.long)
        mask[j, :len(r)] = 1
    return ids, mask


def default_device() -> str:
    """cuda when available, else cpu."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: str | torch.dtype | None, device: str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in table:
        raise FeaturescopeError(f"unknown dtype {dtype!r}; choose one of {', '.join(table)}")
    return table[dtype]
