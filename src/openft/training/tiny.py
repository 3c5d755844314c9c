"""Build a tiny, randomly initialised Llama model directory offline, for tests.

The directory looks like any Hugging Face causal-LM checkout: ``config.json``, safetensors weights,
a byte-level BPE tokenizer (round-trips any UTF-8 text) and a ChatML chat template in the style of
SmolLM2 that also renders tools, assistant ``tool_calls`` and ``tool`` messages the way Qwen2.5 does.

The template expects every message ``content`` to be a string (or null for an assistant turn that
only calls tools). Callers normalise OpenAI's list-of-parts content (``[{"type": "text", "text":
...}]``) to a string by joining the text parts before rendering, so the real base models, whose
templates do not understand parts either, see exactly what the tiny one sees.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")

# ChatML as SmolLM2 writes it, plus Qwen2.5's tool rendering. A system block is injected only when
# tools are given, so a plain conversation renders as bare ChatML turns.
CHAT_TEMPLATE = """\
{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages and messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] + '\\n\\n' }}
    {%- endif %}
    {{- '# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n' }}
    {{- 'You are provided with function signatures within <tools></tools> XML tags:\\n<tools>' }}
    {%- for tool in tools %}
        {{- '\\n' }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- '\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments ' }}
    {{- 'within <tool_call></tool_call> XML tags:\\n<tool_call>\\n' }}
    {{- '{"name": <function-name>, "arguments": <args-json-object>}\\n</tool_call><|im_end|>\\n' }}
{%- elif messages and messages[0]['role'] == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if message['role'] == 'system' and loop.first %}
    {%- elif message['role'] == 'assistant' and message.get('tool_calls') %}
        {{- '<|im_start|>assistant' }}
        {%- if message['content'] %}
            {{- '\\n' + message['content'] }}
        {%- endif %}
        {%- for tool_call in message['tool_calls'] %}
            {%- if tool_call['function'] is defined %}
                {%- set tool_call = tool_call['function'] %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' + tool_call['name'] + '", "arguments": ' }}
            {%- if tool_call['arguments'] is string %}
                {{- tool_call['arguments'] }}
            {%- else %}
                {{- tool_call['arguments'] | tojson }}
            {%- endif %}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message['role'] == 'tool' %}
        {%- if loop.first or messages[loop.index0 - 1]['role'] != 'tool' %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' + message['content'] + '\\n</tool_response>' }}
        {%- if loop.last or messages[loop.index0 + 1]['role'] != 'tool' %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- else %}
        {{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

# Enough varied text (ASCII, punctuation, digits, JSON, non-Latin scripts) that BPE learns useful
# merges; bytes it never saw still encode, because the byte-level alphabet is always included.
_CORPUS = (
    "The quick brown fox jumps over the lazy dog. ",
    "What is the capital of France? The capital of France is Paris. ",
    "You are a helpful assistant. Answer the question briefly and politely. ",
    "Hello! How can I help you today? Thank you, goodbye. ",
    '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}} ',
    "<tool_call>\n{}\n</tool_call> <tool_response>\n{}\n</tool_response> <tools></tools> ",
    "def add(a: int, b: int) -> int:\n    return a + b\n",
    "0 1 2 3 4 5 6 7 8 9 10 100 1000 3.14 -42 ",
    "Zürich, São Paulo, Kraków, naïve café, 東京, Москва, مرحبا, 🙂 ",
    "system user assistant tool function parameters description type object string required ",
)


def build_tiny_model(
    path: Path,
    *,
    seed: int = 0,
    vocab_size: int = 512,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    max_position_embeddings: int = 512,
) -> Path:
    """Write a tiny ``LlamaForCausalLM`` with tokenizer and chat template to ``path``; return it.

    Same arguments give byte-identical files. Takes about a second on a CPU.
    """
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = _build_tokenizer(vocab_size)
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        # Grouped-query attention, as SmolLM2 has, so code paths that care about kv heads get exercised.
        num_key_value_heads=num_heads // 2 if num_heads % 2 == 0 else num_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=ids["<|im_start|>"],
        eos_token_id=ids["<|im_end|>"],
        # SmolLM2 pads with its end-of-turn token; the tiny model does too, so code that must not
        # mistake a real end-of-turn for padding is exercised by the fast tests.
        pad_token_id=ids["<|im_end|>"],
    )
    # A private RNG stream so building a model does not disturb the caller's torch seed.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
    )
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def write_tiny_gguf(path: Path, tokenizer_dir: Path, seed: int = 0) -> Path:
    """Write a float32 llama GGUF with the tokenizer and chat template of the tiny model in
    ``tokenizer_dir`` (random weights of the same shape); return its path."""
    import gguf
    import numpy as np

    hidden, layers, heads, kv_heads, ffn = 32, 2, 4, 2, 64
    tokenizer = json.loads((tokenizer_dir / "tokenizer.json").read_text())
    tokens = [t for t, _ in sorted(tokenizer["model"]["vocab"].items(), key=lambda item: item[1])]
    merges = [" ".join(m) if isinstance(m, list) else m for m in tokenizer["model"]["merges"]]
    special = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"}
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(256)
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(
        [gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens]
    )
    writer.add_token_merges(merges)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(2)
    writer.add_chat_template((tokenizer_dir / "chat_template.jinja").read_text())
    rng = np.random.default_rng(seed)

    def weight(name: str, *shape: int) -> None:
        writer.add_tensor(name, (rng.standard_normal(shape) * 0.1).astype(np.float32))

    weight("token_embd.weight", len(tokens), hidden)
    kv_dim = hidden // heads * kv_heads
    for i in range(layers):
        weight(f"blk.{i}.attn_q.weight", hidden, hidden)
        weight(f"blk.{i}.attn_k.weight", kv_dim, hidden)
        weight(f"blk.{i}.attn_v.weight", kv_dim, hidden)
        weight(f"blk.{i}.attn_output.weight", hidden, hidden)
        weight(f"blk.{i}.ffn_gate.weight", ffn, hidden)
        weight(f"blk.{i}.ffn_up.weight", ffn, hidden)
        weight(f"blk.{i}.ffn_down.weight", hidden, ffn)
        weight(f"blk.{i}.attn_norm.weight", hidden)
        weight(f"blk.{i}.ffn_norm.weight", hidden)
    weight("output_norm.weight", hidden)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _build_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(list(_CORPUS) * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
        chat_template=CHAT_TEMPLATE,
        model_max_length=1_000_000,
    )
