"""The configured LLaMA: its shapes, a stand-in built on the meta device (shapes only, no memory), and what
the data must agree with (sequence length, vocabulary)."""

from __future__ import annotations

import typing

from omegaconf import DictConfig

from optsweep.errors import ConfigError, UserError, one_line
from optsweep.preflight.fields import require_integer

if typing.TYPE_CHECKING:
    import torch

# the examples shown for a shape out of range (llama_60m's)
_SHAPE_EXAMPLES = {"hidden_size": 512, "intermediate_size": 1376, "num_hidden_layers": 8, "num_attention_heads": 8,
                   "max_position_embeddings": 1024}


def stand_in_model(model_cfg: DictConfig) -> torch.nn.Module:
    """The configured LLaMA on the meta device, or a sentence saying why it cannot be built."""
    from hydra.utils import instantiate

    from optsweep.models.llama import build_llama

    for key, example in _SHAPE_EXAMPLES.items():
        if key in model_cfg:
            require_integer(model_cfg, f"model.{key}", least=1, example=example)
    require_integer(model_cfg, "model.vocab_size", least=1, example=32000, nullable=True)
    require_integer(model_cfg, "model.num_key_value_heads", least=1, example=model_cfg.get("num_attention_heads"),
                    nullable=True)
    heads = model_cfg.get("num_attention_heads")
    hidden = model_cfg.get("hidden_size")
    if hidden is not None and heads and hidden % heads:
        raise ConfigError(f"model.hidden_size={hidden} is not divisible by model.num_attention_heads={heads}: "
                          "choose a hidden size that is a multiple of the head count")
    kv_heads = model_cfg.get("num_key_value_heads")
    if kv_heads and heads and heads % kv_heads:
        raise ConfigError(f"model.num_key_value_heads={kv_heads} does not divide model.num_attention_heads={heads}: "
                          "choose a divisor, or null for one key/value head per attention head")
    try:
        spec = instantiate(model_cfg)
        return build_llama(spec, vocab_size=spec.vocab_size or 32000, device="meta")
    except UserError:
        raise
    except Exception as error:  # noqa: BLE001 - whatever the shapes break is the config's doing
        cause = error.__cause__ or error
        raise ConfigError(f"model={model_cfg.get('name')} cannot be built ({one_line(cause)}): fix the model.* "
                          "setting it names") from None


def check_sequence_length(cfg: DictConfig) -> None:
    seq_len = cfg.data.get("seq_len")
    positions = cfg.model.get("max_position_embeddings")
    if seq_len is not None and positions is not None and seq_len > positions:
        raise ConfigError(
            f"data.seq_len={seq_len} exceeds model {cfg.model.get('name')}'s max_position_embeddings={positions}: "
            f"set data.seq_len<={positions} or raise model.max_position_embeddings"
        )


def check_vocabulary(model_vocab: int | None, max_token_id: int, tokenizer_name: str) -> None:
    """The tokenizer must never produce an id the model has no embedding row for."""
    if model_vocab is not None and max_token_id >= model_vocab:
        raise ConfigError(
            f"tokenizer {tokenizer_name} produces ids up to {max_token_id} but model.vocab_size={model_vocab}: "
            f"set model.vocab_size>={max_token_id + 1} (or null to take the tokenizer's size)"
        )
