"""Token healing: which prompt tokens are backed off, the healing cursor's masks, and on
smollm2 that a prompt cut mid-token continues as the clean-boundary prompt does."""
from __future__ import annotations

import json

import pytest
import torch

from lmnb.errors import LmnbError
from lmnb.runtime.healing import HealingCursor, HealingTable, plan

# a toy vocabulary: id -> bytes (0 is a special token)
TOKENS = [None, b" ", b" P", b" Par", b" Paris", b"is", b"Paris", b":", b"a", b"b", b" 1", b"1",
          b"2", b" 12", b"\xc3", b"\xa9", b" Fr", b"an", b"ance", b" France"]


@pytest.fixture
def table():
    return HealingTable(TOKENS, len(TOKENS) + 2)   # the model's logits may be wider


class _Req:
    guide = None


def test_plan_backs_off_extendable_tails_only(table):
    assert plan(table, [0, 7, 1]).removed == b" "            # ":" + " " -> regenerate " "
    assert plan(table, [0, 7, 3]).removed == b" Par"
    assert plan(table, [0, 7, 2]).removed == b" P"             # ": P" begins no token: one back
    assert plan(table, [0, 7, 16, 17]).removed == b" Fran"      # " Fr" + "an" -> " France"
    assert plan(table, [0, 7, 16, 17]).removed_tokens == 2
    assert plan(table, [0, 6]) is None                        # "Paris" extends to nothing
    assert plan(table, [1]) is None                           # the first token always stays
    assert plan(table, [0, 0]) is None                        # special tokens are never removed
    p = plan(table, [0, 7, 1])
    assert p.ids == [0, 7] and p.removed_tokens == 1 and p.text == " "


def test_plan_skips_split_characters_and_stop_overlaps(table):
    assert plan(table, [0, 7, 14]) is None                    # b"\xc3" alone is not text
    assert plan(table, [0, 7, 1], stops=(" ",)) is None       # a stop string inside the tail
    assert plan(table, [0, 7, 1], stops=("\n",)) is not None


def test_cursor_allows_only_tokens_consistent_with_the_removed_bytes(table):
    req = _Req()
    cur = HealingCursor(table, b" Par", None, req)
    req.guide = cur
    allowed = {i for i in torch.nonzero(cur.allowed_mask()).flatten().tolist()}
    assert allowed == {1, 2, 3, 4}                            # " ", " P", " Par", " Paris"
    assert not cur.is_terminated() and cur.jump_forward() is None
    cur.accept_token(2)                                       # " P": "ar" still to come
    assert req.guide is cur and set(torch.nonzero(cur.allowed_mask()).flatten().tolist()) == {8}   # "a"
    with pytest.raises(LmnbError, match="does not continue the healed prompt"):
        cur.accept_token(6)


def test_cursor_hands_the_request_back_once_healed(table):
    req = _Req()
    cur = HealingCursor(table, b" ", None, req)
    req.guide = cur
    cur.accept_token(4)                                       # " Paris"
    assert req.guide is None                                  # unconstrained from here on


class _Digits:
    """A stand-in inner constraint: digits only (the public cursor protocol)."""

    def __init__(self, seen: str = "") -> None:
        self.seen = seen

    def allowed_mask(self):
        return torch.tensor([b is not None and b.isdigit() for b in TOKENS] + [False, False])

    def accept_text(self, text: str) -> None:
        if not text.isdigit():
            raise LmnbError("not a digit")
        self.seen += text

    def accept_token(self, token_id: int) -> None:
        self.accept_text(TOKENS[token_id].decode())

    def is_terminated(self) -> bool:
        return False

    def jump_forward(self):
        return None


def test_cursor_composes_with_an_inner_constraint(table):
    req, inner = _Req(), _Digits()
    cur = HealingCursor(table, b" ", inner, req)
    req.guide = cur
    allowed = {i for i in torch.nonzero(cur.allowed_mask()).flatten().tolist()}
    # " " and " 1" (" " + an allowed token); not " Paris", not " 12" ("12" is no token)
    assert allowed == {1, 10}
    cur.accept_token(10)
    assert req.guide is inner and inner.seen == "1"


def test_a_draft_walker_leaves_the_request_and_its_inner_cursor_alone(table):
    """Speculative drafts walk a healing cursor ahead: the walk hands over to a copy of
    the inner cursor (or to no constraint: every token allowed), never to the request."""
    req, inner = _Req(), _Digits()
    cur = HealingCursor(table, b" ", inner, req)
    req.guide = cur
    walk = cur.draft_walker()
    assert torch.equal(walk.allowed_mask(), cur.allowed_mask())
    walk.accept_token(10)                                     # " 1": healed, "1" to the inner copy
    assert req.guide is cur and inner.seen == "" and cur.rest == b" "
    assert torch.equal(walk.allowed_mask(), inner.allowed_mask())
    walk.accept_token(12)                                     # "2"
    assert inner.seen == ""
    free = HealingCursor(table, b" ", None, req).draft_walker()
    free.accept_token(4)                                      # " Paris": unconstrained after
    assert bool(free.allowed_mask().all()) and free.allowed_mask().numel() == len(TOKENS) + 2
    assert not free.is_terminated() and free.jump_forward() is None
    with pytest.raises(LmnbError, match="does not continue the healed prompt"):
        HealingCursor(table, b" Par", None, req).draft_walker().accept_token(6)


def test_a_healed_draft_masks_only_the_positions_healing_constrains(table):
    """A draft over a healing cursor without a grammar behind it carries the healing mask
    for its first position and None (nothing to mask) once the prompt is healed; with a
    grammar behind it every position keeps the grammar's mask."""
    from lmnb.runtime.speculative import Draft, _guided

    req = _Req()
    cur = HealingCursor(table, b" ", None, req)
    req.guide = cur
    d = _guided(cur, Draft([4, 7, 8], "radix"))               # " Paris", ":", "a"
    assert d.tokens == [4, 7, 8] and len(d.masks) == 4
    assert torch.equal(d.masks[0], cur.allowed_mask()) and d.masks[1:] == [None, None, None]
    assert _guided(cur, Draft([6], "radix")) is None          # "Paris" does not begin with " "
    inner = _Digits()
    cur = HealingCursor(table, b" ", inner, req)
    req.guide = cur
    d = _guided(cur, Draft([10, 12, 8], "radix"))             # " 1", "2", then "a": forbidden
    assert d.tokens == [10, 12] and all(m is not None for m in d.masks)
    assert req.guide is cur and inner.seen == ""


# -- on the embedded model -------------------------------------------------------------------
CASES = ["The capital of France is", "Water is made of hydrogen and", "The opposite of hot is"]


@pytest.mark.parametrize("context", CASES)
def test_healed_prompt_continues_like_the_clean_boundary(smollm2, context):
    rt = smollm2
    clean = context + rt.generate(context, max_new_tokens=8, temperature=0)[0]["text"]
    word = clean[len(context):].split()[0]
    for cut in (context + " ", context + " " + word[: (len(word) + 1) // 2]):
        res = rt.generate(cut, max_new_tokens=8, temperature=0, token_healing=True)[0]
        healed = cut + res["text"]
        n = min(len(clean), len(healed))
        assert healed[:n] == clean[:n] and n > len(cut) + 2, (cut, healed, clean)
        removed = res["meta"]["token_healing"]["text"]
        assert cut.endswith(removed) and not res["text"].startswith(removed)   # not repeated
    rt.check_integrity()


def test_unhealed_space_prompt_differs_and_off_means_off(smollm2):
    rt = smollm2
    clean = rt.generate(CASES[0], max_new_tokens=6, temperature=0)[0]["text"]
    res = rt.generate(CASES[0] + " ", max_new_tokens=6, temperature=0)[0]     # runtime default: off
    assert "token_healing" not in res["meta"] and " " + res["text"] != clean
    rt.check_integrity()


def test_healing_streams_the_same_text_and_composes_with_regex_and_json(smollm2):
    rt = smollm2
    h = rt.submit("The capital of France is ", stream=True, max_new_tokens=6, temperature=0,
                  token_healing=True)
    assert "".join(h) == h.result()["text"] and h.result()["text"].startswith("Paris")
    res = rt.generate("Year: ", regex=r"1[0-9]{3}", max_new_tokens=8, temperature=0, token_healing=True)[0]
    assert len(res["text"]) == 4 and res["text"].startswith("1") and res["meta"]["token_healing"]
    schema = json.dumps({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]})
    res = rt.generate("JSON: ", json_schema=schema, max_new_tokens=16, temperature=0, token_healing=True)[0]
    assert isinstance(json.loads(res["text"])["a"], int)
    assert res["meta"]["forced_spans"][0][0] == 0             # spans count from the returned text
    rt.check_integrity()


def test_healed_request_reuses_and_feeds_the_radix_cache(smollm2):
    rt = smollm2
    prompt = "A long shared prefix about the history of lighthouses on rocky coasts. Keeper: "
    first = rt.generate(prompt, max_new_tokens=4, temperature=0, token_healing=True)[0]
    again = rt.generate(prompt, max_new_tokens=4, temperature=0, token_healing=True)[0]
    assert again["text"] == first["text"]
    k = again["meta"]["token_healing"]["tokens"]   # the removed tokens, then the one sampled from
    assert again["meta"]["cached_tokens"] >= again["meta"]["prompt_tokens"] - k - 1
    follow = rt.generate(prompt + first["text"] + " and", max_new_tokens=2, temperature=0)[0]
    assert follow["meta"]["cached_tokens"] >= len(rt.encode(prompt)) - 1   # healed text is cached
    rt.check_integrity()


def test_programs_heal_by_default_and_gen_can_turn_it_off(smollm2):
    import lmnb as lm

    st = lm.run_template("The capital of France is {{ gen('c', max_tokens=3) }}", {}, backend=smollm2,
                         temperature=0)
    assert st.get_meta_info("c")["token_healing"]["text"] == " " and st["c"].startswith("Paris")
    st = lm.run_template("The capital of France is {{ gen('c', max_tokens=3, token_healing=False) }}",
                         {}, backend=smollm2, temperature=0)
    assert "token_healing" not in st.get_meta_info("c")
    with pytest.raises(LmnbError, match="token_healing must be True or False"):
        lm.gen("x", token_healing="yes")
    st = lm.run_template("Colour: {{ select('c', ['red', 'blue'], token_healing=False) }}", {},
                         backend=smollm2)
    assert st["c"] in ("red", "blue")
    smollm2.check_integrity()
