"""Hugging Face causal language models as litcache teachers and students (``pip install 'litcache[hf]'``).

An HF decoder (Llama, Mistral, Qwen2, Qwen3 or GPT-2 family), read from a local model directory, is cut
like the project's own models:

- stem (``CausalLMStem``): the token embedding, plus what the family adds before layer 0 (GPT-2's
  learned positions and embedding dropout): token ids (N, T) -> residual stream (N, T, width);
- sections (``DecoderSection``): runs of consecutive decoder layers. Each computes its own positions
  (0..T-1), rotary embeddings and causal mask with the model's own code, so it runs alone on a
  stored boundary, exactly as inside the whole model;
- head (``CausalLMHead``): the final norm and ``lm_head`` -> next-token logits (N, T, vocab).

Rows are right-padded with no attention mask: causal attention lets a valid position see only
positions before it, all valid, so the valid positions are exact (the split check proves it on
padded rows); the padded ones are ignored by every loss.

``HFCausalLM`` wraps the ``*ForCausalLM`` model. Its children are the HF model's own, so its state
dict has the HF model's keys, a checkpoint of it loads into the HF class, and ``save_pretrained``
writes it as an ordinary HF directory (``litcache export``). A student is the same HF class with
fewer ``num_hidden_layers``; ``section_layers`` records how many layers each section has.
"""

from __future__ import annotations

import copy
import functools
import inspect
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn

from ..errors import RecipeError

__all__ = ["FAMILIES", "HFCausalLM", "CausalLMStem", "DecoderSection", "CausalLMHead", "require_transformers",
           "read_config", "load_pretrained", "build_causal_lm", "hf_stem", "hf_section", "hf_head",
           "is_model_directory", "TOKENIZER_FILES", "copy_tokenizer", "tokenizer_file", "even_sections",
           "student_config", "pretrained_state", "mlp_output_module", "merge_into_mlp_output"]

INSTALL = "pip install 'litcache[hf]'"
#: Files of a tokenizer that a model directory may hold; export copies those present.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                   "tokenizer.model", "added_tokens.json", "chat_template.jinja")


@dataclass(frozen=True)
class Family:
    """Where a family keeps its parts: attribute names under the ``*ForCausalLM`` model."""

    backbone: str  # the decoder stack: "model" (Llama-like) or "transformer" (GPT-2)
    embed: str  # token embedding, in the backbone
    layers: str  # the decoder layers (an nn.ModuleList), in the backbone
    norm: str  # the final norm, in the backbone
    positions: str | None = None  # a learned position embedding added in the stem (GPT-2)
    dropout: str | None = None  # embedding dropout in the stem (GPT-2)
    rotary: str | None = None  # the rotary embedding, computed by every section (Llama-like)


_LLAMA_LIKE = Family("model", "embed_tokens", "layers", "norm", rotary="rotary_emb")
#: ``config.model_type`` -> its parts. Another family is refused by name (its stem or layer call may differ).
FAMILIES = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gpt2": Family("transformer", "wte", "h", "ln_f", positions="wpe", dropout="drop"),
}


def require_transformers():
    """The ``transformers`` module, or one clear error saying what to install."""
    try:
        import transformers
    except ImportError:
        raise RecipeError(f"Hugging Face models need the transformers and tokenizers packages, which are not "
                          f"installed. Install them with `{INSTALL}`.") from None
    # litcache reports its own progress: transformers' bars (loading and writing weights) would print
    # into litcache's output, --json included.
    transformers.utils.logging.disable_progress_bar()
    return transformers


def is_model_directory(path: str | Path) -> bool:
    """True for a folder holding a ``config.json`` (what ``--teacher`` takes as an HF model)."""
    return Path(path).is_dir() and (Path(path) / "config.json").is_file()


def _family(config) -> Family:
    model_type = getattr(config, "model_type", None)
    if model_type not in FAMILIES:
        raise RecipeError(f"litcache cuts the Hugging Face families {', '.join(sorted(FAMILIES))}; this model's "
                          f"config.json names model_type {model_type!r}, which is not supported.")
    return FAMILIES[model_type]


def read_config(path: str | Path):
    """The model directory's config, checked: a folder with config.json of a supported family."""
    transformers = require_transformers()
    path = Path(path)
    if not path.is_dir():
        raise RecipeError(f"Expected a Hugging Face model directory (config.json, safetensors weights, tokenizer.json) "
                          f"at {str(path)!r}, but there is no such folder.")
    if not (path / "config.json").is_file():
        found = ", ".join(sorted(p.name for p in path.iterdir())[:6]) or "nothing"
        raise RecipeError(f"Expected a Hugging Face model directory at {str(path)!r} (config.json, safetensors "
                          f"weights, tokenizer.json), but it has no config.json (it holds {found}). Save a model "
                          "there with `model.save_pretrained(DIR)`.")
    try:
        config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise RecipeError(f"The config.json of {str(path)!r} does not load as a Hugging Face config "
                          f"({type(exc).__name__}: {str(exc).splitlines()[0]}).") from None
    _family(config)
    return config


def tokenizer_file(path: str | Path) -> Path:
    """The model directory's ``tokenizer.json`` (what litcache tokenizes with), or one clear error."""
    file = Path(path) / "tokenizer.json"
    if not file.is_file():
        raise RecipeError(f"Expected the model's tokenizer at {str(file)!r}, but there is none. litcache tokenizes "
                          "with the model's own fast tokenizer: save it beside the model with "
                          "`tokenizer.save_pretrained(DIR)`.")
    return file


def copy_tokenizer(source: str | Path, target: str | Path) -> list[str]:
    """Copy the tokenizer files of model directory ``source`` into ``target``; returns their names."""
    copied = []
    for name in TOKENIZER_FILES:
        if (Path(source) / name).is_file():
            shutil.copy2(Path(source) / name, Path(target) / name)
            copied.append(name)
    return copied


class HFCausalLM(nn.Module):
    """An HF ``*ForCausalLM`` as litcache runs it: token ids (N, T) -> logits (N, T, vocab).

    Its children are the HF model's (``model`` and ``lm_head``, or ``transformer`` and ``lm_head``), so
    the state dict keys are the HF model's own; ``hf`` is the HF model itself, for ``save_pretrained``
    and ``generate``. ``section_layers``: the decoder layers of each section, in order."""

    def __init__(self, hf_model: nn.Module, section_layers: Sequence[int], source: str | Path | None = None) -> None:
        super().__init__()
        self.__dict__["hf"] = hf_model  # not a child: its modules are registered below, under their own names
        for name, child in hf_model.named_children():
            self.add_module(name, child)
        self.family = _family(hf_model.config)
        self.section_layers = tuple(int(n) for n in section_layers)
        self.source = None if source is None else str(source)  # the directory its config and tokenizer came from
        if sum(self.section_layers) != len(self.decoder_layers):
            raise RecipeError(f"Expected sections of {list(self.section_layers)} layers to cover the model's "
                              f"{len(self.decoder_layers)} decoder layers, but they add up to "
                              f"{sum(self.section_layers)}.")
        _mark_for_metrics(self.decoder_layers)

    @property
    def config(self):
        return self.hf.config

    @property
    def backbone(self) -> nn.Module:
        return getattr(self.hf, self.family.backbone)

    @property
    def decoder_layers(self) -> nn.ModuleList:
        return getattr(self.backbone, self.family.layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.hf(input_ids=x, use_cache=False).logits

    def train(self, mode: bool = True) -> "HFCausalLM":
        super().train(mode)
        self.hf.training = mode  # the HF model's own flag (its children are ours and follow already)
        return self


def _mark_for_metrics(layers: nn.ModuleList) -> None:
    """What litcache.training.metrics counts in a model: each decoder layer is one layer of depth; the
    attention products (q k^T, attention @ v, computed by functions) and GPT-2's ``Conv1D`` projections
    (not ``nn.Linear``) add their multiply-adds through ``attention_macs`` hooks."""
    for layer in layers:
        layer.litcache_block = True
        attention = getattr(layer, "self_attn", None) or getattr(layer, "attn", None)
        if attention is not None:
            attention.attention_macs = _attention_products
        for module in layer.modules():
            if type(module).__name__ == "Conv1D":  # transformers.pytorch_utils.Conv1D: weight (in, out)
                module.attention_macs = functools.partial(_conv1d_macs, module)


def _attention_products(inputs, output) -> int:
    """q k^T and attention @ v per sample: 2 T^2 x the attention's width (taken as its output's width)."""
    hidden = output[0] if isinstance(output, tuple) else output
    tokens, width = hidden.shape[-2:]
    return 2 * tokens * tokens * width


def _conv1d_macs(module: nn.Module, inputs, output) -> int:
    return output[0].numel() * module.weight.shape[0]


class CausalLMStem(nn.Module):
    """Token ids (N, T) -> the residual stream before layer 0 (N, T, width). Shares the model's parameters."""

    def __init__(self, model: HFCausalLM) -> None:
        super().__init__()
        family, backbone = model.family, model.backbone
        self.embed = getattr(backbone, family.embed)
        self.positions = getattr(backbone, family.positions) if family.positions else None
        self.dropout = getattr(backbone, family.dropout) if family.dropout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"Expected token ids as an integer tensor (N, T), got {x.dtype} {tuple(x.shape)} instead.")
        h = self.embed(x)
        if self.positions is not None:
            h = h + self.positions(torch.arange(x.shape[1], device=x.device)).unsqueeze(0)
        return self.dropout(h) if self.dropout is not None else h


@functools.cache
def _mask_arguments() -> str:
    """The name under which this transformers release takes the KV cache in its mask functions."""
    from transformers.masking_utils import create_causal_mask

    return "cache" if "cache" in inspect.signature(create_causal_mask).parameters else "past_key_values"


class DecoderSection(nn.Sequential):
    """Consecutive decoder layers that run alone on a boundary (N, T, width) -> (N, T, width).

    Positions, rotary embeddings and causal masks are computed here with the model's own functions,
    as the model computes them before its first layer; the rotary module is the model's, kept out of
    the section's children so that the section's state is its layers' alone (``0.``, ``1.``, ...)."""

    def __init__(self, model: HFCausalLM, layers: Sequence[nn.Module]) -> None:
        super().__init__(*layers)
        config = model.config
        self.__dict__["model_config"] = config
        rotary = getattr(model.backbone, model.family.rotary) if model.family.rotary else None
        self.__dict__["rotary"] = rotary
        # Each layer's mask: its attention's layer_type (Qwen2, Qwen3); else every layer slides where the
        # config has a window and no per-layer list (Mistral), as the model's own forward chooses.
        sliding = getattr(config, "layer_types", None) is None and getattr(config, "sliding_window", None)
        default = "sliding_attention" if sliding else "full_attention"
        self.__dict__["mask_kinds"] = [getattr(getattr(layer, "self_attn", None), "layer_type", None) or default
                                       for layer in layers]

    def _apply(self, fn, recurse=True):
        if self.rotary is not None:  # .to(device) moves the shared rotary buffers with the section
            self.rotary._apply(fn, recurse)
        return super()._apply(fn, recurse)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

        config = self.model_config
        positions = torch.arange(h.shape[1], device=h.device).unsqueeze(0)
        kwargs = {"config": config, "inputs_embeds": h, "attention_mask": None, _mask_arguments(): None,
                  "position_ids": positions}
        makers = {"full_attention": create_causal_mask, "sliding_attention": create_sliding_window_causal_mask}
        masks = {kind: makers[kind](**kwargs) for kind in set(self.mask_kinds)}
        extra = {} if self.rotary is None else {"position_embeddings": self.rotary(h, position_ids=positions)}
        for layer, kind in zip(self, self.mask_kinds):
            h = layer(h, attention_mask=masks[kind], position_ids=positions, use_cache=False, **extra)
        return h


class CausalLMHead(nn.Module):
    """The final norm and ``lm_head``: (N, T, width) -> next-token logits (N, T, vocab)."""

    def __init__(self, model: HFCausalLM) -> None:
        super().__init__()
        self.norm = getattr(model.backbone, model.family.norm)
        self.lm_head = model.hf.lm_head

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.norm(h))


def _checked(model: nn.Module) -> HFCausalLM:
    if not isinstance(model, HFCausalLM):
        raise RecipeError(f"Expected a Hugging Face model (litcache.models.hf.HFCausalLM), got {type(model).__name__}.")
    return model


def hf_stem(model: nn.Module) -> CausalLMStem:
    """A recipe's stem ModuleRef."""
    return CausalLMStem(_checked(model))


def hf_head(model: nn.Module) -> CausalLMHead:
    """A recipe's head ModuleRef."""
    return CausalLMHead(_checked(model))


def hf_section(index: int, count: int):
    """A recipe's ModuleRef for section ``index`` (from 0) of ``count``: the model's layers of that
    section, by its ``section_layers``."""

    def section(model: nn.Module) -> DecoderSection:
        model = _checked(model)
        if len(model.section_layers) != count or not 0 <= index < count:
            raise RecipeError(f"Expected a model cut into {count} sections, but this one has "
                              f"{len(model.section_layers)} ({list(model.section_layers)} layers).")
        start = sum(model.section_layers[:index])
        return DecoderSection(model, model.decoder_layers[start:start + model.section_layers[index]])

    section.__qualname__ = f"hf_section({index}, {count})"
    return section


def even_sections(layers: int, count: int) -> tuple[int, ...]:
    """``layers`` decoder layers cut into ``count`` equal sections."""
    if count < 1 or layers % count:
        raise RecipeError(f"Expected a number of sections that divides the model's {layers} decoder layers, got "
                          f"{count}. Set LITCACHE_HF_SECTIONS to one of "
                          f"{', '.join(str(d) for d in range(1, layers + 1) if layers % d == 0)}.")
    return (layers // count,) * count


def load_pretrained(path: str | Path, sections: int) -> HFCausalLM:
    """The model of directory ``path``, float32 and with its weights, cut into ``sections`` equal sections."""
    transformers = require_transformers()
    config = read_config(path)
    try:
        hf_model = transformers.AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=torch.float32,
                                                                     attn_implementation="sdpa")
    except (OSError, ValueError) as exc:
        raise RecipeError(f"The weights of {str(path)!r} do not load ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0]}). Expected safetensors written by save_pretrained.") from None
    return HFCausalLM(hf_model.eval(), even_sections(config.num_hidden_layers, sections), path)


def student_config(teacher_config, teacher_sections: Sequence[int], student_sections: Sequence[int]):
    """The teacher's config with ``num_hidden_layers`` (and any per-layer list) cut to the student's
    layers. Student layer j of a section stands for the teacher layer it would start from (the evenly
    spaced picks of ``--student-init teacher-blocks``), and takes that layer's type."""
    if len(student_sections) != len(teacher_sections):
        raise RecipeError(f"Expected a student of {len(teacher_sections)} sections (the teacher's), "
                          f"got {len(student_sections)}: {list(student_sections)}.")
    for i, (s, t) in enumerate(zip(student_sections, teacher_sections), start=1):
        if not 0 <= s <= t:
            raise RecipeError(f"Expected student section {i} to have 0 to {t} decoder layers (its teacher section has "
                              f"{t}; 0 skips the section), got {s}. A student section replaces its teacher section "
                              "with fewer layers.")
    picks, offset = [], 0
    for s, t in zip(student_sections, teacher_sections):
        picks += [offset + j * t // s for j in range(s)]
        offset += t
    config = copy.deepcopy(teacher_config)
    config.num_hidden_layers = len(picks)
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = [teacher_config.layer_types[p] for p in picks]
    return config


def build_causal_lm(config, section_layers: Sequence[int], source: str | Path | None = None,
                    seed: int | None = None) -> HFCausalLM:
    """A freshly initialised model of ``config`` (the HF class's own initialisation), float32."""
    transformers = require_transformers()
    if seed is not None:
        torch.manual_seed(seed)
    hf_model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="sdpa")
    return HFCausalLM(hf_model, section_layers, source)


def pretrained_state(path: str | Path) -> dict:
    """The weights of model directory ``path`` as a state dict of ``HFCausalLM`` (tied weights under
    both their names, as the model's own state dict has them)."""
    return load_pretrained(path, 1).state_dict()


def mlp_output_module(layer: nn.Module) -> nn.Module:
    """The decoder layer's MLP, whose output is added to the residual stream last."""
    mlp = getattr(layer, "mlp", None)
    if mlp is None or _mlp_projection(mlp) is None:
        raise RecipeError("Expected a decoder layer with an MLP ending in down_proj or c_proj, got "
                          f"{type(layer).__name__}.")
    return mlp


def _mlp_projection(mlp: nn.Module) -> nn.Module | None:
    return getattr(mlp, "down_proj", None) or getattr(mlp, "c_proj", None)


@torch.no_grad()
def merge_into_mlp_output(layer: nn.Module, T: torch.Tensor) -> None:
    """Make the layer's MLP output m into m T (T: width x width) by changing its output projection alone:
    ``nn.Linear`` (y = x W^T + b): W <- T^T W, b <- b T; GPT-2's ``Conv1D`` (y = x W + b): W <- W T, b <- b T."""
    projection = _mlp_projection(mlp_output_module(layer))
    weight, bias = projection.weight, getattr(projection, "bias", None)
    T = T.to(torch.float64)
    if isinstance(projection, nn.Linear):
        weight.copy_((T.T @ weight.double()).to(weight.dtype))
    else:
        weight.copy_((weight.double() @ T).to(weight.dtype))
    if bias is not None:
        bias.copy_((bias.double() @ T).to(bias.dtype))
