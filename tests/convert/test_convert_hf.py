"""``replace_embeddings`` on tiny Hugging Face models built from configs (nothing is downloaded): the same logits,
the same tied Parameter, the same checkpoints, the same training losses; ``stable=True`` trains as bitsandbytes'
recipe does and round-trips through ``save_pretrained`` / ``from_pretrained``."""
from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import torch

import triton_embed
from _support.peers import needs

VOCAB, PAD, STEPS = 512, 0, 10
#: The lookups are exact; the weight gradient sums the same float32 rows in another order than PyTorch's
#: (and StableEmbedding's LayerNorm reduces in another order), so a step may differ by float32 rounding
#: (~1e-7 relative), which AdamW carries into later steps: 1e-5 leaves room for that and for nothing else.
RTOL = 1e-5


def make(kind: str) -> torch.nn.Module:
    """A tiny randomly initialised model, the same for the same ``kind``."""
    import transformers

    torch.manual_seed(0)
    if kind == "llama":
        config = transformers.LlamaConfig(
            vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=4, max_position_embeddings=64, tie_word_embeddings=True, pad_token_id=PAD,
            bos_token_id=1, eos_token_id=2,
        )
        return transformers.LlamaForCausalLM(config)
    config = transformers.GPT2Config(
        vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=64, resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, bos_token_id=1, eos_token_id=2,
    )
    return transformers.GPT2LMHeadModel(config)


def batches() -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``STEPS`` batches of 2 × 16 ids; the first row ends in 1–5 padding tokens (masked, not predicted)."""
    generator = torch.Generator().manual_seed(1)
    out = []
    for step in range(STEPS):
        ids = torch.randint(PAD + 1, VOCAB, (2, 16), generator=generator)
        ids[0, 15 - step % 5:] = PAD
        mask = (ids != PAD).long()
        out.append((ids, mask, ids.masked_fill(mask == 0, -100)))
    return out


def train(model: torch.nn.Module) -> list[float]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for ids, mask, labels in batches():
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def logits(model: torch.nn.Module) -> torch.Tensor:
    ids, mask, _ = batches()[0]
    with torch.no_grad():
        return model.eval()(input_ids=ids, attention_mask=mask).logits


EMBEDDINGS = {"llama": ["model.embed_tokens"], "gpt2": ["transformer.wte", "transformer.wpe"]}


def embeddings(model: torch.nn.Module, kind: str) -> list[torch.nn.Module]:
    return [model.get_submodule(name) for name in EMBEDDINGS[kind]]


@needs("transformers")
@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_same_logits_tied_parameter_and_checkpoint(kind, tmp_path):
    model = make(kind)
    expected, keys = logits(model), list(model.state_dict())
    table = model.get_input_embeddings().weight
    assert triton_embed.replace_embeddings(model) is model
    assert all(type(m) is triton_embed.Embedding for m in embeddings(model, kind))
    assert model.get_input_embeddings().weight is table and model.lm_head.weight is table
    assert list(model.state_dict()) == keys
    assert torch.equal(logits(model), expected)  # bitwise: the lookups are exact
    model.save_pretrained(tmp_path)  # a plain checkpoint, loadable without triton_embed
    loaded = type(model).from_pretrained(tmp_path)
    assert torch.equal(logits(loaded), expected)
    loaded = triton_embed.replace_embeddings(loaded)
    assert loaded.lm_head.weight is loaded.get_input_embeddings().weight and torch.equal(logits(loaded), expected)


@needs("transformers")
@pytest.mark.parametrize("kind, deterministic", [("llama", False), ("llama", True), ("gpt2", True)])
def test_training_losses_match_the_unconverted_model(kind, deterministic):
    expected = train(make(kind))
    model = triton_embed.replace_embeddings(make(kind), deterministic=deterministic)
    assert all(m.deterministic == deterministic for m in embeddings(model, kind))
    losses = train(model)
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(expected), rtol=RTOL, atol=0)
    assert model.lm_head.weight is model.get_input_embeddings().weight


def _with_bitsandbytes_recipe(model: torch.nn.Module) -> torch.nn.Module:
    """A copy whose StableEmbedding is the pure-PyTorch reference module (bitsandbytes' forward, op for op),
    holding the copy's tied weight and LayerNorm."""
    model = copy.deepcopy(model)
    ours = model.model.embed_tokens
    theirs = triton_embed.reference.StableEmbedding(VOCAB, 64, padding_idx=PAD, _weight=ours.weight.detach())
    theirs.weight, theirs.norm = ours.weight, ours.norm
    model.model.embed_tokens = theirs
    return model


@needs("transformers")
def test_stable_trains_like_bitsandbytes_and_round_trips(tmp_path):
    import safetensors.torch
    import transformers

    model = make("llama")
    keys, table = set(model.state_dict()), model.model.embed_tokens.weight
    triton_embed.replace_embeddings(model, stable=True)
    emb = model.model.embed_tokens
    assert type(emb) is triton_embed.StableEmbedding and emb.weight is table and model.lm_head.weight is table
    assert set(model.state_dict()) - keys == {"model.embed_tokens.norm.weight", "model.embed_tokens.norm.bias"}
    assert keys <= set(model.state_dict()) and emb.norm.weight.dtype == torch.float32

    expected = train(_with_bitsandbytes_recipe(model))
    losses = train(model)
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(expected), rtol=RTOL, atol=0)
    assert not torch.equal(emb.norm.weight, torch.ones(64))  # the LayerNorm was trained too
    trained = logits(model)

    model.save_pretrained(tmp_path)

    class StableLlama(transformers.LlamaForCausalLM):
        def __init__(self, config):
            super().__init__(config)
            triton_embed.replace_embeddings(self, stable=True)

    loaded = StableLlama.from_pretrained(tmp_path)
    assert type(loaded.model.embed_tokens) is triton_embed.StableEmbedding
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    assert torch.equal(logits(loaded), trained)

    fresh = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.from_pretrained(tmp_path))
    fresh = triton_embed.replace_embeddings(fresh, stable=True)
    safetensors.torch.load_model(fresh, tmp_path / "model.safetensors")  # strict; the tied head is shared
    assert torch.equal(logits(fresh), trained)


@needs("transformers")
def test_readme_section_runs_as_written():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = re.search(r"^## With Hugging Face models\n(.*?)^## ", readme, re.S | re.M)
    assert section, "README has no section 'With Hugging Face models'"
    blocks = re.findall(r"```python\n(.*?)```", section.group(1), re.S)
    assert blocks
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})


def _t5(seed: int) -> torch.nn.Module:
    import transformers

    torch.manual_seed(seed)
    config = transformers.T5Config(vocab_size=96, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4,
                                   decoder_start_token_id=0, dropout_rate=0.0)
    return transformers.T5ForConditionalGeneration(config).eval()


@needs("transformers")
@pytest.mark.filterwarnings("ignore:replace_embeddings.quantize")  # T5's head stays tied to the float table
@pytest.mark.parametrize("quantize", ["int8", "nf4", "fp4"])
def test_t5_with_one_quantized_table_under_three_names_saves_and_loads(quantize, tmp_path):
    """T5's shared, encoder and decoder embeddings are one quantized module: ``save_pretrained`` writes it (the
    int8 SCB buffer was refused as an undeclared shared tensor) and the checkpoint loads back, strict."""
    import safetensors.torch

    model = triton_embed.replace_embeddings(_t5(0), quantize=quantize)
    assert model.shared is model.encoder.embed_tokens is model.decoder.embed_tokens
    ids = torch.tensor([[5, 17, 3, 90]])
    with torch.no_grad():
        expected = model(input_ids=ids, decoder_input_ids=ids).logits
    model.save_pretrained(tmp_path)
    fresh = triton_embed.replace_embeddings(_t5(1), quantize=quantize)
    safetensors.torch.load_model(fresh, tmp_path / "model.safetensors")  # strict
    with torch.no_grad():
        assert torch.equal(fresh(input_ids=ids, decoder_input_ids=ids).logits, expected)


@needs("transformers")
@pytest.mark.parametrize("quantize", ["int8", "nf4"])
def test_a_from_pretrained_subclass_that_quantizes_itself(quantize, tmp_path):
    """``from_pretrained`` builds the model on the meta device, where ``replace_embeddings(quantize=...)`` makes an
    unquantized module; the float checkpoint's table is loaded into it and quantized (at the latest by the
    first forward): the same logits as quantizing the loaded float model."""
    import transformers

    model = make("llama")
    model.config.tie_word_embeddings = False
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    model.save_pretrained(tmp_path)
    expected = triton_embed.replace_embeddings(transformers.LlamaForCausalLM.from_pretrained(tmp_path),
                                               quantize=quantize)

    class QuantizedLlama(transformers.LlamaForCausalLM):
        def __init__(self, config):
            super().__init__(config)
            triton_embed.replace_embeddings(self, quantize=quantize)

    loaded = QuantizedLlama.from_pretrained(tmp_path)
    emb = loaded.model.embed_tokens
    assert type(emb) is type(expected.model.embed_tokens) and not emb.weight.is_meta
    assert torch.equal(logits(loaded), logits(expected)) and emb.is_quantized
    assert torch.equal(emb.dequantize(), expected.model.embed_tokens.dequantize())
