"""Semantic role tree: rules on hand-written parses, batch layout and limits, spaCy, synthetic.

Every parse in the rule tests is written by hand (0-based heads, -1 for the root), and so is
every expected tree.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from data_pipelines import synthetic
from vmr_jax.text.semantic_tree import (
    Node,
    Parse,
    SemanticTree,
    summarize_trees,
    tree_arrays,
    tree_from_parse,
    word_char_spans,
)
from vmr_jax.text.tokenizer import split_words
from vmr_jax.text.tree_parsers import SpacyTreeParser, cached_parses, load_spacy_model


def parse(table: str) -> Parse:
    """Rows ``word POS dep head [tag]``; the text is the words joined by spaces."""
    rows = [line.split() for line in table.strip().splitlines()]
    return Parse.from_words(
        [r[0] for r in rows],
        [r[1] for r in rows],
        [r[2] for r in rows],
        [int(r[3]) for r in rows],
        [r[4] if len(r) > 4 else "" for r in rows],
    )


def phrases(tree: SemanticTree, text: str) -> dict[str, list[str]]:
    """``{verb words: [noun words of its edges]}``."""
    words = split_words(text)
    say = lambda node: " ".join(words[node.first : node.last + 1])
    return {say(v): [say(tree.nouns[j]) for i, j in tree.edges if i == k]
            for k, v in enumerate(tree.verbs)}  # fmt: skip


PAPER = """
the DET det 1
man NOUN nsubj 2
leaves VERB ROOT -1
the DET det 4
ring NOUN dobj 2
and CCONJ cc 2
the DET det 7
wrestler NOUN nsubj 8
approaches VERB conj 2
the DET det 11
other ADJ amod 11
wrestler NOUN dobj 8
and CCONJ cc 8
beats VERB conj 8
him PRON dobj 13
to ADP prep 13
the DET det 17
ground NOUN pobj 15
"""


# ----------------------------------------------------------------------------- rules
def test_paper_example():
    tree = tree_from_parse(parse(PAPER))
    # words: the0 man1 leaves2 the3 ring4 and5 the6 wrestler7 approaches8 the9 other10
    # wrestler11 and12 beats13 him14 to15 the16 ground17
    assert tree.num_words == 18 and not tree.verb_from_root
    assert tree.verbs == (Node(2, 2, 2), Node(8, 8, 8), Node(13, 13, 13))
    assert tree.nouns == (
        Node(1, 1, 1),  # man
        Node(4, 4, 4),  # ring
        Node(7, 7, 7),  # wrestler
        Node(10, 11, 11),  # other wrestler
        Node(14, 14, 14),  # him
        Node(17, 17, 17),  # ground
    )
    # beats has no subject of its own: it shares approaches' (the wrestler).
    assert tree.edges == ((0, 0), (0, 1), (1, 2), (1, 3), (2, 2), (2, 4), (2, 5))


def test_particle_possessive_and_determiners():
    p = parse("""
        the DET det 1
        person NOUN poss 3
        's PART case 1 POS
        hand NOUN nsubj 4
        turns VERB ROOT -1
        off ADP prt 4 RP
        the DET det 7
        light NOUN dobj 4
    """)
    tree = tree_from_parse(p)
    # words: the person s hand turns off the light
    assert tree.verbs == (Node(4, 5, 4),)
    assert tree.nouns == (Node(1, 3, 3), Node(7, 7, 7))
    assert phrases(tree, p.text) == {"turns off": ["person s hand", "light"]}


def test_particle_after_the_object_is_not_in_the_verb_span():
    p = parse("""
        man NOUN nsubj 1
        picks VERB ROOT -1
        phone NOUN dobj 1
        up ADP prt 1
    """)
    assert tree_from_parse(p).verbs == (Node(1, 1, 1),)


def test_relative_clause_and_auxiliary():
    p = parse("""
        a DET det 1
        woman NOUN nsubj 7
        who PRON nsubj 4 WP
        is AUX aux 4
        holding VERB relcl 1
        a DET det 6
        baby NOUN dobj 4
        smiles VERB ROOT -1
    """)
    tree = tree_from_parse(p)
    assert tree.verbs == (Node(4, 4, 4), Node(7, 7, 7))
    assert tree.nouns == (Node(1, 1, 1), Node(6, 6, 6))
    assert phrases(tree, p.text) == {"holding": ["woman", "baby"], "smiles": ["woman"]}


def test_participles_share_the_modified_noun():
    # "person sitting on a couch eating a sandwich": no finite verb, the root is a noun.
    p = parse("""
        person NOUN ROOT -1
        sitting VERB acl 0
        on ADP prep 1
        a DET det 4
        couch NOUN pobj 2
        eating VERB advcl 1
        a DET det 7
        sandwich NOUN dobj 5
    """)
    tree = tree_from_parse(p)
    assert not tree.verb_from_root
    assert phrases(tree, p.text) == {
        "sitting": ["person", "couch"],
        "eating": ["person", "sandwich"],
    }


def test_no_predicate_uses_the_root():
    p = parse("""
        a DET det 1
        man NOUN ROOT -1
        in ADP prep 1
        a DET det 5
        red ADJ amod 5
        shirt NOUN pobj 2
        . PUNCT punct 1
    """)
    tree = tree_from_parse(p)
    assert tree.verb_from_root and tree.root == Node(1, 1, 1)
    assert tree.verbs == (Node(1, 1, 1),)
    assert tree.nouns == (Node(4, 5, 5),)
    assert tree.edges == ((0, 0),)


def test_copula_predicate_xcomp_and_noun_chains():
    p = parse("""
        the DET det 1
        person NOUN nsubj 2
        is AUX ROOT -1
        in ADP prep 2
        the DET det 5
        kitchen NOUN pobj 3
    """)
    assert phrases(tree_from_parse(p), p.text) == {"is": ["person", "kitchen"]}
    p = parse("""
        person NOUN nsubj 1
        starts VERB ROOT -1
        to PART aux 3
        run VERB xcomp 1
        out ADV advmod 3
        of ADP prep 4
        the DET det 7
        room NOUN pobj 5
    """)
    assert phrases(tree_from_parse(p), p.text) == {"starts": ["person"], "run": ["person", "room"]}
    # A noun's prepositional phrase and a conjoined noun belong to the noun's verb.
    p = parse("""
        a DET det 1
        man NOUN nsubj 6
        in ADP prep 1
        a DET det 5
        red ADJ amod 5
        shirt NOUN pobj 2
        takes VERB ROOT -1
        cup NOUN dobj 6
        and CCONJ cc 7
        saucer NOUN conj 7
    """)
    assert phrases(tree_from_parse(p), p.text) == {"takes": ["man", "red shirt", "cup", "saucer"]}


def test_universal_dependencies_labels():
    p = parse("""
        the DET det 1
        dog NOUN nsubj:pass 3
        was AUX aux:pass 3
        chased VERB root -1
        by ADP case 5
        cat NOUN obl:agent 3
        and CCONJ cc 7
        gave VERB conj 3
        up ADP compound:prt 7
    """)
    tree = tree_from_parse(p)
    assert tree.verbs == (Node(3, 3, 3), Node(7, 8, 7))
    # gave has no subject: it shares chased's (the dog), not its agent.
    assert phrases(tree, p.text) == {"chased": ["dog", "cat"], "gave up": ["dog"]}


def test_tokens_align_to_words_by_characters():
    # spaCy-like tokens that are not split_words' words: "doesn't" = does + n't, "t-shirt" one
    # token; words: she0 doesn1 t2 wear3 a4 t5 shirt6.
    text = "She doesn't wear a t-shirt."
    p = Parse(
        text,
        starts=(0, 4, 8, 12, 17, 19, 26),
        ends=(3, 8, 11, 16, 18, 26, 27),
        pos=("PRON", "AUX", "PART", "VERB", "DET", "NOUN", "PUNCT"),
        tags=("PRP", "VBZ", "RB", "VB", "DT", "NN", "."),
        deps=("nsubj", "aux", "neg", "ROOT", "det", "dobj", "punct"),
        heads=(3, 3, 3, -1, 5, 3, 3),
    )
    assert p.tokens == ["She", "does", "n't", "wear", "a", "t-shirt", "."]
    tree = tree_from_parse(p)
    assert tree.verbs == (Node(3, 3, 3),)
    assert tree.nouns == (Node(0, 0, 0), Node(5, 6, 5))


def test_word_char_spans_follow_split_words():
    for text in ["A man's hat, 2 dogs_and cats!", "  x--Y  ", "Ünïcode wörds"]:
        spans = word_char_spans(text)
        assert [text[a:b].lower() for a, b in spans] == split_words(text)
    # "İ" lower-cases to two characters (i + combining dot): words "i", "stanbul", "street".
    assert word_char_spans("İstanbul street") == [(0, 1), (1, 8), (9, 15)]
    assert word_char_spans("A man's hat") == [(0, 1), (2, 5), (6, 7), (8, 11)]


def test_parse_and_tree_json_round_trip():
    p = parse(PAPER)
    assert Parse.from_json(json.loads(json.dumps(p.to_json()))) == p
    tree = tree_from_parse(p)
    assert SemanticTree.from_json(json.loads(json.dumps(tree.to_json()))) == tree


def test_bad_parses_raise():
    with pytest.raises(ValueError, match="head out of range"):
        parse("a DET det 5")
    with pytest.raises(ValueError, match="no word"):
        tree_from_parse(parse("? PUNCT ROOT -1"))


# ----------------------------------------------------------------------------- arrays
def tree(num_words, verbs, nouns, edges, root=None):
    node = lambda s: Node(s[0], s[1], s[2] if len(s) > 2 else s[1])
    verbs = tuple(node(v) for v in verbs)
    return SemanticTree(num_words, node(root) if root else verbs[0], verbs,
                        tuple(node(n) for n in nouns), tuple(edges))  # fmt: skip


def test_arrays_layout_and_padding():
    t = tree(6, [(1, 2, 1)], [(0, 0), (4, 5)], [(0, 0), (0, 1)])
    out = tree_arrays([t, tree(2, [(1, 1)], [], [])], max_verbs=2, max_nouns=3)
    assert out["tree_verbs"].dtype == out["tree_nouns"].dtype == np.int32
    assert out["tree_edges"].dtype == np.float32
    np.testing.assert_array_equal(out["tree_verbs"], [[[1, 2], [-1, -1]], [[1, 1], [-1, -1]]])
    np.testing.assert_array_equal(out["tree_nouns"], [[[0, 0], [4, 5], [-1, -1]], [[-1, -1]] * 3])
    np.testing.assert_array_equal(
        out["tree_edges"], [[[1, 1, 0], [0, 0, 0]], [[0, 0, 0], [0, 0, 0]]]
    )


def test_limits_drop_by_rule_and_are_counted():
    # 5 verbs, 7 nouns; noun j is an argument of verb j % 5 (nouns 5, 6 of verbs 0, 1 too).
    verbs = [(2 * i, 2 * i) for i in range(5)]
    nouns = [(10 + j, 10 + j) for j in range(7)]
    t = tree(17, verbs, nouns, [(j % 5, j) for j in range(7)])
    out = tree_arrays([t], max_verbs=4, max_nouns=6)
    np.testing.assert_array_equal(out["tree_verbs"][0], [[0, 0], [2, 2], [4, 4], [6, 6]])
    # noun 4 hangs only on the dropped verb 4; the first 6 of the others are 0, 1, 2, 3, 5, 6.
    np.testing.assert_array_equal(out["tree_nouns"][0, :, 0], [10, 11, 12, 13, 15, 16])
    expected = np.zeros((4, 6))
    for i, j in [(0, 0), (1, 1), (2, 2), (3, 3), (0, 4), (1, 5)]:
        expected[i, j] = 1
    np.testing.assert_array_equal(out["tree_edges"][0], expected)
    summary = summarize_trees([t], 4, 6)
    assert summary["verbs_over_limit"] == 1 and summary["nouns_without_verb"] == 1
    assert summary["nouns_over_limit"] == 0 and summary["mean_nouns"] == 6


def test_truncation_clips_or_drops_nodes_and_keeps_a_verb():
    # words 0..9; verb (1..2); nouns (3..5 head 5), (6..8 head 8); edges to verb.
    t = tree(10, [(1, 2, 1)], [(3, 5), (6, 8)], [(0, 0), (0, 1)])
    out = tree_arrays([t], 4, 6, max_words=6)
    np.testing.assert_array_equal(out["tree_verbs"][0, 0], [1, 2])
    np.testing.assert_array_equal(out["tree_nouns"][0, :2], [[3, 5], [-1, -1]])
    out = tree_arrays([t], 4, 6, max_words=2)  # verb head kept, span clipped, nouns cut
    np.testing.assert_array_equal(out["tree_verbs"][0, 0], [1, 1])
    assert (out["tree_nouns"][0] == -1).all()
    # The only verb past the cut: the root, if kept, becomes the verb; else the whole query.
    late = tree(10, [(8, 8)], [(0, 1), (9, 9)], [(0, 0), (0, 1)], root=(3, 3))
    out = tree_arrays([late], 4, 6, max_words=5)
    np.testing.assert_array_equal(out["tree_verbs"][0, :2], [[3, 3], [-1, -1]])
    np.testing.assert_array_equal(out["tree_nouns"][0, :2], [[0, 1], [-1, -1]])
    np.testing.assert_array_equal(out["tree_edges"][0, 0, :2], [1, 0])
    out = tree_arrays([late], 4, 6, max_words=3)
    np.testing.assert_array_equal(out["tree_verbs"][0, 0], [0, 2])
    summary = summarize_trees([t, late], 4, 6, max_words=5)
    assert summary["verbs_cut"] == 1 and summary["verb_from_root_after_cut"] == 1
    assert summary["nouns_cut"] == 3  # (3..5) and (6..8) of t (heads 5, 8), (9) of late


# ----------------------------------------------------------------------------- parsers
def test_synthetic_parser_follows_the_grammar():
    text = "w3 verb1 adj0 w7 noun2 scene4"
    tree = tree_from_parse(synthetic.SyntheticTreeParser().parse_query(text))
    assert tree.verbs == (Node(1, 1, 1),)
    assert tree.nouns == (Node(2, 4, 4), Node(5, 5, 5))
    assert tree.edges == ((0, 0), (0, 1))
    assert tree_from_parse(
        synthetic.SyntheticTreeParser().parse_query("verb0 adj1 noun0")
    ).nouns == (Node(1, 2, 2),)
    with pytest.raises(ValueError, match="not a synthetic query"):
        synthetic.SyntheticTreeParser().parse_query("a man opens the door")


def test_synthetic_benchmark_queries_all_parse():
    spec = synthetic.SyntheticSpec(num_videos=20, num_scenes=3)
    records = synthetic.make_splits(spec, 0)["train"]
    parser = synthetic.SyntheticTreeParser()
    for r, p in zip(records, parser.parse([r.query_text for r in records])):
        words = split_words(r.query_text)
        t = tree_from_parse(p)
        assert [words[v.head][:4] for v in t.verbs] == ["verb"]
        assert sorted(words[n.head][:4] for n in t.nouns) == ["noun", "scen"]


@pytest.fixture(scope="module")
def spacy_parser():
    return SpacyTreeParser("en_core_web_sm")


PAPER_TEXT = " ".join(line.split()[0] for line in PAPER.strip().splitlines())
SPACY_CASES = {
    PAPER_TEXT: {
        "leaves": ["man", "ring"],
        "approaches": ["wrestler", "other wrestler"],
        "beats": ["wrestler", "him", "ground"],
    },
    "He pours the milk into a glass.": {"pours": ["he", "milk", "glass"]},
    "a man is sitting in a chair reading a book": {
        "sitting": ["man", "chair"],
        "reading": ["man", "book"],
    },
    "The girl in the blue dress throws the ball to her dog.": {
        "throws": ["girl", "blue dress", "ball", "her dog"]
    },
    "a person is putting on their shoes.": {"putting on": ["person", "their shoes"]},
    "a man in a red shirt.": {"man": ["red shirt"]},
}


def test_spacy_end_to_end(spacy_parser):
    texts = list(SPACY_CASES)
    for text, tree in zip(texts, spacy_parser.trees(texts)):
        assert phrases(tree, text) == SPACY_CASES[text], text
    assert spacy_parser.trees(["a man in a red shirt."])[0].verb_from_root
    assert "3.8" in spacy_parser.version


def test_spacy_parse_cache_round_trip(spacy_parser, tmp_path):
    path = str(tmp_path / "parses.json")
    texts = [PAPER_TEXT, "He pours the milk into a glass.", PAPER_TEXT]
    first = cached_parses(spacy_parser, texts, path)
    stored = json.loads(open(path).read())
    assert stored["parser"] == "spacy-en_core_web_sm" and len(stored["parses"]) == 2
    assert stored["parses"][PAPER_TEXT]["text"] == PAPER_TEXT

    class NoParser:
        name = "spacy-en_core_web_sm"
        version = "never used"

        def parse(self, texts):
            raise AssertionError(f"parsed {texts} again")

    assert cached_parses(NoParser(), texts, path) == first
    NoParser.name = "synthetic"
    with pytest.raises(ValueError, match="parse cache of 'spacy-en_core_web_sm'"):
        cached_parses(NoParser(), texts, path)


def test_missing_spacy_model_names_the_config_field():
    with pytest.raises(OSError, match=r"config\.data\.spacy_model.*vmr_jax\[srl\]"):
        load_spacy_model("xx_no_such_model")
