"""A small, honest stand-in for the ACE-Step 1.5 DiT, loadable with ``trust_remote_code``.

STANDALONE on purpose: this file and ``configuration_acestep_demo.py`` are copied verbatim into demo
checkpoint folders and imported by transformers' dynamic-module loader, so they may import only
torch, transformers, the standard library and each other (never ``engine.*``).

It reproduces what a trainer touches in the real checkpoint (ACE_STEP.md §1.3, §2.2, §3, §13):
the ``AceStepConditionGenerationModel`` top level with ``decoder`` / ``encoder`` /
``null_condition_emb``; the decoder's module tree and parameter names (``proj_in.1``,
``time_embed{,_r}.{linear_1,linear_2,time_proj}``, ``condition_embedder``,
``layers.N.{self_attn,cross_attn}.{q,k,v,o}_proj`` + ``q_norm``/``k_norm``, ``layers.N.mlp.{gate,up,down}_proj``,
the AdaLN ``scale_shift_table`` tensors, ``norm_out``, ``proj_out.1``, a non-persistent RoPE
``inv_freq``); its forward signature and return value; and its quirks (both masks reset to ``None``,
inputs must already be in the model dtype). The tokenizer/detokenizer (audio codes) are left out:
training never runs them. With the default config the decoder has the real 2B sizes (~1.58 B params).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.qwen3.modeling_qwen3 import (
    Qwen3MLP,
    Qwen3RMSNorm,
    Qwen3RotaryEmbedding,
    apply_rotary_pos_emb,
    eager_attention_forward,
)

from .configuration_acestep_demo import AceStepDemoConfig

TIMESTEP_FEATURES = 256  # sinusoid width fed to time_embed.linear_1


# --------------------------------------------------------------------------- helpers


def additive_window_mask(
    length: int, window: int | None, dtype: torch.dtype, device: torch.device, key_mask: torch.Tensor | None = None
) -> torch.Tensor | None:
    """Bidirectional mask, 0 where a query may attend and the dtype's minimum elsewhere.

    ``window``: each token sees neighbours with ``|i - j| <= window`` (None = everything).
    ``key_mask`` [B, L] (1 = real token) hides padded keys. Returns None when nothing is hidden, so
    sdpa can pick its fastest kernel.
    """
    if window is None and key_mask is None:
        return None
    visible = torch.ones(length, length, dtype=torch.bool, device=device)
    if window is not None:
        pos = torch.arange(length, device=device)
        visible = (pos[:, None] - pos[None, :]).abs() <= window
    visible = visible[None, None]
    if key_mask is not None:
        visible = visible & key_mask.to(device=device, dtype=torch.bool)[:, None, None, :]
    mask = torch.zeros(visible.shape, dtype=dtype, device=device)
    return mask.masked_fill(~visible, torch.finfo(dtype).min)


def pack_sequences(
    first: torch.Tensor, second: torch.Tensor, first_mask: torch.Tensor, second_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate two [B, L, D] sequences and move valid tokens (mask 1) to the front, keeping order.

    Returns the packed states and a bool mask that is True for the first ``sum(mask)`` positions.
    """
    states = torch.cat([first, second], dim=1)
    mask = torch.cat([first_mask, second_mask], dim=1)
    order = torch.argsort(mask.to(torch.int64), dim=1, descending=True, stable=True)
    packed = torch.gather(states, 1, order[..., None].expand(-1, -1, states.shape[-1]))
    valid = mask.to(torch.int64).sum(dim=1, keepdim=True)
    new_mask = torch.arange(mask.shape[1], device=mask.device)[None, :] < valid
    return packed, new_mask


class Transpose(nn.Module):
    """[B, T, C] <-> [B, C, T]; parameter-free, so the conv inside ``proj_in`` / ``proj_out`` is index 1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2)


class TimestepEmbedding(nn.Module):
    """sinusoid(t * scale) -> linear_1 -> SiLU -> linear_2 (= temb) -> SiLU -> time_proj -> [B, 6, H]."""

    def __init__(self, in_channels: int, time_embed_dim: int, scale: float = 1000.0) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.scale = scale
        self.linear_1 = nn.Linear(in_channels, time_embed_dim)
        self.act1 = nn.SiLU()
        self.linear_2 = nn.Linear(time_embed_dim, time_embed_dim)
        self.act2 = nn.SiLU()
        self.time_proj = nn.Linear(time_embed_dim, time_embed_dim * 6)

    def sinusoid(self, t: torch.Tensor) -> torch.Tensor:
        half = self.in_channels // 2
        exponent = torch.arange(half, dtype=torch.float32, device=t.device) / half
        freqs = torch.exp(-math.log(10000.0) * exponent)
        angles = (t.float() * self.scale)[:, None] * freqs[None, :]
        return torch.cat([angles.cos(), angles.sin()], dim=-1)

    def forward(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Like the real model, the features take t's dtype: callers pass t in the model dtype.
        temb = self.linear_2(self.act1(self.linear_1(self.sinusoid(t).to(t.dtype))))
        proj = self.time_proj(self.act2(temb)).unflatten(1, (6, -1))
        return temb, proj


class AceStepAttention(nn.Module):
    """GQA attention with per-head q/k RMSNorm; RoPE and the sliding window on self-attention only."""

    def __init__(self, config: AceStepDemoConfig, layer_idx: int, is_cross_attention: bool = False) -> None:
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.num_key_value_groups = config.num_attention_heads // config.num_key_value_heads
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_dropout
        self.is_causal = False
        self.is_cross_attention = is_cross_attention
        q_out = config.num_attention_heads * self.head_dim
        kv_out = config.num_key_value_heads * self.head_dim
        self.q_proj = nn.Linear(config.hidden_size, q_out, bias=config.attention_bias)
        self.k_proj = nn.Linear(config.hidden_size, kv_out, bias=config.attention_bias)
        self.v_proj = nn.Linear(config.hidden_size, kv_out, bias=config.attention_bias)
        self.o_proj = nn.Linear(q_out, config.hidden_size, bias=config.attention_bias)
        self.q_norm = Qwen3RMSNorm(self.head_dim, eps=config.rms_norm_eps)
        self.k_norm = Qwen3RMSNorm(self.head_dim, eps=config.rms_norm_eps)
        sliding = config.layer_types[layer_idx] == "sliding_attention" and not is_cross_attention
        self.sliding_window = config.sliding_window if sliding else None

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch_shape = hidden_states.shape[:-1]
        query = self.q_norm(self.q_proj(hidden_states).view(*batch_shape, -1, self.head_dim)).transpose(1, 2)
        source = encoder_hidden_states if self.is_cross_attention else hidden_states
        if source is None:
            raise ValueError("cross-attention needs encoder_hidden_states")
        source_shape = source.shape[:-1]
        key = self.k_norm(self.k_proj(source).view(*source_shape, -1, self.head_dim)).transpose(1, 2)
        value = self.v_proj(source).view(*source_shape, -1, self.head_dim).transpose(1, 2)
        if not self.is_cross_attention and position_embeddings is not None:
            cos, sin = position_embeddings
            query, key = apply_rotary_pos_emb(query, key, cos, sin)

        attention_interface: Callable = eager_attention_forward
        if self.config._attn_implementation != "eager":
            attention_interface = ALL_ATTENTION_FUNCTIONS[self.config._attn_implementation]
        output, weights = attention_interface(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=self.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
            sliding_window=self.sliding_window,
        )
        output = output.reshape(*batch_shape, -1).contiguous()
        return self.o_proj(output), weights


class AceStepEncoderLayer(GradientCheckpointingLayer):
    """Pre-norm bidirectional transformer block used by the lyric and timbre encoders."""

    def __init__(self, config: AceStepDemoConfig, layer_idx: int) -> None:
        super().__init__()
        self.self_attn = AceStepAttention(config, layer_idx)
        self.input_layernorm = Qwen3RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = Qwen3RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mlp = Qwen3MLP(config)
        self.attention_type = config.layer_types[layer_idx]

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor]:
        attn, _ = self.self_attn(self.input_layernorm(hidden_states), attention_mask, position_embeddings=position_embeddings)
        hidden_states = hidden_states + attn
        hidden_states = hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))
        return (hidden_states,)


class AceStepDiTLayer(GradientCheckpointingLayer):
    """AdaLN-modulated self-attention, plain cross-attention, AdaLN-modulated SwiGLU MLP (ACE_STEP.md §3.2)."""

    def __init__(self, config: AceStepDemoConfig, layer_idx: int) -> None:
        super().__init__()
        hidden = config.hidden_size
        self.self_attn_norm = Qwen3RMSNorm(hidden, eps=config.rms_norm_eps)
        self.self_attn = AceStepAttention(config, layer_idx)
        self.use_cross_attention = True
        self.cross_attn_norm = Qwen3RMSNorm(hidden, eps=config.rms_norm_eps)
        self.cross_attn = AceStepAttention(config, layer_idx, is_cross_attention=True)
        self.mlp_norm = Qwen3RMSNorm(hidden, eps=config.rms_norm_eps)
        self.mlp = Qwen3MLP(config)
        self.scale_shift_table = nn.Parameter(torch.randn(1, 6, hidden) / hidden**0.5)
        self.attention_type = config.layer_types[layer_idx]

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        temb: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_value: Any = None,
        output_attentions: bool | None = False,
        use_cache: bool | None = False,
        cache_position: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor]:
        shift, scale, gate, mlp_shift, mlp_scale, mlp_gate = (self.scale_shift_table + temb).chunk(6, dim=1)

        normed = (self.self_attn_norm(hidden_states) * (1 + scale) + shift).type_as(hidden_states)
        attn, _ = self.self_attn(normed, attention_mask, position_embeddings=position_embeddings)
        hidden_states = (hidden_states + attn * gate).type_as(hidden_states)

        normed = self.cross_attn_norm(hidden_states).type_as(hidden_states)
        attn, _ = self.cross_attn(normed, encoder_attention_mask, encoder_hidden_states=encoder_hidden_states)
        hidden_states = hidden_states + attn

        normed = (self.mlp_norm(hidden_states) * (1 + mlp_scale) + mlp_shift).type_as(hidden_states)
        hidden_states = (hidden_states + self.mlp(normed) * mlp_gate).type_as(hidden_states)
        return (hidden_states,)


class AceStepPreTrainedModel(PreTrainedModel):
    config: AceStepDemoConfig
    config_class = AceStepDemoConfig  # type: ignore[assignment]  # transformers annotates the base attribute as None
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["AceStepEncoderLayer", "AceStepDiTLayer"]  # noqa: RUF012 - transformers reads (and expects) a list
    _supports_flash_attn = True
    _supports_flash_attn_2 = True  # older transformers read this name
    _supports_sdpa = True
    _supports_attention_backend = True

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.ConvTranspose1d)):
            module.weight.data.normal_(mean=0.0, std=std)
            if module.bias is not None:
                module.bias.data.zero_()
        elif isinstance(module, Qwen3RMSNorm):
            module.weight.data.fill_(1.0)


def _rotary_embedding(config: AceStepDemoConfig) -> Qwen3RotaryEmbedding:
    # Duck-typed, as in the shipped model: Qwen3's rotary embedding reads only rope fields this config has.
    return Qwen3RotaryEmbedding(config=config)  # type: ignore[arg-type]


def _self_attention_masks(
    config: AceStepDemoConfig, length: int, dtype: torch.dtype, device: torch.device, key_mask: torch.Tensor | None
) -> dict[str, torch.Tensor | None]:
    """Per layer type: 4-D additive masks for sdpa/eager; flash-attn gets the 2-D padding mask and
    applies the window itself (``sliding_window`` kwarg)."""
    if config._attn_implementation.startswith("flash_attention"):
        return {"full_attention": key_mask, "sliding_attention": key_mask}
    window = config.sliding_window if config.use_sliding_window else None
    return {
        "full_attention": additive_window_mask(length, None, dtype, device, key_mask),
        "sliding_attention": additive_window_mask(length, window, dtype, device, key_mask),
    }


class AceStepLyricEncoder(nn.Module):
    """Lyric token embeddings (text_hidden_dim) -> embed_tokens -> bidirectional layers -> norm."""

    def __init__(self, config: AceStepDemoConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Linear(config.text_hidden_dim, config.hidden_size)
        self.norm = Qwen3RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = _rotary_embedding(config)
        self.layers = nn.ModuleList(AceStepEncoderLayer(config, i) for i in range(config.num_lyric_encoder_hidden_layers))

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.embed_tokens(inputs_embeds)
        positions = torch.arange(hidden.shape[1], device=hidden.device)[None]
        rope = self.rotary_emb(hidden, positions)
        masks = _self_attention_masks(self.config, hidden.shape[1], hidden.dtype, hidden.device, attention_mask)
        for layer in cast("Iterable[AceStepEncoderLayer]", self.layers):
            hidden = layer(hidden, rope, masks[layer.attention_type])[0]
        return self.norm(hidden)


class AceStepTimbreEncoder(nn.Module):
    """Packed reference-audio latents [N, T, timbre_hidden_dim] -> first-position state per reference,
    unpacked to [B, max_refs, H] by ``refer_audio_order_mask`` (the batch index of each reference)."""

    def __init__(self, config: AceStepDemoConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Linear(config.timbre_hidden_dim, config.hidden_size)
        self.norm = Qwen3RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = _rotary_embedding(config)
        self.special_token = nn.Parameter(torch.randn(1, 1, config.hidden_size))
        self.layers = nn.ModuleList(AceStepEncoderLayer(config, i) for i in range(config.num_timbre_encoder_hidden_layers))

    @staticmethod
    def unpack(states: torch.Tensor, order: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        order = order.to(torch.int64)
        batch = int(order.max().item()) + 1
        counts = torch.bincount(order, minlength=batch)
        slots = torch.zeros_like(order)
        for b in range(batch):  # position of each reference within its sample
            where = (order == b).nonzero(as_tuple=True)[0]
            slots[where] = torch.arange(where.numel(), device=order.device)
        out = states.new_zeros(batch, int(counts.max().item()), states.shape[-1])
        out = out.index_put((order, slots), states)
        mask = torch.arange(out.shape[1], device=order.device)[None, :] < counts[:, None]
        return out, mask.to(torch.int64)

    def forward(self, packed: torch.Tensor, order: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.embed_tokens(packed)
        positions = torch.arange(hidden.shape[1], device=hidden.device)[None]
        rope = self.rotary_emb(hidden, positions)
        masks = _self_attention_masks(self.config, hidden.shape[1], hidden.dtype, hidden.device, None)
        for layer in cast("Iterable[AceStepEncoderLayer]", self.layers):
            hidden = layer(hidden, rope, masks[layer.attention_type])[0]
        return self.unpack(self.norm(hidden)[:, 0, :], order)


class AceStepConditionEncoder(AceStepPreTrainedModel):
    """text_projector(text) ‖ lyric_encoder(lyrics) ‖ timbre_encoder(reference) packed valid-first (§5.5)."""

    def __init__(self, config: AceStepDemoConfig) -> None:
        super().__init__(config)
        self.text_projector = nn.Linear(config.text_hidden_dim, config.hidden_size, bias=False)
        self.lyric_encoder = AceStepLyricEncoder(config)
        self.timbre_encoder = AceStepTimbreEncoder(config)
        self.post_init()

    def forward(
        self,
        text_hidden_states: torch.Tensor,
        text_attention_mask: torch.Tensor,
        lyric_hidden_states: torch.Tensor,
        lyric_attention_mask: torch.Tensor,
        refer_audio_acoustic_hidden_states_packed: torch.Tensor,
        refer_audio_order_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        text = self.text_projector(text_hidden_states)
        lyrics = self.lyric_encoder(lyric_hidden_states, lyric_attention_mask)
        timbre, timbre_mask = self.timbre_encoder(refer_audio_acoustic_hidden_states_packed, refer_audio_order_mask)
        states, mask = pack_sequences(lyrics, timbre, lyric_attention_mask, timbre_mask)
        return pack_sequences(states, text, mask, text_attention_mask)


class AceStepDiTModel(AceStepPreTrainedModel):
    """The diffusion transformer: predicts the flow-matching velocity for 25 Hz latents."""

    def __init__(self, config: AceStepDemoConfig) -> None:
        super().__init__(config)
        hidden = config.hidden_size
        self.patch_size = config.patch_size
        self.rotary_emb = _rotary_embedding(config)
        self.layers = nn.ModuleList(AceStepDiTLayer(config, i) for i in range(config.num_hidden_layers))
        self.proj_in = nn.Sequential(
            Transpose(), nn.Conv1d(config.in_channels, hidden, config.patch_size, stride=config.patch_size), Transpose()
        )
        self.time_embed = TimestepEmbedding(TIMESTEP_FEATURES, hidden)
        self.time_embed_r = TimestepEmbedding(TIMESTEP_FEATURES, hidden)
        self.condition_embedder = nn.Linear(hidden, hidden, bias=True)
        self.norm_out = Qwen3RMSNorm(hidden, eps=config.rms_norm_eps)
        self.proj_out = nn.Sequential(
            Transpose(),
            nn.ConvTranspose1d(hidden, config.audio_acoustic_hidden_dim, config.patch_size, stride=config.patch_size),
            Transpose(),
        )
        self.scale_shift_table = nn.Parameter(torch.randn(1, 2, hidden) / hidden**0.5)
        self.gradient_checkpointing = False
        self.post_init()

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        timestep_r: torch.Tensor,
        attention_mask: torch.Tensor | None,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None,
        context_latents: torch.Tensor,
        use_cache: bool | None = None,
        past_key_values: Any = None,
        cache_position: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        output_attentions: bool | None = False,
        return_hidden_states: int | None = None,
        custom_layers_config: dict | None = None,
        enable_early_exit: bool = False,
        **kwargs: Any,
    ) -> torch.Tensor | tuple[torch.Tensor, None]:
        if output_attentions or enable_early_exit:
            raise ValueError("the demo decoder does not return attention maps (output_attentions / enable_early_exit)")
        temb_t, proj_t = self.time_embed(timestep)
        temb_r, proj_r = self.time_embed_r(timestep - timestep_r)
        temb = temb_t + temb_r
        timestep_proj = proj_t + proj_r

        hidden_states = torch.cat([context_latents, hidden_states], dim=-1)
        frames = hidden_states.shape[1]
        if frames % self.patch_size:
            hidden_states = F.pad(hidden_states, (0, 0, 0, self.patch_size - frames % self.patch_size))
        hidden_states = self.proj_in(hidden_states)
        encoder_hidden_states = self.condition_embedder(encoder_hidden_states)

        # As in the shipped model, both padding masks are dropped here: self-attention masks only
        # encode the sliding window and cross-attention sees every encoder position (ACE_STEP.md §3.4).
        attention_mask = None
        encoder_attention_mask = None
        tokens = hidden_states.shape[1]
        masks = _self_attention_masks(self.config, tokens, hidden_states.dtype, hidden_states.device, attention_mask)
        if position_ids is None:
            position_ids = torch.arange(tokens, device=hidden_states.device)[None]
        rope = self.rotary_emb(hidden_states, position_ids)

        for layer in cast("Iterable[AceStepDiTLayer]", self.layers):
            hidden_states = layer(
                hidden_states,
                rope,
                timestep_proj,
                masks[layer.attention_type],
                position_ids,
                None,
                False,
                False,
                cache_position,
                encoder_hidden_states,
                encoder_attention_mask,
            )[0]
        if return_hidden_states:
            return hidden_states

        shift, scale = (self.scale_shift_table + temb[:, None, :]).chunk(2, dim=1)
        hidden_states = (self.norm_out(hidden_states) * (1 + scale) + shift).type_as(hidden_states)
        hidden_states = self.proj_out(hidden_states)[:, :frames, :]
        return (hidden_states, None)


class AceStepConditionGenerationModel(AceStepPreTrainedModel):
    """Top level of the checkpoint: ``decoder`` (trained), ``encoder`` (preprocessing only) and the
    CFG ``null_condition_emb``."""

    def __init__(self, config: AceStepDemoConfig) -> None:
        super().__init__(config)
        self.decoder = AceStepDiTModel(config)
        self.encoder = AceStepConditionEncoder(config)
        self.null_condition_emb = nn.Parameter(torch.randn(1, 1, config.hidden_size))
        self.post_init()
