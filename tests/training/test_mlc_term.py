"""The model-agnostic MLC term on a real tiny Llama: formula, masking, layers, padding,
gradients, the joint forward, and that optimising it makes held-out variants more collinear."""

from __future__ import annotations

import pytest
import torch

from polyalign.data.variants import variant_batch
from polyalign.losses import dpo_loss, rank1_share
from polyalign.models import build_tiny_model, build_tiny_tokenizer
from polyalign.training.extractor import MLCExtractor
from polyalign.training.forward import model_sequence_logps
from polyalign.training.mlc_term import (
    append_rows,
    encode_variants,
    gather_last_token,
    last_token_positions,
    mlc_term,
    scatter_variants,
    should_apply,
)

LANGS = ["en", "de", "fr", "es", "it"]
# Self-written parallel sentences (en, de, fr, es, it).
PARALLEL = [
    ("Where is the train station?", "Wo ist der Bahnhof?", "Où est la gare ?", "¿Dónde está la estación de tren?",
     "Dov'è la stazione?"),
    ("I would like a cup of coffee.", "Ich hätte gern eine Tasse Kaffee.", "Je voudrais une tasse de café.",
     "Quisiera una taza de café.", "Vorrei una tazza di caffè."),
    ("The weather is nice today.", "Das Wetter ist heute schön.", "Il fait beau aujourd'hui.",
     "Hoy hace buen tiempo.", "Oggi fa bel tempo."),
    ("How old are you?", "Wie alt bist du?", "Quel âge as-tu ?", "¿Cuántos años tienes?", "Quanti anni hai?"),
    ("My brother lives in the city.", "Mein Bruder wohnt in der Stadt.", "Mon frère habite en ville.",
     "Mi hermano vive en la ciudad.", "Mio fratello vive in città."),
    ("Please close the window.", "Bitte schließ das Fenster.", "Ferme la fenêtre, s'il te plaît.",
     "Por favor, cierra la ventana.", "Per favore, chiudi la finestra."),
    ("We are going to the beach tomorrow.", "Wir fahren morgen an den Strand.", "Nous allons à la plage demain.",
     "Mañana vamos a la playa.", "Domani andiamo al mare."),
    ("The book is on the table.", "Das Buch liegt auf dem Tisch.", "Le livre est sur la table.",
     "El libro está sobre la mesa.", "Il libro è sul tavolo."),
    ("Can you help me, please?", "Kannst du mir bitte helfen?", "Peux-tu m'aider, s'il te plaît ?",
     "¿Puedes ayudarme, por favor?", "Puoi aiutarmi, per favore?"),
    ("I don't understand the question.", "Ich verstehe die Frage nicht.", "Je ne comprends pas la question.",
     "No entiendo la pregunta.", "Non capisco la domanda."),
    # held out below this line
    ("The children are playing in the garden.", "Die Kinder spielen im Garten.",
     "Les enfants jouent dans le jardin.", "Los niños juegan en el jardín.", "I bambini giocano in giardino."),
    ("What time does the shop open?", "Wann öffnet der Laden?", "À quelle heure ouvre le magasin ?",
     "¿A qué hora abre la tienda?", "A che ora apre il negozio?"),
    ("She reads a newspaper every morning.", "Sie liest jeden Morgen eine Zeitung.",
     "Elle lit un journal chaque matin.", "Ella lee un periódico cada mañana.", "Lei legge un giornale ogni mattina."),
    ("The soup is too hot.", "Die Suppe ist zu heiß.", "La soupe est trop chaude.",
     "La sopa está demasiado caliente.", "La zuppa è troppo calda."),
    ("I lost my keys yesterday.", "Ich habe gestern meine Schlüssel verloren.", "J'ai perdu mes clés hier.",
     "Ayer perdí mis llaves.", "Ieri ho perso le chiavi."),
    ("Our teacher speaks three languages.", "Unsere Lehrerin spricht drei Sprachen.",
     "Notre professeure parle trois langues.", "Nuestra profesora habla tres idiomas.",
     "La nostra insegnante parla tre lingue."),
]
N_TRAIN = 10


def _examples(rows, langs=LANGS, drop=None):
    """Variant dicts; ``drop`` maps example index -> languages to leave out."""
    drop = drop or {}
    return [{lang: [{"role": "user", "content": text}] for lang, text in zip(LANGS, row)
             if lang in langs and lang not in drop.get(i, ())} for i, row in enumerate(rows)]


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return build_tiny_model("llama", tok, seed=0, num_layers=2)


def _head(dim=32, layer=-1, seed=0):
    torch.manual_seed(seed)
    return MLCExtractor(64, dim, layer)


def _reference_loss(model, batch, head, tau=0.2):
    """Independent float64 computation: loop over examples and present languages, find the
    last token by scanning the mask, apply W h + b, SVD, softmax cross-entropy."""
    out = model.get_decoder()(input_ids=batch["variant_input_ids"], attention_mask=batch["variant_attention_mask"],
                              output_hidden_states=True)
    hidden = out.hidden_states[head.layer].double()
    weight, bias = head.linear.weight.double(), head.linear.bias.double()
    losses = []
    for row in batch["variant_index"].tolist():
        vectors = []
        for n in row:
            if n < 0:
                continue
            mask = batch["variant_attention_mask"][n].tolist()
            last = max(t for t, m in enumerate(mask) if m)
            z = weight @ hidden[n, last] + bias
            vectors.append(z / (z.norm() + 1e-12))
        if len(vectors) < 2:
            continue
        s = torch.linalg.svdvals(torch.stack(vectors))
        logits = s / (s[0] * tau)
        losses.append(-(logits[0] - torch.logsumexp(logits, 0)))
    return torch.stack(losses).mean().item()


def test_should_apply_every_second_step():
    assert [should_apply(s, 2) for s in range(6)] == [True, False, True, False, True, False]
    assert all(should_apply(s, 1) for s in range(5))
    assert [should_apply(s, 3) for s in range(4)] == [True, False, False, True]
    with pytest.raises(ValueError):
        should_apply(0, 0)


def test_last_token_positions_any_padding():
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 1, 0, 0, 0]])
    expected = [max(t for t, m in enumerate(row) if m) for row in mask.tolist()]
    assert last_token_positions(mask).tolist() == expected == [2, 4, 4, 1]
    with pytest.raises(ValueError, match="no tokens"):
        last_token_positions(torch.tensor([[1, 1], [0, 0]]))


def test_scatter_places_rows_and_masks_missing():
    rows = torch.arange(12.0).reshape(4, 3)
    index = torch.tensor([[0, -1, 1], [-1, 2, 3]])
    z, mask = scatter_variants(rows, index)
    for b in range(2):
        for j in range(3):
            n = index[b, j].item()
            assert mask[b, j].item() == (n >= 0)
            assert torch.equal(z[b, j], rows[n] if n >= 0 else torch.zeros(3))
    z0, mask0 = scatter_variants(torch.zeros(0, 3, requires_grad=True), torch.full((2, 3), -1))
    assert z0.shape == (2, 3, 3) and not mask0.any() and z0.requires_grad


def test_a_batch_without_any_variant_gives_a_zero_loss():
    head = _head()
    hidden = torch.zeros(0, 0, 64, requires_grad=True)
    result = mlc_term(hidden, torch.zeros(0, 0, dtype=torch.long), torch.full((2, 5), -1), head)
    assert result.loss.item() == 0 and result.n_examples == 0
    result.loss.backward()  # still attached to the graph: a trainer's backward does not fail
    assert all(p.grad is not None and p.grad.abs().sum() == 0 for p in head.parameters())


def test_term_matches_an_independent_computation(tok, model):
    batch = variant_batch(tok, _examples(PARALLEL[:4], drop={1: ("de",), 3: ("fr", "it", "es", "de")}), LANGS)
    head = _head()
    out = model.get_decoder()(input_ids=batch["variant_input_ids"], attention_mask=batch["variant_attention_mask"])
    result = mlc_term(out.last_hidden_state, batch["variant_attention_mask"], batch["variant_index"], head)
    # example 3 has one language: no signal, and it does not dilute the mean
    assert result.losses[3].item() == 0 and result.n_examples == 3
    assert result.loss.item() == pytest.approx(_reference_loss(model, batch, head), abs=1e-5)
    assert result.loss.item() > 1e-3
    metrics = result.metrics()
    assert metrics["mlc/rank1_share"] == pytest.approx(result.rank1_share[:3].mean().item())
    assert metrics["mlc/present_share"] == pytest.approx((5 + 4 + 5 + 1) / 20)


def test_missing_languages_equal_the_restricted_example(tok, model):
    """An example lacking 2 of 5 languages == the same example with only its 3 languages."""
    head = _head()
    masked = variant_batch(tok, _examples(PARALLEL[:1], drop={0: ("de", "es")}), LANGS)
    restricted = variant_batch(tok, _examples(PARALLEL[:1], langs=["en", "fr", "it"]), ["en", "fr", "it"])
    assert masked["variant_index"].tolist() == [[0, -1, 1, -1, 2]]
    assert restricted["variant_index"].tolist() == [[0, 1, 2]]
    losses = []
    for batch in (masked, restricted):
        out = model.get_decoder()(input_ids=batch["variant_input_ids"], attention_mask=batch["variant_attention_mask"])
        losses.append(mlc_term(out.last_hidden_state, batch["variant_attention_mask"], batch["variant_index"],
                               head).loss.item())
    full = variant_batch(tok, _examples(PARALLEL[:1]), LANGS)
    out = model.get_decoder()(input_ids=full["variant_input_ids"], attention_mask=full["variant_attention_mask"])
    full_loss = mlc_term(out.last_hidden_state, full["variant_attention_mask"], full["variant_index"], head).loss
    assert losses[0] == pytest.approx(losses[1], abs=1e-6)
    assert abs(full_loss.item() - losses[0]) > 1e-4  # the two dropped languages did matter


def test_layer_selection(tok, model):
    batch = variant_batch(tok, _examples(PARALLEL[:3]), LANGS)
    ids, mask = batch["variant_input_ids"], batch["variant_attention_mask"]
    out = model.get_decoder()(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    assert len(out.hidden_states) == 3  # embeddings + 2 layers
    values = {}
    for layer in (0, 1, -1):
        head = _head(layer=layer)
        values[layer] = mlc_term(out.hidden_states, mask, batch["variant_index"], head).loss.item()
        assert values[layer] == pytest.approx(_reference_loss(model, batch, head), abs=1e-5)
        h = encode_variants(model, ids, mask, layer=layer)
        assert torch.allclose(h, gather_last_token(out.hidden_states[layer], mask), atol=1e-5)
    assert len({round(v, 5) for v in values.values()}) == 3
    with pytest.raises(ValueError, match="out of range"):
        mlc_term(out.hidden_states, mask, batch["variant_index"], _head(layer=3))


def test_left_and_right_padding_give_the_same_z(tok, model):
    head = _head()
    zs = []
    for side in ("right", "left"):
        batch = variant_batch(tok, _examples(PARALLEL[:4], drop={2: ("it",)}), LANGS, padding_side=side)
        h = encode_variants(model, batch["variant_input_ids"], batch["variant_attention_mask"])
        zs.append(scatter_variants(head(h), batch["variant_index"])[0])
    lengths = batch["variant_attention_mask"].sum(1)
    assert lengths.min() < lengths.max()  # padding really differs between rows
    assert torch.allclose(zs[0], zs[1], atol=1e-5)


def test_gradients_reach_extractor_and_model(tok):
    model = build_tiny_model("llama", tok, seed=3).train()
    head = _head()
    batch = variant_batch(tok, _examples(PARALLEL[:3]), LANGS)
    out = model.get_decoder()(input_ids=batch["variant_input_ids"], attention_mask=batch["variant_attention_mask"])
    mlc_term(out.last_hidden_state, batch["variant_attention_mask"], batch["variant_index"], head).loss.backward()
    for name, param in [*head.named_parameters(), *model.model.named_parameters()]:
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_joint_forward_rows_equal_separate_forwards(tok, model):
    """append_rows: preference rows and variant rows in one forward give each their own result."""
    texts = ["<|user|>\nHi<|end|>\n<|assistant|>\nHello there, how can I help?<|end|>\n", "<|user|>\nx<|end|>\n"]
    enc = tok(texts, padding=True, return_tensors="pt")
    batch = variant_batch(tok, _examples(PARALLEL[:2]), LANGS, padding_side="left")
    ids, mask = append_rows(enc["input_ids"], enc["attention_mask"], batch["variant_input_ids"],
                            batch["variant_attention_mask"], tok.pad_token_id)
    joint = model.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state
    alone = model.get_decoder()(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
    width = enc["input_ids"].shape[1]
    real = enc["attention_mask"].bool()
    assert torch.allclose(joint[:2, :width][real], alone[real], atol=1e-5)
    variants = encode_variants(model, batch["variant_input_ids"], batch["variant_attention_mask"])
    assert torch.allclose(gather_last_token(joint[2:], mask[2:]), variants, atol=1e-5)


def _dpo_tensors(tok, rows):
    seqs = []
    for answer in ("Sure, here is a careful answer.<|end|>\n", "No way.<|end|>\n"):
        for row in rows:
            prompt = tok.apply_chat_template([{"role": "user", "content": row[0]}], tokenize=True, return_dict=True,
                                             add_generation_prompt=True)["input_ids"]
            seqs.append((prompt, tok(answer)["input_ids"]))
    width = max(len(p) + len(a) for p, a in seqs)
    ids = torch.full((len(seqs), width), tok.pad_token_id)
    attn, resp = torch.zeros_like(ids), torch.zeros_like(ids, dtype=torch.bool)
    for i, (p, a) in enumerate(seqs):
        ids[i, : len(p) + len(a)] = torch.tensor(p + a)
        attn[i, : len(p) + len(a)] = 1
        resp[i, len(p): len(p) + len(a)] = True
    return ids, attn, resp


def _held_out_rank1(model, head, batch):
    """Mean rank-1 share over held-out examples, in the extractor's space and of raw hidden states."""
    with torch.no_grad():
        h = encode_variants(model, batch["variant_input_ids"], batch["variant_attention_mask"])
        z, mask = scatter_variants(head(h), batch["variant_index"])
        raw, _ = scatter_variants(h, batch["variant_index"])
    return rank1_share(z, mask).mean().item(), rank1_share(raw, mask).mean().item()


def _train(tok, use_mlc, steps=20):
    """A short manual DPO loop (beta 0.1, summed log-probs), plus 0.8 * MLC every 2nd step."""
    model = build_tiny_model("llama", tok, seed=0).train()
    ref = build_tiny_model("llama", tok, seed=0)
    head = _head()
    train = variant_batch(tok, _examples(PARALLEL[:N_TRAIN]), LANGS)
    held = variant_batch(tok, _examples(PARALLEL[N_TRAIN:]), LANGS)
    ids, attn, resp = _dpo_tensors(tok, PARALLEL[:N_TRAIN])
    with torch.no_grad():
        ref_logps = model_sequence_logps(ref, ids, attn, resp)[0]
    optimizer = torch.optim.Adam([*model.parameters(), *head.parameters()], lr=3e-3)
    before = _held_out_rank1(model, head, held)
    for step in range(steps):
        logps = model_sequence_logps(model, ids, attn, resp)[0]
        losses, _, _ = dpo_loss(logps[:N_TRAIN], logps[N_TRAIN:], ref_logps[:N_TRAIN], ref_logps[N_TRAIN:], beta=0.1)
        loss = losses.mean()
        if use_mlc and should_apply(step, 2):
            out = model.get_decoder()(input_ids=train["variant_input_ids"],
                                      attention_mask=train["variant_attention_mask"])
            loss = loss + 0.8 * mlc_term(out.last_hidden_state, train["variant_attention_mask"],
                                         train["variant_index"], head).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return before, _held_out_rank1(model, head, held)


def test_training_raises_held_out_rank1_share(tok):
    """DPO + MLC makes the variants of prompts never trained on more collinear, both after
    the extractor and in the model's own hidden states, and more so than DPO alone."""
    (z0, raw0), (z_mlc, raw_mlc) = _train(tok, use_mlc=True)
    (z0_b, raw0_b), (z_dpo, raw_dpo) = _train(tok, use_mlc=False)
    assert (z0, raw0) == (z0_b, raw0_b)  # same start
    assert z_mlc > z0 + 0.05 and raw_mlc > raw0 + 0.05
    assert z_mlc > z_dpo + 0.02 and raw_mlc > raw_dpo + 0.02
