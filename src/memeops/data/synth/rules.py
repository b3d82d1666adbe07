"""SynthMeme's eight labelling rules: latent variables -> clean labels, explanations, label noise.

Each rule is a small pure function of the latents, so the docs, the tests and the generator all
point at the same code. Rules read only what the paper claim under test needs:

1. ``hateful``      needs text (target's slur family) *and* image (object family);
2. ``sarcasm``      needs text (tone) *and* image (charm);
3. ``offensive`` / ``offensiveness_level`` combine 1 with the caption's rudeness;
4. ``harm_target``  is the named target's type when offensive and related;
5. ``metaphor`` / ``metaphor_type`` read a small image region (vehicle) and the frame;
6. ``intention``, 7. ``sentiment``, 8. ``emotion`` follow from the above and the frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from memeops.data.synth.world import FAMILY_SINGULAR, TASKS, Frame, KeyObject, Target

Labels = dict[str, str | None]


@dataclass(frozen=True)
class Latent:
    """What one meme is made of. ``target`` is None for a weakly correlated (unrelated) meme."""

    target: Target | None
    obj: KeyObject
    frame: Frame
    related: bool

    def __post_init__(self) -> None:
        if self.related != (self.target is not None) or self.frame.has_target != self.related:
            raise ValueError("a related meme names a target with a target frame; an unrelated one neither")


# --- the eight rules -------------------------------------------------------------------------------


def rule_hateful(lat: Latent) -> bool:
    """Rule 1: the object is the pictogram used to demean the named target."""
    return lat.related and lat.target is not None and lat.obj.family == lat.target.slur_family


def rule_sarcastic(lat: Latent) -> bool:
    """Rule 2: a praising caption over a nasty object, or a complaint over a cute one."""
    tone, charm = lat.frame.tone, lat.obj.charm
    return (tone == "praise" and charm == "nasty") or (tone == "complaint" and charm == "cute")


def rule_offensiveness_level(hateful: bool, rude: bool) -> str:
    """Rule 3: none / slight (rude only) / moderate (hateful only) / very (both)."""
    return {(False, False): "none", (False, True): "slight", (True, False): "moderate", (True, True): "very"}[
        (hateful, rude)
    ]


def rule_harm_target(lat: Latent, offensive: bool) -> str | None:
    """Rule 4: the named target's type when offensive and related, else missing."""
    return lat.target.type if offensive and lat.related and lat.target is not None else None


def rule_metaphor_type(vehicle: bool, text_metaphor: bool) -> str | None:
    """Rule 5: both -> complementary, image only -> image_dominant, text only -> text_dominant."""
    if vehicle and text_metaphor:
        return "complementary"
    if vehicle:
        return "image_dominant"
    if text_metaphor:
        return "text_dominant"
    return None


_INTENTION_BY_KIND = {"question": "interactive", "emotional": "expressive", "joke": "entertaining",
                      "descriptive": "other"}


def rule_intention(offensive: bool, kind: str) -> str:
    """Rule 6: offensive if offensive, else by the frame's kind."""
    return "offensive" if offensive else _INTENTION_BY_KIND[kind]


def rule_sentiment(hateful: bool, sarcastic: bool, tone: str) -> str:
    """Rule 7: negative if hateful, sarcastic or complaining; else the tone's polarity."""
    if hateful or sarcastic or tone == "complaint":
        return "negative"
    return "positive" if tone == "praise" else "neutral"


def rule_emotion(hateful: bool, frame_emotion: str) -> str:
    """Rule 8: hate if hateful, else the frame's emotion."""
    return "hate" if hateful else frame_emotion


def clean_labels(lat: Latent) -> Labels:
    """All ten task labels of one meme, before noise (None = missing)."""
    hateful = rule_hateful(lat)
    sarcastic = rule_sarcastic(lat)
    rude = bool(lat.frame.rude)
    offensive = hateful or rude
    mtype = rule_metaphor_type(lat.obj.vehicle, bool(lat.frame.text_metaphor))
    labels: Labels = {
        "hateful": "yes" if hateful else "no",
        "offensive": "yes" if offensive else "no",
        "offensiveness_level": rule_offensiveness_level(hateful, rude),
        "harm_target": rule_harm_target(lat, offensive),
        "metaphor": "yes" if mtype is not None else "no",
        "metaphor_type": mtype,
        "intention": rule_intention(offensive, lat.frame.kind),
        "sarcasm": "twisted_meaning" if sarcastic else "not_sarcastic",
        "sentiment": rule_sentiment(hateful, sarcastic, lat.frame.tone),
        "emotion": rule_emotion(hateful, lat.frame.emotion),
    }
    assert tuple(labels) == TASKS
    return labels


# --- explanations ----------------------------------------------------------------------------------


def _a(word: str) -> str:
    return ("an " if word[0].lower() in "aeiou" else "a ") + word


def explain(lat: Latent, labels: Labels, caption: str) -> dict[str, str]:
    """One templated English sentence per task saying why the clean label holds, naming the evidence."""
    o, f, t = lat.obj, lat.frame, lat.target
    fam = FAMILY_SINGULAR[o.family]
    obj = f"{o.name}, {_a(fam)}"
    quoted = caption.replace("\n", " / ")
    out: dict[str, str] = {}

    if t is None:
        out["hateful"] = (f"The caption ('{quoted}') names no target and is unrelated to the image, so the "
                          f"{o.name} demeans no one: not hateful.")
    elif labels["hateful"] == "yes":
        out["hateful"] = (f"The caption names {t.en} and the image shows a {obj}: the pictogram used to demean "
                          f"{t.en}, so it is hateful.")
    else:
        out["hateful"] = (f"The caption names {t.en}, whose demeaning pictograms are "
                          f"{t.slur_family.replace('_', ' ')}, but the image shows a {obj}: not hateful.")

    why = {"very": "it is hateful and the caption is rude", "moderate": "it is hateful (the wording is polite)",
           "slight": "the caption is rude, though nothing is hateful", "none": "it is neither hateful nor rude"}
    level = labels["offensiveness_level"] or "none"
    out["offensive"] = f"{why[level].capitalize()}, so it is {'offensive' if labels['offensive'] == 'yes' else 'not offensive'}."
    out["offensiveness_level"] = f"Offensiveness is {level}: {why[level]}."

    if labels["harm_target"] is not None and t is not None:
        out["harm_target"] = f"The offensive meme is aimed at {t.en}, {_a(t.type)}, so the target is {t.type}."
    elif labels["offensive"] == "yes":
        out["harm_target"] = "The offensive caption names no target, so there is no harm target."
    else:
        out["harm_target"] = "The meme is not offensive, so there is no harm target."

    image_part = f"the {o.name} stands for {o.meaning}" if o.vehicle else f"the {o.name} carries no figurative meaning"
    text_part = "the caption is a comparison" if f.text_metaphor else "the caption makes no comparison"
    out["metaphor"] = (f"{image_part.capitalize()} and {text_part}, so "
                       f"{'there is a metaphor' if labels['metaphor'] == 'yes' else 'there is no metaphor'}.")
    mtype = labels["metaphor_type"]
    out["metaphor_type"] = {
        "complementary": f"Both modalities compare ({image_part}; {text_part}): complementary.",
        "image_dominant": f"Only the image compares ({image_part}): image dominant.",
        "text_dominant": f"Only the text compares ({text_part}; {image_part}): text dominant.",
        None: "There is no metaphor, so no metaphor type.",
    }[mtype]

    if labels["intention"] == "offensive":
        out["intention"] = "The meme is offensive, so its intention is offensive."
    else:
        out["intention"] = f"The caption is a {f.kind} frame, so the intention is {labels['intention']}."

    if labels["sarcasm"] == "twisted_meaning":
        out["sarcasm"] = f"The caption's {f.tone} contradicts the {o.charm} {o.name}, so the meaning is twisted."
    elif f.tone == "neutral":
        out["sarcasm"] = "The caption's tone is neutral, so nothing is twisted: not sarcastic."
    else:
        out["sarcasm"] = f"The caption's {f.tone} agrees with the {o.charm} {o.name}: not sarcastic."

    if labels["hateful"] == "yes":
        out["sentiment"] = "The meme is hateful, so the sentiment is negative."
    elif labels["sarcasm"] == "twisted_meaning":
        out["sentiment"] = "The meme is sarcastic, so the sentiment is negative."
    else:
        out["sentiment"] = f"The caption's tone is {f.tone}, so the sentiment is {labels['sentiment']}."

    if labels["emotion"] == "hate":
        out["emotion"] = "The meme is hateful, so the emotion is hate."
    else:
        out["emotion"] = f"The caption expresses {labels['emotion']}."
    return {task: out[task] for task in TASKS}


# --- label noise -----------------------------------------------------------------------------------


def apply_noise(clean: Labels, label_sets: dict[str, tuple[str, ...]], rate: float,
                rng: np.random.Generator) -> Labels:
    """Replace each present label, with probability ``rate``, by a different label of its task.

    Missing labels stay missing (noise corrupts annotations, it does not invent them). One uniform
    draw and one choice per task in a fixed order keep the stream, hence the output, deterministic.
    """
    noisy: Labels = {}
    for task in TASKS:
        value = clean[task]
        u = rng.random()
        pick = int(rng.integers(0, 1 << 30))
        if value is not None and u < rate:
            others = [label for label in label_sets[task] if label != value]
            value = others[pick % len(others)]
        noisy[task] = value
    return noisy
