"""``AceStepDemoConfig``: the ACE-Step 1.5 config field names, defaults = the shipped 2B values.

Standalone (copied into demo checkpoint folders next to ``acestep_demo_modeling.py``): imports only
transformers and the standard library.
"""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig


class AceStepDemoConfig(PretrainedConfig):
    """ACE-Step 1.5 config field names; defaults are the shipped 2B values (ACE_STEP.md §1.3)."""

    model_type = "acestep_demo"

    def __init__(
        self,
        hidden_size: int = 2048,
        intermediate_size: int = 6144,
        num_hidden_layers: int = 24,
        num_audio_decoder_hidden_layers: int | None = None,
        num_attention_heads: int = 16,
        num_key_value_heads: int = 8,
        head_dim: int = 128,
        hidden_act: str = "silu",
        rms_norm_eps: float = 1e-6,
        rope_theta: float = 1_000_000.0,
        rope_scaling: dict | None = None,
        max_position_embeddings: int = 32768,
        attention_bias: bool = False,
        attention_dropout: float = 0.0,
        use_sliding_window: bool = True,
        sliding_window: int = 128,
        layer_types: list[str] | None = None,
        in_channels: int = 192,
        audio_acoustic_hidden_dim: int = 64,
        patch_size: int = 2,
        text_hidden_dim: int = 1024,
        num_lyric_encoder_hidden_layers: int = 8,
        num_timbre_encoder_hidden_layers: int = 4,
        timbre_hidden_dim: int = 64,
        timbre_fix_frame: int = 750,
        timestep_mu: float = -0.4,
        timestep_sigma: float = 1.0,
        data_proportion: float = 0.5,
        is_turbo: bool = False,
        model_version: str = "base",
        initializer_range: float = 0.02,
        use_cache: bool = False,
        **kwargs: Any,
    ) -> None:
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_audio_decoder_hidden_layers = num_audio_decoder_hidden_layers or num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.head_dim = head_dim
        self.hidden_act = hidden_act
        self.rms_norm_eps = rms_norm_eps
        self.rope_theta = rope_theta
        self.rope_scaling = rope_scaling
        self.max_position_embeddings = max_position_embeddings
        self.attention_bias = attention_bias
        self.attention_dropout = attention_dropout
        self.use_sliding_window = use_sliding_window
        self.sliding_window = sliding_window
        # Even layers see a local window, odd layers everything (the shipped default).
        depth = max(num_hidden_layers, num_lyric_encoder_hidden_layers, num_timbre_encoder_hidden_layers)
        self.layer_types = (
            list(layer_types)
            if layer_types is not None
            else ["sliding_attention" if (use_sliding_window and i % 2 == 0) else "full_attention" for i in range(depth)]
        )
        self.in_channels = in_channels
        self.audio_acoustic_hidden_dim = audio_acoustic_hidden_dim
        self.patch_size = patch_size
        self.text_hidden_dim = text_hidden_dim
        self.num_lyric_encoder_hidden_layers = num_lyric_encoder_hidden_layers
        self.num_timbre_encoder_hidden_layers = num_timbre_encoder_hidden_layers
        self.timbre_hidden_dim = timbre_hidden_dim
        self.timbre_fix_frame = timbre_fix_frame
        self.timestep_mu = timestep_mu
        self.timestep_sigma = timestep_sigma
        self.data_proportion = data_proportion
        self.is_turbo = is_turbo
        self.model_version = model_version
        self.initializer_range = initializer_range
        self.use_cache = use_cache
        super().__init__(**kwargs)
