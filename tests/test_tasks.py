"""Tasks: markers and hesitation tokens read from a tokenizer, the organisms / file /
math tasks (prompts, splits, answers, scoring), task specs and the organism-pair check."""

from __future__ import annotations

import importlib.util
import json

import pytest

from interp.errors import ConfigError
from interp.tasks import (
    OrganismTask,
    ThinkMarkers,
    answers_match,
    check_pair,
    detect_markers,
    extract_answer,
    get_task,
    hesitation_ids,
    marker_report,
    require_markers,
)
from interp.tasks.base import boxed_contents, hash_split
from interp.tasks.markers import render_chat
from tests.conftest import make_think_tokenizer, make_tiny_tokenizer

HAS_MATH_VERIFY = importlib.util.find_spec("math_verify") is not None


@pytest.fixture(scope="module")
def think_tok():
    return make_think_tokenizer()


# --------------------------------------------------------------------------- markers
def test_hesitation_ids_cover_every_bpe_spelling(think_tok):
    got = set(hesitation_ids(think_tok, ("wait",))["wait"])
    # each spelling that the tokenizer writes as one token must be in the set
    singles = set()
    for v in ("Wait", " Wait", "wait", " wait"):
        ids = think_tok(v, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1, v
        singles.add(ids[0])
    assert singles == got and len(got) == 4
    # " Wait," is two tokens; its first is a hesitation token, the comma is not
    a, b = think_tok(" Wait,", add_special_tokens=False)["input_ids"]
    assert a in got and b not in got
    # a word that merely starts with "wait" is not "wait"
    assert all(think_tok.decode([i]).strip().lower() == "wait" for i in got)


def test_hesitation_ids_word_level(tiny_tokenizer):
    want = [tiny_tokenizer.convert_tokens_to_ids("wait")]
    assert hesitation_ids(tiny_tokenizer, ("wait",)) == {"wait": want}
    with pytest.raises(ConfigError):
        hesitation_ids(tiny_tokenizer, ("",))


def test_detect_markers_r1_template_opens_thinking(think_tok):
    d = detect_markers(think_tok)
    assert d.found and d.markers.think_open == "<think>" and d.markers.think_close == "</think>"
    assert d.markers.starts_open is True       # "<|assistant|><think>\n" ends the prompt
    assert d.markers.step_sep == "\n\n" and not d.thinking_switch


def test_detect_markers_model_writes_the_open_marker(tiny_tokenizer):
    d = detect_markers(tiny_tokenizer)         # template ends with "<|assistant|>"
    assert d.found and d.markers.starts_open is False


def test_detect_markers_qwen3_switch():
    tok = make_tiny_tokenizer()
    tok.chat_template = (
        "{% for m in messages %}<|user|> {{ m['content'] }} <eos> {% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% if enable_thinking is defined and "
        "enable_thinking is false %} <think> </think>{% endif %}{% endif %}")
    d = detect_markers(tok)
    assert d.thinking_switch and d.markers.starts_open is False
    on = render_chat(tok, "1 + 1", thinking=True)
    off = render_chat(tok, "1 + 1", thinking=False)
    assert "</think>" not in on and off.endswith("<think> </think>")


def test_detect_markers_none_found():
    tok = make_tiny_tokenizer([w for w in make_tiny_tokenizer().get_vocab()
                               if w not in ("<think>", "</think>")])
    tok.chat_template = None
    d = detect_markers(tok)
    assert not d.found and "no thinking markers" in d.notes[0]


def test_marker_message_names_the_counts():
    recs = [{"opened": True, "closed": False}] * 40
    rep = marker_report(recs, ThinkMarkers())
    assert rep["message"].startswith("no `</think>` found in 40 of 40 generations; set the "
                                     "markers for this model")
    with pytest.raises(ConfigError, match="40 of 40"):
        require_markers(recs, ThinkMarkers())
    assert marker_report(recs[:3] + [{"opened": True, "closed": True}],
                         ThinkMarkers())["message"] is None


# --------------------------------------------------------------------------- answers
@pytest.mark.parametrize("text, want", [
    ("<think>so 3</think> The answer is \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
    ("<think>7 then 9</think> It is 1,024 apples", "1024"),
    ("<think>9</think>\nParis\n", "Paris"),
    ("no markers at all, 5 then 6", "6"),
    ("<think>a \\boxed{1}</think> \\boxed{2} and \\boxed{{3}}", "{3}"),
])
def test_extract_answer(text, want):
    assert extract_answer(text, ThinkMarkers(starts_open=False)) == want


def test_boxed_braces_balanced():
    assert boxed_contents(r"x \boxed{a{b}c} y \fbox{d}") == ["a{b}c", "d"]


def test_answers_match():
    assert answers_match("0.50", ".5") and answers_match("1,000", "1000")
    assert answers_match("$Paris$.", "paris") and not answers_match("41", "42")
    assert not answers_match(None, "1")


# --------------------------------------------------------------------------- tasks
def test_organism_task_is_todays_behaviour():
    from interp.organisms.task import encode, prompt_text, sample_problems, score_completion

    t = get_task("organisms")
    items = t.items(5, "eval", seed=2)
    probs = sample_problems(5, seed=2, split="eval")
    assert [it.id for it in items] == [p.id for p in probs]
    assert t.encode(items[0], None) == encode(prompt_text(probs[0], "think"))
    text = "5 + 8 + 0 = 1 3 ; </think> A 0 5 3 0 3 <eos>"
    assert t.score(items[0], text)["correct"] == score_completion(probs[0], text)["correct"]
    assert t.markers() == ThinkMarkers.organism()
    # train and eval problems are disjoint
    assert not {i.id for i in t.items(200, "train")} & {i.id for i in t.items(200, "eval")}


def test_organism_task_refused_for_other_models(tmp_path):
    check_pair(OrganismTask(), ["organism:base", "organism:reasoner"])
    with pytest.raises(ConfigError, match="only runs on the organism models, not on /x/base"):
        check_pair(OrganismTask(), ["/x/base", "organism:reasoner"])
    f = tmp_path / "p.txt"
    f.write_text("hello\n")
    check_pair(get_task(str(f)), ["/x/base"])


def test_file_task_jsonl(tmp_path, think_tok):
    f = tmp_path / "t.jsonl"
    rows = [{"prompt": "Compute 2+2.", "answer": 4, "id": "a", "split": "train"},
            {"question": "Capital of France?", "answer": "Paris", "id": "b", "split": "eval"},
            {"prompt": "Say hi.", "id": "c", "trace": "hello </think> hi"}]
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    t = get_task(str(f))
    c_split = hash_split("c")   # no split field: a hash of the id decides
    assert [i.id for i in t.items(None, "train")] == ["a"] + ["c"] * (c_split == "train")
    assert [i.id for i in t.items(None, "eval")] == ["b"] + ["c"] * (c_split == "eval")
    assert t.items(None, "all")[2].split == c_split
    a, b, c = t.items()
    # the chat template is applied, specials kept as written: one <s>, no second BOS
    ids = t.encode(a, think_tok)
    assert ids == think_tok(render_chat(think_tok, "Compute 2+2."),
                            add_special_tokens=False)["input_ids"]
    assert ids.count(think_tok.bos_token_id) == 1
    m = t.markers(think_tok)
    assert t.score(a, " 2 plus 2 is 4 </think> \\boxed{4}", m) == {"correct": True,
                                                                   "answer": "4"}
    assert t.score(b, "hmm </think> paris.", m)["correct"] is True
    assert t.score(c, "x </think> y", m)["correct"] is None
    assert t.describe()["sha256"] and t.has_answers
    # chat off: the plain prompt with the tokenizer's special tokens
    t2 = get_task(str(f), chat="off")
    assert t2.prompt_text(a, think_tok) == "Compute 2+2."


def test_file_task_text_and_errors(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("first prompt\n\nsecond prompt\n")
    t = get_task(f"file:{f}")
    assert [i.prompt for i in t.items()] == ["first prompt", "second prompt"]
    assert not t.has_answers
    bad = tmp_path / "bad.jsonl"
    for text, msg in (('{"prompt": "a"}\nnot json\n', "line 2 is not JSON"),
                      ('{"answer": 3}\n', "line 1 has no 'prompt'"),
                      ('{"prompt": "a", "id": 1}\n{"prompt": "b", "id": 1}\n', "used twice"),
                      ('{"prompt": "a", "split": "dev"}\n', "split must be")):
        bad.write_text(text)
        with pytest.raises(ConfigError, match=msg):
            get_task(str(bad))
    with pytest.raises(ConfigError, match="unknown task"):
        get_task(str(tmp_path / "missing.jsonl"))
    with pytest.raises(ConfigError, match="no task given"):
        get_task("")
    one = tmp_path / "one.jsonl"
    one.write_text('{"prompt": "a", "split": "train"}\n')
    with pytest.raises(ConfigError, match="no prompts in the 'eval' split"):
        get_task(str(one)).items(None, "eval")


@pytest.mark.skipif(HAS_MATH_VERIFY, reason="math-verify is installed")
def test_math_task_says_how_to_install():
    with pytest.raises(ConfigError, match="pip install math-verify==0.9.0"):
        get_task("math:arith")


@pytest.mark.skipif(not HAS_MATH_VERIFY, reason="math-verify is not installed")
def test_math_task_scores_equivalent_forms(tmp_path):
    t = get_task("math:arith(n=40,seed=3)")
    items = t.items()
    assert len(items) == 40 and {it.meta["steps"] for it in items} == {1, 2, 3, 4}
    for it in items[:8]:      # answers recomputed from the printed expression
        expr = it.prompt.split("Compute ")[1].split(".\n")[0].replace("×", "*")
        assert str(eval(expr, {"__builtins__": {}})) == it.answer
        assert "\\boxed{}" in it.prompt
    it = items[0]
    m = ThinkMarkers(starts_open=True)
    assert t.score(it, f"think </think> so \\boxed{{{it.answer}}}", m)["correct"] is True
    assert t.score(it, f"\\boxed{{{int(it.answer) + 1}}} </think> "
                   f"\\boxed{{{int(it.answer) + 1}}}", m)["correct"] is False
    f = tmp_path / "m.jsonl"
    f.write_text(json.dumps({"problem": "Half of one?", "solution": "It is \\boxed{\\frac12}."})
                 + "\n")
    mt = get_task(f"math:{f}")
    (only,) = mt.items()
    assert only.answer == "\\frac12"
    assert mt.score(only, "</think> The answer is $\\boxed{0.5}$", m)["correct"] is True
    assert mt.score(only, "</think> The answer is $\\boxed{0.6}$", m)["correct"] is False
