"""Self-written fixtures, one per class of real-world mess the full public releases show
(harmless sentences written for these tests). Each builder writes into a folder and
returns what an independent reader must find there."""

from __future__ import annotations

import csv
import json
from pathlib import Path

# "The weather is nice today, let's go for a walk in the park." and similar, per language.
WALK = {
    "en": ["The weather is lovely today, so let us take a walk in the park.",
           "Could you recommend a good book about the history of tea?",
           "My grandmother bakes the best apple pie in the whole village."],
    "de": ["Das Wetter ist heute herrlich, also lass uns im Park spazieren gehen.",
           "Kannst du mir ein gutes Buch über die Geschichte des Tees empfehlen?",
           "Meine Großmutter backt den besten Apfelkuchen im ganzen Dorf."],
    "zh": ["今天天气很好，我们一起去公园散步吧。",
           "你能推荐一本关于茶叶历史的好书吗？",
           "我奶奶烤的苹果派是全村最好吃的。"],
    "sw": ["Leo hali ya hewa ni nzuri sana, twende tukatembee bustanini.",
           "Unaweza kunipendekezea kitabu kizuri kuhusu historia ya chai?",
           "Bibi yangu huoka mkate bora wa tufaha katika kijiji kizima."],
    "hbs": ["Danas je vrijeme jako lijepo, hajdemo u šetnju parkom.",
            "Možeš li mi preporučiti dobru knjigu o povijesti čaja?",
            "Moja baka peče najbolju pitu od jabuka u cijelom selu."],
}


def write_csv(path: Path, rows: list[list[str]], bom: bool = True) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8-sig" if bom else "utf-8", newline="") as handle:
        csv.writer(handle, lineterminator="\r\n").writerows(rows)


def write_xlsx(path: Path, rows: list[list[str]]) -> None:
    import openpyxl

    path.parent.mkdir(parents=True, exist_ok=True)
    book = openpyxl.Workbook()
    for row in rows:
        book.active.append(row)
    book.save(path)


def write_xsafety(root: Path) -> dict:
    """en and de folders, 3 categories, every XSafety quirk once: ``_n``/``_en`` suffixes,
    a truncated name, trailing empty columns, an ``.xlsx`` file, a whitespace-only row, a
    second (alternative) commonsense file."""
    en, de = WALK["en"], WALK["de"]
    write_csv(root / "en" / "Insult_n.csv", [[t] for t in en])
    write_csv(root / "en" / "Physical_Harm_en.csv", [[t, "", ""] for t in en])  # trailing empty columns
    write_csv(root / "en" / "commonsense.csv", [[t] for t in en], bom=False)
    write_csv(root / "de" / "Insult.csv", [[de[0]], ["   "], [de[2]]])  # whitespace-only row 2
    write_xlsx(root / "de" / "Physical_Har.xlsx", [[t] for t in de])   # truncated name, xlsx
    write_csv(root / "de" / "commonsense.csv", [[t] for t in de])
    write_csv(root / "de" / "commen_sense.csv", [[t.upper()] for t in de])  # a second translation
    return {"records": 3 * 3 + 2 + 3 + 3, "skipped": {"empty text": 1, "alternative file": 3}, "rows": 21,
            "categories": {"Insult", "Physical_Harm", "Commonsense"}}


def _rtplx_row(text: str, index: str | int, locale: str, dialect: str = "") -> dict:
    return {"Prompt": text, "Completion": "", "Index": index, "Locale": locale, "Dialect": dialect,
            "Annotations": {"Toxicity": 1.0}, "AnnotationsRaw": {"Toxicity": [1, 1, 1]}}


def write_rtplx(root: Path) -> dict:
    """A 2024-style RTP-LX folder: a BCMS file (4-letter locale), DE and DE-CH files
    sharing indices, hand-written ``Index == "NA"`` rows, a README that is no data."""
    root.mkdir(parents=True, exist_ok=True)
    files = {
        "RTP_LX_DE.json": [_rtplx_row(t, i, "DE") for i, t in enumerate(WALK["de"])],
        "RTP_LX_DE-CH.json": [_rtplx_row(WALK["de"][0], 0, "DE-CH", "Swiss"),
                              _rtplx_row(WALK["de"][1], "NA", "DE-CH", "Swiss")],
        "RTP_LX_BCMS.json": [_rtplx_row(WALK["hbs"][0], 2, "BCMS"), _rtplx_row(WALK["hbs"][1], "NA", "BCMS"),
                             _rtplx_row(WALK["hbs"][2], "NA", "BCMS")],
        "RTP_LX_SW.json": [_rtplx_row(WALK["sw"][0], "NA", "SW"), _rtplx_row(WALK["sw"][1], "NA", "SW"),
                           _rtplx_row(WALK["sw"][2], 1, "SW")],
    }
    for name, rows in files.items():
        (root / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    (root / "README.md").write_text("self-written RTP-LX-shaped fixture\n", encoding="utf-8")
    return {"per_language": {"de": 3, "de-CH": 2, "hbs": 3, "sw": 3}, "rows": 11}


def write_llamafactory(folder: Path) -> dict:
    """LLaMA-Factory preference files, both styles, as JSON arrays (plus a TRL JSON array)."""
    folder.mkdir(parents=True, exist_ok=True)
    en, de = WALK["en"], WALK["de"]
    sharegpt = [
        {"conversations": [{"from": "human", "value": en[0]}], "chosen": {"from": "gpt", "value": "Yes, let us go."},
         "rejected": {"from": "gpt", "value": "No."}},
        {"conversations": [{"from": "human", "value": de[1]}, {"from": "gpt", "value": "Gern."},
                           {"from": "human", "value": de[2]}],
         "chosen": {"from": "gpt", "value": "Das klingt wunderbar."}, "rejected": {"from": "gpt", "value": "Nein."},
         "system": "Sei freundlich.", "source": "self-written"},
    ]
    alpaca = [
        {"instruction": en[1], "input": "", "chosen": "Try 'The True History of Tea'.", "rejected": "No."},
        {"instruction": de[0], "input": de[2], "chosen": "Sehr gern.", "rejected": "Nein.",
         "history": [[de[1], "Gern."]], "system": "Sei freundlich."},
    ]
    trl = [{"prompt": en[2], "chosen": "That sounds delicious.", "rejected": "Whatever.", "language": "en"}]
    for name, items in (("sharegpt.json", sharegpt), ("alpaca.json", alpaca), ("trl_array.json", trl)):
        (folder / name).write_text(json.dumps(items, ensure_ascii=False, indent=2), encoding="utf-8")
    return {"sharegpt": sharegpt, "alpaca": alpaca, "trl": trl}


ZH_ANSWERS = ("好的，这是一个很好的主意，我们一起去吧。", "不要，我今天不想出门。")


def write_mpo_zh_dominant(path: Path) -> dict:
    """Official-MPO-shaped JSON whose dominant (source) side is Chinese, targets English and
    German, plus one item whose target prompt was left untranslated (a short Chinese text
    under 20 characters, so only its script can tell)."""
    items = []
    for target, answers in (("en", ("Sure, let us go together.", "No, I do not want to.")),
                            ("de", ("Gern, lass uns zusammen gehen.", "Nein, ich will nicht."))):
        for i, zh in enumerate(WALK["zh"]):
            items.append({
                "source_conversations": [{"from": "human", "value": zh}],
                "source_chosen": {"from": "gpt", "value": ZH_ANSWERS[0]},
                "source_rejected": {"from": "gpt", "value": ZH_ANSWERS[1]},
                "target_conversations": [{"from": "human", "value": WALK[target][i]}],
                "target_chosen": {"from": "gpt", "value": answers[0]},
                "target_rejected": {"from": "gpt", "value": answers[1]},
            })
    items.append({
        "source_conversations": [{"from": "human", "value": "你好吗？今天过得怎么样？"}],
        "source_chosen": {"from": "gpt", "value": ZH_ANSWERS[0]},
        "source_rejected": {"from": "gpt", "value": ZH_ANSWERS[1]},
        "target_conversations": [{"from": "human", "value": "你好吗？今天过得怎么样？"}],
        "target_chosen": {"from": "gpt", "value": "I am fine, thank you for asking."},
        "target_rejected": {"from": "gpt", "value": "Leave me alone, I do not care."},
    })
    path.write_text(json.dumps(items, ensure_ascii=False, indent=4), encoding="utf-8")
    return {"items": 7, "targets": {"en": 3, "de": 3}, "untranslated": 6}
