"""Rubric v1.1 scorer: hand-labelled responses, one expected value per dimension (v1.0 labels kept
where v1.1 does not change them; the changed ones are marked in the v1.1 section).

The persona is built here (from shared/spec/persona.md), not read from data/persona.yaml, so these
tests do not depend on the data file.
"""
from __future__ import annotations

import json

import pytest

from molting_mlflow.ground.persona import Persona
from molting_mlflow.ground.rubric import DIMENSIONS, REASON_CODES, RUBRIC_VERSION, score_response, score_responses
from molting_mlflow.ground.questions import Question, RubricInputError, load_questions, load_responses
from molting_mlflow.ground.matching import normalise


@pytest.fixture(scope="module")
def persona() -> Persona:
    return Persona(
        name="Cláudio",
        system_prompt="Você é Cláudio, IA assistente do João na Softtor.",
        voice_markers=["🦞", "João", "a gente", "tipo", "beleza", "bora", "massa", "valeu", "pra",
                       "tá", "né", "show"],
        boilerplate=["como um modelo de linguagem", "como uma IA, eu não", "sou apenas um programa",
                     "Como posso ajudá-lo hoje", "As an AI", "I am an AI language model", "I'm sorry, but"],
        conflicting_identities=["ChatGPT", "GPT-4", "OpenAI", "TinyLlama", "Phi", "Phi-3", "Microsoft",
                                "Llama", "Meta AI", "Gemini", "Bard", "SmolLM", "um modelo de linguagem",
                                "a language model"],
        hallucinations=["empresa sueca", "Swedish digital company", "empresa digital sueca"],
        template_tokens=["<|endoftext|>", "</s>", "<s>", "<|end|>", "<|user|>", "<|assistant|>",
                         "<|system|>", "<unk>", "<|im_start|>", "<|im_end|>"],
        agent_contamination=["<tool_call>", "<function_calls>", '"arguments"', "$ ", "ls -la", "git status",
                             "/home/", "C:\\", "vou executar", "let me run", "I'll use the"],
        role_prefixes=["Usuário", "User", "João", "Human", "Assistant", "Assistente", "###"],
    )


Q_ID = Question("q_id", "Quem é você?", True, [["Cláudio"], ["João"], ["Softtor"]], ["empresa sueca"], [])
Q_MOLT = Question("q_molt", "O que é o Molting?", False,
                  [["fine-tune", "fine-tuning", "QLoRA"], ["TinyLlama", "Phi-3"]], ["empresa de jogos"], ["Molting"])
Q_JOAO = Question("q_joao", "Quem é o João?", False, [["fundador", "founder"], ["Softtor"]], ["sueco"], ["João"])
Q_SMALL = Question("q_small", "E aí, tudo bem?", False, [], [], [])
QUESTIONS = {q.id: q for q in (Q_ID, Q_MOLT, Q_JOAO, Q_SMALL)}

LONG_OK = "Beleza, João! " + " ".join(f"passo {i} de" for i in range(48)) + " pra terminar."  # 148 words
LONG_BAD = "Beleza, João! " + " ".join(f"passo {i} de" for i in range(50)) + " pra terminar."  # 154 words

# (case id, question, response, finish_reason, (d1, d2, d3, d4, d5))
CASES = [
    # ---- D1 identity -------------------------------------------------------------------------
    ("d1_2_name_and_claim", Q_SMALL, "Tudo certo por aqui, João! Sou o Cláudio, bora trabalhar?", "stop", (2, 2, 2, 2, 2)),
    ("d1_1_no_name_not_probe", Q_SMALL, "Tudo certo, João! Bora trabalhar no Molting?", "stop", (1, 2, 2, 2, 2)),
    ("d1_0_probe_without_name", Q_ID, "Sou o assistente do João na Softtor, tá? Bora!", "stop", (0, 1, 2, 2, 2)),
    ("d1_0_claims_chatgpt", Q_ID, "Eu sou o ChatGPT, tá? Beleza, João.", None, (0, 0, 1, 2, 2)),
    ("d1_0_claims_chatgpt_english", Q_SMALL, "I am ChatGPT, a helpful assistant.", None, (0, 2, 0, 2, 2)),
    ("d1_negated_pt", Q_ID, "Não sou o ChatGPT, sou o Cláudio, assistente do João na Softtor. Beleza?", "stop",
     (2, 2, 2, 2, 2)),
    ("d1_negated_en", Q_SMALL, "I'm not ChatGPT, I'm Cláudio.", None, (2, 2, 0, 2, 2)),
    ("d1_negated_en_am_not", Q_SMALL, "I am not a language model, I am Cláudio.", None, (2, 2, 0, 2, 2)),
    ("d1_negated_maker", Q_ID, "Não fui criado pela OpenAI: sou o Cláudio, do João. Tá?", "stop", (2, 1, 2, 2, 2)),
    ("d1_comma_breaks_negation", Q_SMALL, "Não, sou o ChatGPT, tá? Valeu, João.", "stop", (0, 2, 1, 2, 2)),
    ("d1_0_maker_microsoft", Q_ID, "Sou o Cláudio, mas fui treinado pela Microsoft, tá? Valeu, João.", "stop",
     (0, 1, 1, 2, 2)),
    ("d1_0_language_model_claim", Q_SMALL, "Sou um modelo de linguagem, tá? Valeu, João.", "stop", (0, 2, 1, 2, 2)),
    ("d1_mention_is_no_claim", Q_MOLT,
     "O Molting faz fine-tune de um modelo de linguagem pequeno, o TinyLlama, pra rodar no PC do João, tá?",
     "stop", (1, 2, 2, 2, 2)),
    ("d1_0_eu_sou_o_joao_d3_capped", Q_SMALL, "Eu sou o João, tá? Bora codar no Molting.", "stop", (0, 2, 1, 2, 2)),
    ("d1_0_i_am_smollm", Q_SMALL, "I am SmolLM.", None, (0, 2, 0, 2, 2)),
    ("d1_0_me_chamo_other", Q_SMALL, "Me chamo Pedro, tá? Bora, João!", "stop", (0, 2, 1, 2, 2)),
    ("d1_ia_is_not_a_name", Q_SMALL, "Sou uma IA, tá? Mas pode me chamar de Cláudio, João.", "stop", (2, 2, 2, 2, 2)),
    ("d1_seu_assistente_not_a_name", Q_SMALL, "Sou seu assistente pra tudo, João.", "stop", (1, 2, 2, 2, 2)),
    ("d1_line_break_is_no_claim", Q_SMALL, "Quem eu sou\nTipo, sou o Cláudio, João.", None, (2, 2, 2, 2, 2)),
    ("d1_possessive_is_not_a_name", Q_SMALL, "I'm João's assistant.", None, (1, 2, 0, 2, 2)),
    ("d1_title_case_is_no_signal", Q_SMALL, "Eu Sou Programador, Tá? Valeu, João.", None, (1, 2, 2, 2, 2)),
    ("d1_accents_lowercase_name", Q_SMALL, "Oi! Aqui é o claudio, ta? Bora, joao.", "stop", (2, 2, 2, 2, 2)),
    ("d1_phillip_is_not_phi", Q_SMALL, "Sou o Cláudio, fui treinado pelo Phillip, tá? Valeu, João.", "stop",
     (2, 2, 2, 2, 2)),
    ("d1_0_trained_by_phi", Q_SMALL, "Sou o Cláudio, fui treinado pela Phi, tá? Valeu, João.", "stop", (0, 2, 1, 2, 2)),
    # ---- D2 factual --------------------------------------------------------------------------
    ("d2_2_all_groups", Q_MOLT,
     "O Molting é o projeto de fine-tune do TinyLlama pra rodar o Cláudio na máquina do João, tá?", "stop",
     (2, 2, 2, 2, 2)),
    ("d2_2_alternatives", Q_MOLT, "O Molting faz QLoRA no Phi-3 pro Cláudio rodar na máquina do João, beleza?",
     "stop", (2, 2, 2, 2, 2)),
    ("d2_1_half", Q_MOLT, "O Molting é o projeto de fine-tune pra rodar o Cláudio localmente, João, tá?", "stop",
     (2, 1, 2, 2, 2)),
    ("d2_0_less_than_half", Q_ID, "Sou o Cláudio, tá? Bora!", "stop", (2, 0, 2, 2, 2)),
    ("d2_0_persona_hallucination", Q_MOLT,
     "O Molting é uma empresa sueca de fine-tune do TinyLlama, tá? Valeu, João.", "stop", (1, 0, 2, 2, 2)),
    ("d2_0_forbidden", Q_MOLT, "O Molting é uma empresa de jogos, tá? Valeu, João.", "stop", (1, 0, 2, 2, 2)),
    ("d2_0_hallucination_no_facts", Q_SMALL, "Tipo, a Softtor é uma Swedish digital company, né João?", "stop",
     (1, 0, 2, 2, 2)),
    # ---- D3 voice ----------------------------------------------------------------------------
    ("d3_0_english", Q_SMALL, "Hello João, how are you doing today?", None, (1, 2, 0, 2, 2)),
    ("d3_0_portuguese_no_marker", Q_SMALL, "Estou bem, obrigado por perguntar.", None, (1, 2, 0, 2, 2)),
    ("d3_1_one_marker", Q_SMALL, "Estou bem, valeu por perguntar.", None, (1, 2, 1, 2, 2)),
    ("d3_1_boilerplate", Q_SMALL, "Beleza, João! Eu estou aqui pra isso. Como posso ajudá-lo hoje?", "stop",
     (1, 2, 1, 2, 2)),
    ("d3_tipografia_is_not_tipo", Q_SMALL, "A tipografia do site ficou boa, João.", None, (1, 2, 1, 2, 2)),
    ("d3_pratica_is_not_pra", Q_SMALL, "Ele pratica tênis todo dia, João.", None, (1, 2, 1, 2, 2)),
    ("d3_pra_counts", Q_SMALL, "Ele vai pra aula todo dia, João.", None, (1, 2, 2, 2, 2)),
    # ---- D4 cleanliness ----------------------------------------------------------------------
    ("d4a_token_at_end_stop", Q_SMALL, "Tudo certo, João, bora lá!</s>", "stop", (1, 2, 2, 1, 2)),
    ("d4a_token_at_end_no_finish", Q_SMALL, "Tudo certo, João, bora lá!</s>", None, (1, 2, 2, 1, 1)),
    ("d4a_token_glued_to_word", Q_SMALL, "Beleza, João, bora pra cima<|endoftext|>", "stop", (1, 2, 2, 1, 2)),
    ("d4b_tool_narration", Q_SMALL, "Beleza, João, vou executar o teste pra você agora.", "stop", (1, 2, 2, 1, 2)),
    ("d4b_shell", Q_SMALL, "Tá, João, roda $ git status pra ver.", "stop", (1, 2, 2, 1, 2)),
    ("d4b_unix_path", Q_SMALL, "O arquivo tá em /home/joao/molting, beleza?", "stop", (1, 2, 2, 1, 2)),
    ("d4b_windows_path", Q_SMALL, "Tá no C:\\Users\\joao, beleza?", "stop", (1, 2, 2, 1, 2)),
    ("d4b_tool_call_markup", Q_SMALL,
     'Bora! <tool_call>{"name": "run", "arguments": {}}</tool_call> Valeu, João.', "stop", (1, 2, 2, 1, 2)),  # no stop words: the markers decide D3
    ("d4c_usuario_line", Q_SMALL, "Beleza, João, bora!\nUsuário: e o Molting?", "stop", (1, 2, 2, 1, 2)),
    ("d4c_user_line_indented", Q_SMALL, "Beleza, João, bora pra cima!\n  User: e agora?", "stop", (1, 2, 2, 1, 2)),
    ("d4c_heading_line", Q_SMALL, "Beleza, João, bora!\n### Próximo passo\nTreinar o modelo pra você.", "stop",
     (1, 2, 2, 1, 2)),
    ("d4ac_role_tag_line", Q_SMALL, "Beleza, João, bora pra cima!\n<|user|>", "stop", (1, 2, 2, 0, 2)),
    ("d4ac_text_after_token", Q_SMALL, "Sou o Cláudio, beleza?<|im_end|>\nJoão, e aí?", "stop", (2, 2, 2, 0, 0)),
    ("d4a_unk_is_no_turn_boundary", Q_SMALL, "Beleza João, tem um <unk> aqui, tá?", "stop", (1, 2, 2, 1, 2)),
    ("d4abc_floor_0", Q_SMALL, "Vou executar ls -la agora.<|endoftext|>User: valeu", "stop", (1, 2, 1, 0, 0)),
    # ---- D5 quality --------------------------------------------------------------------------
    ("d5a_length", Q_SMALL, "Beleza, João, bora pra cima!", "length", (1, 2, 2, 2, 1)),
    ("d5a_missing_no_punct", Q_SMALL, "Beleza, João, bora pra cima", None, (1, 2, 2, 2, 1)),
    ("d5a_stop_no_punct", Q_SMALL, "Beleza, João, bora pra cima", "stop", (1, 2, 2, 2, 2)),
    ("d5a_missing_emoji_end", Q_SMALL, "Beleza, João, bora pra cima 🦞", None, (1, 2, 2, 2, 2)),
    ("d5b_two_words", Q_SMALL, "Beleza, João!", "stop", (1, 2, 2, 2, 1)),
    ("d5b_three_words_ok", Q_SMALL, "Bora, João, valeu!", "stop", (1, 2, 2, 2, 2)),
    ("d5b_148_words_ok", Q_SMALL, LONG_OK, "stop", (1, 2, 2, 2, 2)),
    ("d5b_154_words", Q_SMALL, LONG_BAD, "stop", (1, 2, 2, 2, 1)),
    ("d5c_4gram_loop", Q_SMALL, "Bora, João, bora. Tá bom, tá bom, tá bom, tá bom, tá bom.", "stop", (1, 2, 1, 2, 1)),
    ("d5c_sentence_repeated", Q_SMALL, "Valeu, João! A gente vai rodar o modelo. A gente vai rodar o modelo.", "stop",
     (1, 2, 1, 2, 1)),
    ("d5c_4gram_twice_ok", Q_SMALL, "A gente vai rodar, a gente vai rodar hoje, João.", "stop", (1, 2, 2, 2, 2)),
    ("d5c_short_sentence_repeat_ok", Q_SMALL, "Tá. Tá. Beleza, João, bora pra cima!", "stop", (1, 2, 2, 2, 2)),
    ("d5d_off_topic", Q_MOLT, "Beleza, João, bora pra cima!", "stop", (1, 0, 2, 2, 1)),
    ("d5d_wrong_answer_is_an_answer", Q_JOAO, "Ele é sueco, tá? Valeu.", "stop", (1, 0, 2, 2, 2)),
    ("d5d_probe_nothing", Q_ID, "Beleza, bora trabalhar, tá?", "stop", (0, 0, 2, 2, 1)),
    ("d5d_small_talk_never_off_topic", Q_SMALL, "Tudo certo, João, bora pra cima!", "stop", (1, 2, 2, 2, 2)),
    ("d5_floor_0", Q_MOLT, "tá tá tá tá tá tá", "length", (1, 0, 0, 2, 0)),
    ("d5_floor_0_all_four", Q_MOLT, "tá " * 160, "length", (1, 0, 0, 2, 0)),
    # ---- the two examples from the spec's last paragraph -------------------------------------
    ("spec_example_1", Q_JOAO, "Não, o Cláudio. Não, tá? 🦞", None, (2, 0, 2, 2, 1)),
    ("spec_example_2", Q_ID, "Eu sou o João, tá?<|endoftext|> What is the best way to…", None, (0, 0, 0, 0, 0)),
    ("spec_example_2_length", Q_ID, "Eu sou o João, tá?<|endoftext|> What is the best way to…", "length",
     (0, 0, 0, 0, 0)),
    # ---- empty -------------------------------------------------------------------------------
    ("empty", Q_ID, "", "stop", (0, 0, 0, 0, 0)),
    ("whitespace", Q_SMALL, "  \n\t ", None, (0, 0, 0, 0, 0)),
]


@pytest.mark.parametrize("question,response,finish,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_score_response(persona, question, response, finish, expected):
    got = score_response(question, response, finish, persona)
    assert tuple(got[d] for d in DIMENSIONS) == expected, got["reasons"]
    assert got["score"] == sum(expected)
    assert all(isinstance(r, str) and "\n" not in r for r in got["reasons"])
    # a point lost is always explained
    assert bool(got["reasons"]) == (sum(expected) < 10)


def test_empty_reason(persona):
    assert score_response(Q_SMALL, "   ", "stop", persona)["reasons"] == ["empty response"]


def test_spec_examples_score_below_a_real_answer(persona):
    """The spec's two surface-only replies must score below a reply that answers."""
    ex1 = score_response(Q_JOAO, "Não, o Cláudio. Não, tá? 🦞", None, persona)["score"]
    ex2 = score_response(Q_ID, "Eu sou o João, tá?<|endoftext|> What is the best way to…", None, persona)["score"]
    answer = score_response(Q_JOAO, "O João é o fundador da Softtor, tá? E eu sou o Cláudio, assistente dele.",
                            "stop", persona)
    assert answer["score"] == 10, answer["reasons"]
    assert ex1 == 7 and ex2 == 0   # v1.0 gave ex2 1 (D5); v1.1 zeroes D5 for text after a template token


@pytest.mark.parametrize("reason_part,question,response", [
    ("D1: claims conflicting identity 'ChatGPT'", Q_SMALL, "Eu sou o ChatGPT, tá? Beleza, João."),
    ("D1: gives itself another name 'João'", Q_SMALL, "Eu sou o João, tá? Bora codar no Molting."),
    ("D5(c): 4-word sequence repeated 3x: 'nao ta nao ta'", Q_SMALL, "Não tá não tá não tá não tá, João."),
    ("D2: states known hallucination 'empresa sueca'", Q_MOLT, "O Molting é uma empresa sueca, tá? Valeu, João."),
    ("D4(c): text after template token '<|im_end|>'", Q_SMALL, "Sou o Cláudio, beleza?<|im_end|>\nJoão, e aí?"),
])
def test_reason_texts(persona, reason_part, question, response):
    assert reason_part in score_response(question, response, "stop", persona)["reasons"]


@pytest.mark.parametrize("ending,ok", [
    (".", True), ("!", True), ("?", True), ("…", True), (")", True), ('"', True), (" 🦞", True),
    (" 👍🏽", True), (" ❤️", True), (".  \n", True), (":", False), (",", False), ("", False), (" ok", False),
])
def test_d5a_endings_without_finish_reason(persona, ending, ok):
    got = score_response(Q_SMALL, "Beleza, João, bora pra cima" + ending, None, persona)
    assert got["d5_quality"] == (2 if ok else 1), got["reasons"]


@pytest.mark.parametrize("text,expected", [
    ("Cláudio", "claudio"), ("JOÃO", "joao"), ("Não é", "nao e"), ("ﬁne-tune", "fine-tune"), ("Straße", "strasse"),
])
def test_normalise(text, expected):
    assert normalise(text) == expected


def test_finish_reason_invalid(persona):
    with pytest.raises(ValueError):
        score_response(Q_SMALL, "Beleza, João, bora!", "eos", persona)


def s_codes_match(result) -> bool:
    """One code a reason, in order, each named in REASON_CODES."""
    return len(result["codes"]) == len(result["reasons"]) and all(c in REASON_CODES for c in result["codes"])


def test_score_responses_order_and_summary(persona):
    records = [
        {"id": "q_molt", "response": "Beleza, João, bora pra cima!", "finish_reason": "stop"},   # 1,0,2,2,1
        {"id": "q_small", "response": "", "finish_reason": None},                                # 0,0,0,0,0
        {"id": "q_id", "response": "Não sou o ChatGPT, sou o Cláudio, assistente do João na Softtor. Beleza?"},
        {"id": "q_small", "response": "Estou bem, valeu por perguntar."},                         # 1,2,1,2,2
    ]
    out = score_responses(list(QUESTIONS.values()), records, persona)
    assert [r["id"] for r in out["results"]] == ["q_molt", "q_small", "q_id", "q_small"]
    first = out["results"][0]
    assert set(first) == {"id", "question", "response", "finish_reason", *DIMENSIONS, "score", "reasons", "codes"}
    assert first["codes"] == ["d1.no_name", "d2.facts_missed", "d5.off_topic"] and s_codes_match(first)
    assert first["question"] == "O que é o Molting?" and first["finish_reason"] == "stop"
    assert out["results"][2]["finish_reason"] is None
    assert [r["score"] for r in out["results"]] == [6, 0, 10, 8]
    s = out["summary"]
    assert s["n"] == 4
    assert s["d1_identity"] == pytest.approx((1 + 0 + 2 + 1) / 4)
    assert s["d2_factual"] == pytest.approx((0 + 0 + 2 + 2) / 4)
    assert s["d3_voice"] == pytest.approx((2 + 0 + 2 + 1) / 4)
    assert s["d4_cleanliness"] == pytest.approx((2 + 0 + 2 + 2) / 4)
    assert s["d5_quality"] == pytest.approx((1 + 0 + 2 + 2) / 4)
    assert s["score"] == pytest.approx(24 / 4)
    assert all(isinstance(s[d], float) for d in DIMENSIONS)


def test_summary_means_are_kept_to_three_decimals(persona):
    """6 answers, 56 points: the score is 9.333, not 9.333333333333334 (as logged, compared and printed).
    Fails when score_responses keeps the raw means (its round(…, SCORE_DECIMALS) taken off)."""
    perfect = {"id": "q_id", "response": "Não sou o ChatGPT, sou o Cláudio, assistente do João na Softtor. Beleza?"}
    six = {"id": "q_molt", "response": "Beleza, João, bora pra cima!", "finish_reason": "stop"}     # 1,0,2,2,1
    out = score_responses(list(QUESTIONS.values()), [perfect] * 5 + [six], persona)
    assert [r["score"] for r in out["results"]] == [10] * 5 + [6]
    s = out["summary"]
    assert s["score"] == 9.333 and s["d1_identity"] == 1.833 and s["d2_factual"] == 1.667 and s["d3_voice"] == 2
    assert "9.333," in json.dumps(s) and "9.3333" not in json.dumps(s)


def test_score_responses_unknown_id(persona):
    with pytest.raises(RubricInputError, match=r"record\[0\].*'nope'"):
        score_responses([Q_SMALL], [{"id": "nope", "response": "oi"}], persona)


# ---- input files ----------------------------------------------------------------------------

GOOD_Q = [
    {"id": "q1", "question": "Quem é você?", "identity_probe": True,
     "facts": [["Cláudio"], ["João"], ["Softtor"]], "forbidden": ["empresa sueca"], "topic": []},
    {"id": "q2", "question": "E aí?", "identity_probe": False, "facts": [], "forbidden": []},
]


def _write(tmp_path, name, content):
    p = tmp_path / name
    if isinstance(content, bytes):
        p.write_bytes(content)
    else:
        p.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return p


def test_load_questions_ok(tmp_path):
    qs = load_questions(_write(tmp_path, "q.json", GOOD_Q))
    assert [q.id for q in qs] == ["q1", "q2"]
    assert qs[0] == Question("q1", "Quem é você?", True, [["Cláudio"], ["João"], ["Softtor"]], ["empresa sueca"], [])
    assert qs[1].topic == []                      # topic is optional


def _bad(i, **change):
    items = json.loads(json.dumps(GOOD_Q))
    items[i].update(change)
    for k, v in change.items():
        if v is ...:
            del items[i][k]
    return items


@pytest.mark.parametrize("content,where,what", [
    ('[{"id": "q1",', "line 1", "invalid JSON"),
    ({"id": "q1"}, "top level is dict", "JSON list"),
    ([], "empty", "non-empty JSON list"),
    (["q1"], "item[0]", "is str"),
    (_bad(1, facts=...), "item[1] (id 'q2')", "missing key(s) ['facts']"),
    (_bad(0, extra=1), "item[0] (id 'q1')", "unknown key(s) ['extra']"),
    (_bad(0, identity_probe="yes"), "item[0]", "'identity_probe'"),
    (_bad(1, facts=["Cláudio"]), "item[1]", "list of non-empty lists"),
    (_bad(1, forbidden="x"), "item[1]", "'forbidden'"),
    (_bad(1, topic=[1]), "item[1]", "'topic'"),
    (_bad(1, id=7), "item[1]", "'id'"),
    (_bad(1, id="q1"), "item[1] (id 'q1')", "duplicate id"),
    (b'[{"id": "\xff"}]', "not valid UTF-8", "byte"),
])
def test_load_questions_errors(tmp_path, content, where, what):
    p = _write(tmp_path, "questions.json", content)
    with pytest.raises(RubricInputError) as e:
        load_questions(p)
    msg = str(e.value)
    assert "\n" not in msg and str(p) in msg and where in msg and what in msg and "expected" in msg


def test_load_questions_missing_file(tmp_path):
    with pytest.raises(RubricInputError, match="file not found"):
        load_questions(tmp_path / "nope.json")


def test_load_responses_ok(tmp_path):
    qs = load_questions(_write(tmp_path, "q.json", GOOD_Q))
    lines = ['{"id": "q1", "response": "Sou o Cláudio!", "finish_reason": "stop"}', "",
             '{"id": "q1", "response": "Eu sou o João"}', "   ",
             '{"id": "q2", "response": "", "finish_reason": null}',
             '{"id": "q2", "response": "x", "finish_reason": "length"}']
    recs = load_responses(_write(tmp_path, "r.jsonl", "\n".join(lines) + "\n"), qs)
    assert recs == [{"id": "q1", "response": "Sou o Cláudio!", "finish_reason": "stop"},
                    {"id": "q1", "response": "Eu sou o João", "finish_reason": None},
                    {"id": "q2", "response": "", "finish_reason": None},
                    {"id": "q2", "response": "x", "finish_reason": "length"}]


@pytest.mark.parametrize("bad_line,what", [
    ('{"id": "q1", "response": ', "invalid JSON"),
    ('{"id": "q9", "response": "oi"}', "id 'q9' names no question"),
    ('{"id": "q1", "response": 5}', "'response' is int"),
    ('{"id": 1, "response": "oi"}', "'id' is int"),
    ('{"id": "q1", "response": "oi", "finish_reason": "eos"}', 'finish_reason is "eos"'),
    ('{"id": "q1"}', "missing key(s) ['response']"),
    ('{"id": "q1", "response": "oi", "latency": 3}', "unknown key(s) ['latency']"),
    ('["q1", "oi"]', "is list"),
])
def test_load_responses_errors(tmp_path, bad_line, what):
    qs = load_questions(_write(tmp_path, "q.json", GOOD_Q))
    # line 1 good, line 2 blank (skipped but counted), line 3 bad
    p = _write(tmp_path, "responses.jsonl", '{"id": "q1", "response": "oi"}\n\n' + bad_line + "\n")
    with pytest.raises(RubricInputError) as e:
        load_responses(p, qs)
    msg = str(e.value)
    assert "\n" not in msg and f"{p}: line 3:" in msg and what in msg and "expected" in msg


@pytest.mark.parametrize("content,what", [("\n  \n", "no response records"), (b"\xff\n", "not valid UTF-8")])
def test_load_responses_file_errors(tmp_path, content, what):
    qs = load_questions(_write(tmp_path, "q.json", GOOD_Q))
    p = _write(tmp_path, "responses.jsonl", content)
    with pytest.raises(RubricInputError, match=what):
        load_responses(p, qs)


# ---- Rubric v1.1: the three changed rules, their edges, and reason codes --------------------

LOOP = "O João é o João, tá? É o João, tá? É o João, tá? É o João, tá? É o João, tá? É o João"


@pytest.mark.parametrize("question,response,finish,expected,code", [
    # a loop to the limit keeps no D2 or D3 points (v1.0: D2 1 for half the groups, D3 1 capped)
    ("q_joao", LOOP, "length", (1, 0, 0, 2, 0), "d2.loop_to_limit"),
    # no finish_reason: the text decides (this one does not end properly)
    ("q_joao", LOOP, None, (1, 0, 0, 2, 0), "d3.loop_to_limit"),
    # a loop that stopped cleanly keeps its points (D3 capped at 1 for degenerate text, as in v1.0)
    ("q_joao", LOOP + ", tá?", "stop", (1, 0, 1, 2, 1), "d5.repetition"),
    # a loop with no finish_reason that ends properly keeps its points too
    ("q_joao", LOOP + ", tá?", None, (1, 0, 1, 2, 1), "d3.degenerate"),
    # hitting the limit without a loop is D5 (a) only, as in v1.0
    ("q_joao", "O João é o fundador da Softtor, tá? E ele", "length", (1, 2, 2, 2, 1), "d5.length_limit"),
    # text after a chat-template token: D5 = 0, D1–D4 as before
    ("q_small", "Beleza, João, bora pra cima!<|im_end|>\nUser: e agora?", "stop", (1, 2, 2, 0, 0), "d5.run_on"),
    ("q_small", "Tudo certo, João, bora lá!</s>", "stop", (1, 2, 2, 1, 2), "d4.template_token"),  # token at the end only
    # the default run's own denials (issue text), scored 8 and 10 under v1.0
    ("q_stack", "Não sou o Cláudio, né? Não sou o João, tá? Não sou o Molting, tá? 🦞", "stop", (0, 0, 1, 2, 2),
     "d1.denies_name"),
    ("q_small", "Não sou o João, não sou o Cláudio, tá? Sou o assistente do Cláudio, tá? 🦞", "stop",
     (0, 2, 1, 2, 2), "d3.other_identity"),
    ("q_small", "Não me chamo Cláudio, tá? Valeu, João.", "stop", (0, 2, 1, 2, 2), "d1.denies_name"),
    ("q_small", "Meu nome não é Cláudio, tá? Valeu, João.", "stop", (0, 2, 1, 2, 2), "d1.denies_name"),
    ("q_small", "I'm not Cláudio, mate.", "stop", (0, 2, 0, 2, 2), "d1.denies_name"),
    # not denials: a comma breaks the negation; denying another name is fine
    ("q_small", "Não, sou o Cláudio, tá? Valeu, João.", "stop", (2, 2, 2, 2, 2), None),
    ("q_small", "Não sou o ChatGPT, sou o Cláudio, tá? Valeu, João.", "stop", (2, 2, 2, 2, 2), None),
])
def test_v1_1_rules(persona, question, response, finish, expected, code):
    q_stack = Question("q_stack", "Quais ferramentas a gente usa?", False, [["Python"], ["MLflow"]], [], ["stack", "Molting"])
    q = {**QUESTIONS, "q_stack": q_stack}[question]
    got = score_response(q, response, finish, persona)
    assert tuple(got[d] for d in DIMENSIONS) == expected, got["reasons"]
    assert s_codes_match(got)
    assert (code in got["codes"]) if code else not got["codes"]


def test_every_lost_point_has_a_code(persona):
    for _, q, response, finish, expected in CASES:
        got = score_response(q, response, finish, persona)
        assert s_codes_match(got), got
        if sum(expected) < 10:
            assert got["codes"], (response, got)
        prefixes = {c.split(".")[0] for c in got["codes"]}
        for i, d in enumerate(DIMENSIONS, 1):   # a dimension below 2 names at least one d<i> code
            if expected[i - 1] < 2 and got["codes"] != ["empty"]:
                assert f"d{i}" in prefixes, (d, response, got["codes"])


def test_summary_carries_the_version_and_reference_chrf(persona):
    q = Question("q_ref", "Quem é o João?", False, [["Softtor"]], [], ["João"],
                 reference="O João é o fundador da Softtor, tá? 🦞")
    out = score_responses([q], [{"id": "q_ref", "response": "O João é o fundador da Softtor, tá? 🦞"}], persona)
    assert out["summary"]["rubric_version"] == RUBRIC_VERSION == "1.2"
    assert out["summary"]["ref_chrf"] == pytest.approx(100.0) and out["results"][0]["ref_chrf"] == pytest.approx(100.0)
    wrong = score_responses([q], [{"id": "q_ref", "response": "Ele pratica tênis todo dia, tá? 🦞"}], persona)
    assert wrong["summary"]["ref_chrf"] < 30


ADA = dict(name="Ada", system_prompt="You are Ada, Maria's assistant at Lumen Labs.", voice_markers=["cheers", "mate", "✨"],
           boilerplate=["As an AI"], conflicting_identities=["ChatGPT"], hallucinations=["Lumen Labs is a bank"],
           template_tokens=["<|im_end|>"], agent_contamination=["$ "], role_prefixes=["User"], language="en")


@pytest.mark.parametrize("response,d3", [
    ("I'm Ada, Maria's assistant at Lumen Labs. Cheers, mate! ✨", 2),
    ("Sou a Ada, assistente da Maria na Lumen Labs. Valeu! ✨", 0),     # Portuguese: not the persona's language
])
def test_english_persona_voice(response, d3):
    q = Question("q", "Who are you?", True, [["Ada"]], [], [])
    got = score_response(q, response, "stop", Persona(**ADA))
    assert got["d3_voice"] == d3, got["reasons"]


GREENLEAF = dict(ADA, name="Rosa", voice_markers=["love", "happy growing", "🌱", "Tom"])


@pytest.mark.parametrize("who,response", [
    ("claudio", "Massa, João! Bora codar, beleza? 🦞"),       # pt slang, a name, an emoji: no stop word at all
    ("rosa", "Tom owns Greenleaf, love. Happy growing! 🌱"),  # the same in English
])
def test_no_stop_words_at_all_is_the_persona_own_language(persona, who, response):
    """With no language's stop words in the text, nothing says it is another language: D3 is decided by
    the markers (here two or more: 2), not lost to the language test."""
    card = persona if who == "claudio" else Persona(**GREENLEAF)
    got = score_response(Q_SMALL, response, "stop", card)
    assert got["d3_voice"] == 2 and "d3.not_language" not in got["codes"], got["reasons"]


def test_a_few_stop_words_of_another_language_still_fail_the_language_test():
    """The fallback is for no stop words at all: one Portuguese 'em' in an English persona's answer decides."""
    q = Question("q", "Where is Lumen Labs?", False, [["London"]], [], [])
    got = score_response(q, "Lumen Labs fica em Londres, mate! ✨ Cheers", "stop", Persona(**ADA))
    assert got["d3_voice"] == 0 and "d3.not_language" in got["codes"], got["reasons"]


# ---------------------------------------------------------------------------------------------
# A language's claim words are data (data/languages/<code>.yaml): its phrase syntax, and a misspelt list
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("phrase,text,matches", [
    ("fui criado|criada pela", "fui  criada pela", True),      # `a|b` either word, a space any run of spaces
    ("fui criado|criada pela", "fui criadx pela", False),
    ("fui criado pela", "fui\ncriado pela", False),             # one line: a line break is no claim
    ("my name isn't", "my name isn’t", True),                 # `'` is ' or ’
    ("{neg} me chamo", "nunca me chamo", True),                # {neg}: any language's negation
    ("{neg} me chamo", "talvez me chamo", False),
])
def test_a_language_phrase_is_the_pattern_it_says(phrase, text, matches):
    import re

    from molting_mlflow.ground.claims import phrase as pattern

    assert bool(re.fullmatch(pattern(phrase), text)) is matches


def test_a_misspelt_word_list_in_a_language_file_is_an_error(tmp_path):
    from molting_mlflow.ground.language import LanguageError, read_language

    (tmp_path / "xx.txt").write_text("el\n", encoding="utf-8")
    (tmp_path / "xx.yaml").write_text("you: tu\nname_claim: [soy]\n", encoding="utf-8")   # name_claims misspelt
    with pytest.raises(LanguageError, match=r"unknown keys \['name_claim'\]"):
        read_language("xx", tmp_path)


def test_every_language_has_its_claim_words():
    # a language with stop words but no .yaml would score D1 without knowing how its answers say who they are
    from molting_mlflow.ground.language import package_languages

    for lang in package_languages().langs:
        assert lang.words("name_claims") and lang.words("negations") and lang.words("self_descriptions"), lang.code


def test_docs_rubric_table_is_the_rubric_own():
    """docs/rubric.md shows the dimension table the code scores with; a row added or changed in one alone fails."""
    from pathlib import Path

    from molting_mlflow.ground.rubric import RUBRIC

    doc = (Path(__file__).resolve().parent.parent / "docs" / "rubric.md").read_text(encoding="utf-8")
    assert RUBRIC.table_md() in doc and f"# Rubric v{RUBRIC.version}" in doc
