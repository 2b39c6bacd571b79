"""GGUF -> safetensors conversion (``polyalign models import-gguf``) on GGUF files written here.

Each layout (Llama untied, Qwen-2 untied with biases, Gemma-2 and Gemma-3 tied) is written with
a mix of F32, F16, Q8_0 and Q4_1 tensors by ``models_gguf_helpers`` (llama.cpp's layout: Q/K
row permutation for Llama, +1 on Gemma norms). The converted checkpoint must equal, element
by element, (a) transformers' own dequantised GGUF load and (b) an independent float64
dequantisation of the written blocks; its logits must match transformers' GGUF model and stay
close to the unquantised source model; its tokenizer must encode like the source tokenizer.
"""

from __future__ import annotations

import errno
import json

import numpy as np
import pytest
import torch

pytest.importorskip("gguf")

from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from models_gguf_helpers import expected_hf_weights, tiny_source_model, write_gguf  # noqa: E402
from polyalign.cli import main  # noqa: E402
from polyalign.errors import UserError  # noqa: E402
from polyalign.models import CHAT_TEMPLATE, load_model_and_tokenizer  # noqa: E402
from polyalign.real_models.convert import convert_gguf  # noqa: E402
from polyalign.real_models.registry import COMPLETE_MARKER  # noqa: E402

TEXTS = ["The capital of France is Paris.", "Die Hauptstadt ist Berlin, sagte sie.", "Столица России — Москва.",
         "日本の首都は東京です。", "مرحبا بالعالم"]
CASES = [("llama", False), ("qwen2", False), ("gemma2", True), ("gemma3", True)]


def _write(tmp_path, layout, tied):
    model, tokenizer = tiny_source_model(layout, tied=tied)
    src = tmp_path / "src"
    src.mkdir()
    gguf_path = src / f"tiny-{layout}.gguf"
    written = write_gguf(model, tokenizer, layout, gguf_path, chat_template=CHAT_TEMPLATE)
    return model, tokenizer, gguf_path, written


@pytest.mark.parametrize("layout,tied", CASES)
def test_conversion_matches_transformers_and_reference(tmp_path, layout, tied):
    source, source_tok, gguf_path, written = _write(tmp_path, layout, tied)
    kinds = {kind for kind, _ in written.values()}
    assert {"Q8_0", "Q4_1", "F16", "F32"} <= kinds
    out = convert_gguf(gguf_path, tmp_path / "out", provenance={"gguf_sha256": "test"})

    converted, tokenizer = load_model_and_tokenizer(out)
    assert type(converted).__name__ == type(source).__name__
    assert converted.config.tie_word_embeddings is tied
    assert not hasattr(converted.config, "quantization_config")
    if tied:
        assert converted.lm_head.weight.data_ptr() == converted.get_input_embeddings().weight.data_ptr()
    state = converted.state_dict()

    # (a) transformers' own GGUF load, element by element (bit-identical).
    reference = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                     dtype=torch.float32, local_files_only=True).eval()
    ref_state = reference.state_dict()
    assert set(state) == set(ref_state)
    for name, tensor in ref_state.items():
        assert torch.equal(state[name], tensor), name

    # (b) independent float64 dequantisation of the written blocks (un-permuted, norm - 1).
    expected = expected_hf_weights(source, layout, written)
    for name, values in expected.items():
        got = state[name].double().numpy()
        np.testing.assert_allclose(got, values, rtol=1e-6, atol=1e-7, err_msg=name)
    # and close to the unquantised source (4-bit rows: a coarse bound, per tensor scale).
    for name, tensor in source.state_dict().items():
        scale = tensor.abs().max().item()
        assert (state[name] - tensor).abs().max().item() <= 0.2 * scale + 1e-6, name

    ids = torch.tensor([source_tok("The capital of France is Paris. Die Hauptstadt").input_ids])
    with torch.no_grad():
        got_logits = converted(ids).logits
        ref_logits = reference(ids).logits
        src_logits = source(ids).logits
    torch.testing.assert_close(got_logits, ref_logits, rtol=0, atol=1e-5)
    # Quantisation moves the logits a little, a random or mis-mapped model moves them a lot.
    assert (got_logits - src_logits).abs().max() < 0.25 * src_logits.abs().max()
    assert torch.corrcoef(torch.stack([got_logits.flatten(), src_logits.flatten()]))[0, 1] > 0.95

    # The saved tokenizer is the one transformers builds from the GGUF metadata; for a byte-level
    # vocabulary under a Llama / Qwen-2 header that is also the source tokenizer. (Gemma headers
    # make transformers read the vocabulary as sentencepiece: the real Gemma-3 file's tokenizer
    # is checked by the real-model tier's perplexity bound.)
    direct = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name, local_files_only=True)
    for text in TEXTS:
        assert tokenizer(text).input_ids == direct(text).input_ids, text
        if not layout.startswith("gemma"):
            assert tokenizer(text).input_ids == source_tok(text).input_ids, text
    assert tokenizer.chat_template == CHAT_TEMPLATE
    assert (out / "chat_template.jinja").read_text(encoding="utf-8") == CHAT_TEMPLATE
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == (
        source_tok.bos_token, source_tok.eos_token, source_tok.pad_token)
    assert converted.generation_config.eos_token_id == source_tok.eos_token_id
    marker = json.loads((out / COMPLETE_MARKER).read_text(encoding="utf-8"))
    assert marker["parameters"] == sum(p.numel() for p in source.parameters())
    assert marker["gguf_architecture"] == layout and marker["tie_word_embeddings"] is tied
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".safetensors") == ["model.safetensors"]
    assert not list(tmp_path.glob(".out.*"))  # no temporary folder left beside it


def test_import_gguf_cli_and_errors(tmp_path, capsys):
    _, _, gguf_path, _ = _write(tmp_path, "llama", False)
    out = tmp_path / "imported"
    assert main(["models", "import-gguf", str(gguf_path), "-o", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    marker = json.loads((out / COMPLETE_MARKER).read_text(encoding="utf-8"))
    import hashlib

    assert marker["gguf_sha256"] == hashlib.sha256(gguf_path.read_bytes()).hexdigest()
    # the output folder now exists and is not empty: refused, one line, exit 2
    assert main(["models", "import-gguf", str(gguf_path), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not empty" in err
    # not a GGUF file
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"GGUF but not really" * 10)
    assert main(["models", "import-gguf", str(bogus), "-o", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bogus.gguf" in err
    assert not (tmp_path / "x").exists()
    assert main(["models", "import-gguf", str(tmp_path / "missing.gguf"), "-o", str(tmp_path / "y")]) == 2
    assert "no such GGUF file" in capsys.readouterr().err


def test_disk_full_leaves_nothing_complete(tmp_path, monkeypatch):
    _, _, gguf_path, _ = _write(tmp_path, "gemma3", True)

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    from transformers import PreTrainedTokenizerBase

    monkeypatch.setattr(PreTrainedTokenizerBase, "save_pretrained", full)
    with pytest.raises(UserError, match="disk full"):
        convert_gguf(gguf_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.*"))


def test_transformers_tokenizer_from_gguf_matches_converted(tmp_path):
    """The saved tokenizer is the one transformers builds from the GGUF (not re-derived)."""
    _, _, gguf_path, _ = _write(tmp_path, "qwen2", False)
    out = convert_gguf(gguf_path, tmp_path / "out")
    direct = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name, local_files_only=True)
    saved = AutoTokenizer.from_pretrained(str(out))
    for text in TEXTS:
        assert saved(text).input_ids == direct(text).input_ids
    assert saved.model_max_length == 256  # the model's context length, not "unlimited"
